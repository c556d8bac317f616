"""The probes the overlays give the kubelet, run as the kubelet runs them,
against a real worker with TLS and with mTLS.

The kubelet's `grpc:` probe speaks plaintext; against a TLS port it fails the
handshake, so the pods of a TLS deployment never became ready. The overlays'
probes are `teller health` (an exec probe): here the very command each
overlay renders runs as a process, its files and port mapped to the test's."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2

from tests.support.certs import CA, write
from tests.support.harness import RunningTeller, make_settings
from tests.support.kustomize import containers, render

ROOT = Path(__file__).resolve().parents[2]
TELLER = [sys.executable, "-m", "teller.cli"]


def _worker_cert(ca: CA, tmp: Path) -> tuple[Path, Path]:
    """What the overlays expect in `teller-tls`: a certificate naming the Service
    (`teller`), usable as a server and as a client certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "teller")]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("teller"), x509.DNSName("teller.payments.svc"),
                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return (write(tmp, "tls.crt", cert.public_bytes(serialization.Encoding.PEM)),
            write(tmp, "tls.key", key_pem))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    ca = CA()
    write(tmp, "ca.crt", ca.pem)
    _worker_cert(ca, tmp)
    return tmp


def _probe_commands(overlay: str) -> dict[str, list[str]]:
    (deployment,) = [d for d in render(ROOT / "deploy" / "kustomize" / "overlays" / overlay)
                     if d["kind"] == "Deployment"]
    (worker,) = containers(deployment)
    return {p: worker[p]["exec"]["command"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}


def _as_here(command: list[str], tls_dir: Path, port: int) -> list[str]:
    """The probe's command with the pod's paths and port mapped to this test's."""
    assert command[:2] == ["teller", "health"]
    mapped = [a.replace("/run/tls/", f"{tls_dir}/").replace("127.0.0.1:7402", f"127.0.0.1:{port}")
              for a in command[2:]]
    return [*TELLER, "health", *mapped]


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def _worker(tmp_path: Path, tls_dir: Path, *, mtls: bool) -> RunningTeller:
    settings = make_settings(f"sqlite:///{tmp_path / 't.db'}", tmp_path, tls_cert_file=tls_dir / "tls.crt",
                             tls_key_file=tls_dir / "tls.key",
                             tls_client_ca_file=tls_dir / "ca.crt" if mtls else None)
    return RunningTeller(settings)


def _set_health(running: RunningTeller, status: int) -> None:
    server = running.server
    asyncio.run_coroutine_threadsafe(server.server.health.set("", status), server.loop).result(10)


@pytest.mark.parametrize(("overlay", "mtls"), [("staging", False), ("production", True)])
def test_the_overlays_probes_pass_against_a_worker_with_their_transport(tmp_path, pki, overlay, mtls):
    commands = _probe_commands(overlay)
    running = _worker(tmp_path, pki, mtls=mtls)
    try:
        port = running.server.port
        for probe, command in commands.items():
            done = _run(_as_here(command, pki, port))
            assert done.returncode == 0, f"{overlay} {probe}: {done.stderr}"
            assert done.stdout.strip() == f"127.0.0.1:{port}: SERVING"
        # A worker going away (SIGTERM: NOT_SERVING) fails the readiness probe.
        _set_health(running, health_pb2.HealthCheckResponse.NOT_SERVING)
        done = _run(_as_here(commands["readinessProbe"], pki, port))
        assert done.returncode == 1 and "NOT_SERVING" in done.stderr
    finally:
        running.stop()


def test_what_the_kubelets_grpc_probe_does_fails_against_tls(tmp_path, pki):
    """The defect: a plaintext health check (the kubelet's `grpc:` probe) against
    a TLS port fails; so does a TLS probe without a client certificate under mTLS."""
    running = _worker(tmp_path, pki, mtls=True)
    try:
        port = running.server.port
        plaintext = _run([*TELLER, "health", "--address", f"127.0.0.1:{port}", "--timeout", "3"])
        assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr
        tls_only = _run(_as_here(_probe_commands("staging")["readinessProbe"], pki, port))
        assert tls_only.returncode == 1 and "UNAVAILABLE" in tls_only.stderr
        # A certificate that does not name what --tls-server-name says is refused.
        wrong_name = _run([*TELLER, "health", "--address", f"127.0.0.1:{port}", "--tls-ca", str(pki / "ca.crt"),
                           "--tls-cert", str(pki / "tls.crt"), "--tls-key", str(pki / "tls.key"),
                           "--tls-server-name", "someone-else", "--timeout", "3"])
        assert wrong_name.returncode == 1, wrong_name.stdout
    finally:
        running.stop()


def test_plaintext_worker_and_nothing_listening(tmp_path):
    running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 't.db'}", tmp_path))
    try:
        port = running.server.port
        ok = _run([*TELLER, "health", "--address", f"127.0.0.1:{port}"])
        assert ok.returncode == 0 and ok.stdout.strip().endswith("SERVING")
    finally:
        running.stop()
    gone = _run([*TELLER, "health", "--address", f"127.0.0.1:{port}", "--timeout", "1"])
    assert gone.returncode == 1 and "UNAVAILABLE" in gone.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--address", "7402"], "--address: '7402' is not host:port"),
    (["--address", "127.0.0.1:99999"], "--address: '127.0.0.1:99999' is not host:port"),
    (["--tls-ca", "/nonexistent/ca.crt"], "--tls-ca: cannot read '/nonexistent/ca.crt'"),
    (["--tls-ca", "ca.crt", "--tls-cert", "tls.crt"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "tls.crt", "--tls-key", "tls.key"], "--tls-cert needs --tls-ca"),
    (["--timeout", "0"], "--timeout: 0.0 is not a positive number of seconds"),
])
def test_bad_flags_are_named(args, message):
    done = _run([*TELLER, "health", *args])
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
