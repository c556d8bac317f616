"""The container image and the Kubernetes manifests.

`docker build` cannot run here (no engine), so the image's recipe is checked,
and its entrypoint is run from a clean virtualenv built the way the Dockerfile
builds the image (wheels, then install into a fresh environment). The
Kustomize overlays are rendered and held to their invariants."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.kustomize import containers, render
from tests.support.procs import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = sorted(p for p in (ROOT / "deploy" / "kustomize" / "overlays").iterdir() if p.is_dir())
WORKLOADS = ("Deployment", "Job", "StatefulSet", "DaemonSet")
DEV_KEY_FRAGMENTS = ("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
                     "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")


@pytest.fixture(scope="module", params=[p.name for p in OVERLAYS] + ["base"])
def rendered(request):
    path = ROOT / "deploy" / "kustomize" / ("base" if request.param == "base" else f"overlays/{request.param}")
    return render(path)


def _kinds(docs):
    return {d["kind"] for d in docs}


def test_every_piece_is_there(rendered):
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy",
            "Job", "ServiceAccount"} <= _kinds(rendered)


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
            assert "@sha256:" in image or re.search(r":[\w.\-]+$", image.split("/")[-1]), image
            assert not image.endswith(":latest")


def test_workers_probe_grpc_health_and_never_migrate(rendered):
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    (worker,) = containers(deployment)
    for probe in ("readinessProbe", "livenessProbe"):
        assert worker[probe]["grpc"]["port"] == 7402
    assert worker["args"] == ["serve"]
    (job,) = [d for d in rendered if d["kind"] == "Job"]
    assert containers(job)[0]["args"] == ["migrate"]
    config = next(d for d in rendered if d["kind"] == "ConfigMap")["data"]
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
    text = "\n".join(str(d) for d in rendered)
    assert "postgresql://" not in text and "postgresql+psycopg://" not in text


def test_only_the_namespace_reaches_the_grpc_port(rendered):
    (policy,) = [d for d in rendered if d["kind"] == "NetworkPolicy"]
    grpc_rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 7402)
    assert grpc_rule["from"] == [{"podSelector": {}}]  # same namespace only
    (pdb,) = [d for d in rendered if d["kind"] == "PodDisruptionBudget"]
    (hpa,) = [d for d in rendered if d["kind"] == "HorizontalPodAutoscaler"]
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2


def test_configmap_settings_are_known_and_valid(rendered, tmp_path):
    # A misspelt TELLER_* key would be ignored silently: every key must be a
    # setting, and together they must make settings a worker accepts.
    from dataclasses import replace

    from teller import config

    (data,) = [d["data"] for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("teller-config")]
    unknown = sorted(k for k in data if k not in config._ENV_FIELDS)
    assert not unknown, f"not Teller settings: {unknown}"
    settings = config.load(env=data)
    assert settings.grpc_acceptors >= 1 and settings.event_loop in config.EVENT_LOOPS
    config.finalize_for_serving(replace(settings, kek="v1:" + "A" * 43 + "=", admin_token="op_test",
                                        data_dir=tmp_path))


def test_overlays_set_namespace_and_pin_images():
    prod = render(ROOT / "deploy" / "kustomize" / "overlays" / "production")
    assert {d["metadata"]["namespace"] for d in prod} == {"payments"}
    (deployment,) = [d for d in prod if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 4
    assert "@sha256:" in containers(deployment)[0]["image"]
    assert containers(deployment)[0]["resources"]["limits"]["memory"] == "1Gi"


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
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
