"""The container image and the Kubernetes manifests.

`docker build` cannot run here (no engine), so the image's recipe is checked,
and its entrypoint is run from a clean virtualenv built the way the Dockerfile
builds the image (wheels, then install into a fresh environment). The
Kustomize overlays are rendered by the real kustomize (`kubectl kustomize`),
held to what deploy/README.md promises, and validated against the Kubernetes
schemas and the Prometheus Operator's CRDs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed.procs import free_port, wait_healthy
from tests.support.kustomize import containers, render

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kustomize"
OVERLAYS = sorted(p for p in (KUSTOMIZE / "overlays").iterdir() if p.is_dir())
WORKLOADS = ("Deployment", "Job", "StatefulSet", "DaemonSet")
DEV_KEY_FRAGMENTS = ("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
                     "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
#: Kubernetes versions the rendered manifests must be valid for: the oldest
#: still in wide use and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.29", "1.37")
CRD_DIR = ROOT / "tests" / "data" / "prometheus-operator-crd"


@pytest.fixture(scope="module", params=[p.name for p in OVERLAYS])
def rendered(request):
    return render(KUSTOMIZE / "overlays" / request.param)


def _kinds(docs):
    return {d["kind"] for d in docs}


def _one(docs, kind, name=None):
    (doc,) = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return doc


def _overlay(name):
    return yaml.safe_load((KUSTOMIZE / "overlays" / name / "kustomization.yaml").read_text())


def test_every_piece_is_there(rendered):
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy",
            "Job", "ServiceAccount", "ServiceMonitor", "PrometheusRule"} <= _kinds(rendered)


def test_containers_are_locked_down_and_pinned(rendered):
    for doc in rendered:
        if doc["kind"] not in WORKLOADS:
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod.get("automountServiceAccountToken") is False
        for c in containers(doc):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, c["name"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"] and c["resources"]["limits"]
            image = c["image"]
            # A registry path with a tag or a digest: never the bare placeholder the base uses.
            assert "/" in image and ("@sha256:" in image or re.search(r":[\w.\-]+$", image.split("/")[-1])), image
            assert not image.endswith(":latest")


def test_the_base_names_the_image_by_its_placeholder_only():
    """The base must not rename the image: kustomize applies the base's `images:`
    first, and an overlay's `name: teller` then matches nothing (production ran
    the base's tag instead of its digest)."""
    base = render(KUSTOMIZE / "base")
    assert {c["image"] for d in base if d["kind"] in WORKLOADS for c in containers(d)} == {"teller"}
    for overlay in OVERLAYS:
        assert [i["name"] for i in _overlay(overlay.name)["images"]] == ["teller"]


@pytest.mark.parametrize("overlay", [p.name for p in OVERLAYS])
def test_each_overlay_gets_the_image_it_names(overlay):
    """The image an overlay's `images:` names is the one every workload runs:
    by digest alone where it gives one (production), else by its tag."""
    (wanted,) = _overlay(overlay)["images"]
    expected = (f"{wanted['newName']}@{wanted['digest']}" if "digest" in wanted
                else f"{wanted['newName']}:{wanted['newTag']}")
    docs = render(KUSTOMIZE / "overlays" / overlay)
    images = {c["image"] for d in docs if d["kind"] in WORKLOADS for c in containers(d)}
    assert images == {expected}


def test_production_runs_a_digest_and_staging_its_release_candidate():
    prod = render(KUSTOMIZE / "overlays" / "production")
    assert {d["metadata"]["namespace"] for d in prod} == {"payments"}
    image = containers(_one(prod, "Deployment"))[0]["image"]
    assert re.fullmatch(r"[\w.\-/]+@sha256:[0-9a-f]{64}", image), image  # no tag beside the digest
    assert containers(_one(prod, "Deployment"))[0]["resources"]["limits"]["memory"] == "1Gi"
    staging = render(KUSTOMIZE / "overlays" / "staging")
    assert {d["metadata"]["namespace"] for d in staging} == {"payments-staging"}
    assert containers(_one(staging, "Deployment"))[0]["image"].endswith(":0.1.0-rc1")


def test_replicas_are_left_to_the_hpa(rendered):
    """A `replicas:` in the Deployment would reset the autoscaler's count on every apply."""
    deployment = _one(rendered, "Deployment")
    assert "replicas" not in deployment["spec"]
    hpa = _one(rendered, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert 3 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (pdb,) = [d for d in rendered if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_production_keeps_at_least_four_workers():
    prod = render(KUSTOMIZE / "overlays" / "production")
    assert _one(prod, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 4


def _env(container):
    return {e["name"]: e for e in container.get("env", [])}


def _mounted_file(doc, container, path):
    """The Secret (name, key) a file path in the container comes from."""
    pod = doc["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            secret = volumes[mount["name"]]["secret"]
            return secret["secretName"], path[len(prefix):]
    raise AssertionError(f"{path} is on no mounted volume")


def test_probes_speak_what_the_port_speaks(rendered):
    """With TLS on, the kubelet's plaintext `grpc:` probe fails the handshake;
    the probes must be `teller health` with the worker's CA (and, under mTLS,
    a client certificate), with flags the CLI really has."""
    from teller.cli.parser import build_parser

    deployment = _one(rendered, "Deployment")
    (worker,) = containers(deployment)
    env = _env(worker)
    tls = "TELLER_TLS_CERT_FILE" in env
    mtls = "TELLER_TLS_CLIENT_CA_FILE" in env
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = worker[probe]
        if not tls:
            assert spec["grpc"]["port"] == 7402
            continue
        assert "grpc" not in spec and spec["timeoutSeconds"] >= 3, probe
        command = spec["exec"]["command"]
        assert command[:2] == ["teller", "health"]
        ns = build_parser().parse_args(command[1:])
        assert ns.address == "127.0.0.1:7402" and ns.timeout < spec["timeoutSeconds"]
        assert _mounted_file(deployment, worker, str(ns.tls_ca)) == ("teller-tls", "ca.crt")
        if mtls:
            assert _mounted_file(deployment, worker, str(ns.tls_cert)) == ("teller-tls", "tls.crt")
            assert _mounted_file(deployment, worker, str(ns.tls_key)) == ("teller-tls", "tls.key")
        else:
            assert ns.tls_cert is None and ns.tls_key is None
    if tls:
        assert _mounted_file(deployment, worker, env["TELLER_TLS_CERT_FILE"]["value"]) == ("teller-tls", "tls.crt")
        assert _mounted_file(deployment, worker, env["TELLER_TLS_KEY_FILE"]["value"]) == ("teller-tls", "tls.key")
    if mtls:
        assert _mounted_file(deployment, worker, env["TELLER_TLS_CLIENT_CA_FILE"]["value"]) == ("teller-tls", "ca.crt")


def test_production_requires_client_certificates_and_staging_tls():
    prod = _env(containers(_one(render(KUSTOMIZE / "overlays" / "production"), "Deployment"))[0])
    staging = _env(containers(_one(render(KUSTOMIZE / "overlays" / "staging"), "Deployment"))[0])
    assert {"TELLER_TLS_CERT_FILE", "TELLER_TLS_KEY_FILE", "TELLER_TLS_CLIENT_CA_FILE"} <= set(prod)
    assert {"TELLER_TLS_CERT_FILE", "TELLER_TLS_KEY_FILE"} <= set(staging)
    assert "TELLER_TLS_CLIENT_CA_FILE" not in staging


def test_workers_serve_and_the_job_migrates(rendered):
    deployment = _one(rendered, "Deployment")
    (worker,) = containers(deployment)
    assert worker["args"] == ["serve"]
    job = _one(rendered, "Job")
    (migrate,) = containers(job)
    assert migrate["args"] == ["migrate"] and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert migrate["image"] == worker["image"]  # the schema of the release that rolls out
    assert "secretKeyRef" in _env(migrate)["TELLER_DATABASE_URL"]["valueFrom"]
    config = _one(rendered, "ConfigMap")["data"]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > float(
        config["TELLER_SHUTDOWN_GRACE_SECONDS"])


def test_secrets_are_referenced_never_inlined(rendered):
    assert "Secret" not in _kinds(rendered)
    secret_names = {"TELLER_DATABASE_URL", "TELLER_ADMIN_TOKEN", "TELLER_KEK"}
    for doc in rendered:
        if doc["kind"] == "ConfigMap":
            assert not secret_names & set(doc["data"])
        for c in containers(doc) if doc["kind"] in WORKLOADS else []:
            for env in c.get("env", []):
                if env["name"] in secret_names:
                    assert "secretKeyRef" in env["valueFrom"], env["name"]
    deployment = _one(rendered, "Deployment")
    (worker,) = containers(deployment)
    assert _mounted_file(deployment, worker, _env(worker)["TELLER_KEK_FILE"]["value"]) == ("teller-secrets", "kek")
    text = "\n".join(str(d) for d in rendered)
    assert "postgresql://" not in text and "postgresql+psycopg://" not in text
    assert "BEGIN" not in text  # no PEM (certificate or key) in a manifest


def test_only_the_namespace_reaches_the_grpc_port(rendered):
    policy = _one(rendered, "NetworkPolicy")
    deployment = _one(rendered, "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    rules = {r["ports"][0]["port"]: r["from"] for r in policy["spec"]["ingress"]}
    assert rules[7402] == [{"podSelector": {}}]  # same namespace only
    assert rules[7403] == [{"podSelector": {"matchLabels": {"teller.example/operator": "true"}}}]
    assert rules[9402] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    pdb = _one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_the_service_monitor_scrapes_every_worker(rendered):
    """ServiceMonitor -> a Service by its labels -> the worker pods by its
    selector -> their `metrics` port, where TELLER_METRICS_LISTEN binds."""
    monitor = _one(rendered, "ServiceMonitor")
    services = [d for d in rendered if d["kind"] == "Service" and monitor["spec"]["selector"]["matchLabels"].items()
                <= d["metadata"].get("labels", {}).items()]
    (service,) = services
    assert service["spec"]["clusterIP"] == "None"  # every pod an endpoint, not one behind a VIP
    deployment = _one(rendered, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    (worker,) = containers(deployment)
    (container_port,) = [p for p in worker["ports"] if p["name"] == port["targetPort"]]
    listen = _one(rendered, "ConfigMap")["data"]["TELLER_METRICS_LISTEN"]
    assert listen.endswith(f":{container_port['containerPort']}")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(container_port["containerPort"])


def test_configmap_settings_are_known_and_valid(rendered, tmp_path):
    # A misspelt TELLER_* key would be ignored silently: every key must be a
    # setting (or a standard OTEL_* variable), and together they must make
    # settings a worker accepts.
    from dataclasses import replace

    from teller import config

    data = _one(rendered, "ConfigMap", "teller-config")["data"]
    unknown = sorted(k for k in data if k not in config._ENV_FIELDS and not k.startswith("OTEL_"))
    assert not unknown, f"not Teller settings: {unknown}"
    settings = config.load(env=data)
    assert settings.grpc_acceptors >= 1 and settings.event_loop in config.EVENT_LOOPS
    config.finalize_for_serving(replace(settings, kek="v1:" + "A" * 43 + "=", admin_token="op_test",
                                        data_dir=tmp_path))
    if settings.tracing:
        assert data["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith(("http://", "https://"))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(rendered, version):
    """Every built-in object against the API schema of this Kubernetes version,
    strictly: a misspelt or misplaced field fails here, not at `kubectl apply`."""
    import kubernetes_validate

    checked = 0
    for doc in rendered:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # custom resources: their CRDs' schemas, below
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {exc.message} "
                                 f"at {'.'.join(map(str, exc.path))}") from None
        checked += 1
    assert checked >= 9
    # Strict means strict: a field the API does not have is refused.
    deployment = json.loads(json.dumps(_one(rendered, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"grpc": {"port": 7402}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)


def _strict(schema):
    """A CRD's openAPIV3Schema with unknown fields refused (the API server would
    silently prune them, so a typo would simply do nothing)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_schema(kind):
    for path in CRD_DIR.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
            return crd["spec"]["group"], _strict(served["schema"]["openAPIV3Schema"])
    raise AssertionError(f"no CRD for {kind} in {CRD_DIR}")


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PrometheusRule"])
def test_monitoring_objects_match_the_operator_crds(rendered, kind):
    import jsonschema

    group, schema = _crd_schema(kind)
    # OpenAPI v3 schemas are JSON Schema draft 4 in substance. The schema itself is
    # not checked against the draft: its patterns are Go regexps (`(?i)` mid-pattern).
    validator = jsonschema.Draft4Validator(schema)
    doc = _one(rendered, kind)
    assert doc["apiVersion"] == f"{group}/v1"
    validator.validate(doc)
    # The check itself refuses what the operator would drop.
    broken = json.loads(json.dumps(doc))
    broken["spec"]["endpointz" if kind == "ServiceMonitor" else "groupz"] = []
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_dockerfile_recipe():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2 and all(":" in s and not s.endswith(":latest") for s in stages)
    runtime = text[text.rindex("FROM "):]
    assert re.search(r"^USER\s+10001", runtime, re.M)
    assert "gcc" not in runtime and "build-essential" not in runtime
    assert 'ENTRYPOINT ["teller"]' in runtime and 'CMD ["serve"]' in runtime
    assert "COPY tests" not in text and "migrate" not in runtime
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "tests" in ignore and ".venv" in ignore


#: Modules the service imports that come with an extra of a declared dependency.
_FROM_EXTRAS = {"sha3": "eth-hash[pysha3]"}


def test_every_library_the_service_imports_is_a_declared_dependency():
    """The image installs only [project.dependencies]: a library the service
    imports that arrives only through another package (httpx came with pympp,
    which the service no longer needs) would break the image when that package
    goes. Each third-party import must name its distribution directly."""
    import ast
    import tomllib
    from importlib.metadata import packages_distributions

    def norm(name: str) -> str:
        return name.lower().replace("_", "-")

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {norm(re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0]) for d in deps}
    modules: set[str] = set()
    for path in (ROOT / "service").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    distributions = packages_distributions()
    third_party = sorted(m for m in modules if m not in sys.stdlib_module_names and not m.startswith("teller"))
    assert {"grpc", "httpx", "sqlalchemy"} <= set(third_party)
    undeclared = [m for m in third_party if m not in _FROM_EXTRAS
                  and not {norm(d) for d in distributions.get(m, [])} & declared]
    assert not undeclared, f"imported by the service but not in [project.dependencies]: {undeclared}"
    assert all(any(d.startswith(extra) for d in deps) for extra in _FROM_EXTRAS.values())


@pytest.mark.slow
def test_image_entrypoint_runs_from_a_clean_virtualenv(tmp_path):
    """What the Dockerfile does: build wheels, install them into a fresh
    environment with no index, run `teller migrate` then `teller serve`."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels), str(ROOT)], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = venv / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", "--no-index", *map(str, wheels.glob("*.whl"))], check=True)
    installed = subprocess.run([str(pip), "list", "--format=freeze"], capture_output=True, text=True).stdout.lower()
    for dev_only in ("pytest", "hypothesis", "testcontainers", "ruff", "mypy", "grpcio-tools"):
        assert f"{dev_only}==" not in installed, dev_only
    # Tracing exports from the image itself: the SDK and its OTLP exporter are runtime dependencies.
    for shipped in ("opentelemetry-sdk==", "opentelemetry-exporter-otlp-proto-grpc=="):
        assert shipped in installed, shipped
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not (site / "tests").exists()
    for path in (site / "teller").rglob("*.py"):
        body = path.read_text()
        assert not any(k in body for k in DEV_KEY_FRAGMENTS), path

    teller = str(venv / "bin" / "teller")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELLER_")}
    env.update(TELLER_DATABASE_URL=f"sqlite:///{tmp_path / 'teller.db'}", TELLER_ADMIN_TOKEN="op_" + "x" * 24,
               TELLER_KEK="v1:" + "A" * 43 + "=", TELLER_DATA_DIR=str(tmp_path / "data"))
    # Migrations are their own command; an unmigrated database makes serve refuse to start.
    refused = subprocess.run([teller, "serve", "--listen", "127.0.0.1:0"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode != 0 and "teller migrate" in refused.stderr
    assert subprocess.run([teller, "migrate"], env=env, capture_output=True, timeout=60).returncode == 0
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([teller, "serve", "--listen", f"127.0.0.1:{port}"], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"127.0.0.1:{port}", proc, log)
        # The exec probe the TLS overlays use is in the image, and answers.
        probe = subprocess.run([teller, "health", "--address", f"127.0.0.1:{port}"], env=env, capture_output=True,
                               text=True, timeout=30)
        assert probe.returncode == 0 and probe.stdout.strip().endswith("SERVING"), probe.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
