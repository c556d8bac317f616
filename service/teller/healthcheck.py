"""`teller health`: the gRPC health check a kubelet runs, over TLS and mTLS too.

The kubelet's own `grpc:` probe speaks plaintext only, so against a worker
with TLS on it fails the handshake (`UNAVAILABLE ... Socket closed`) and the
pod never becomes ready. This check runs inside the container as an `exec`
probe and speaks whatever the worker speaks: plaintext, TLS (``ca``), or mTLS
(``ca`` plus a client ``cert`` and ``key``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from teller.errors import ConfigError


@dataclass(frozen=True, slots=True)
class HealthTarget:
    address: str
    """host:port of the worker's gRPC port (in a pod: 127.0.0.1:7402)."""
    service: str = ""
    """The health service name to ask about; "" is the whole worker."""
    ca_file: Path | None = None
    """PEM CA that signed the worker's certificate; enables TLS."""
    cert_file: Path | None = None
    """PEM client certificate for mTLS (signed by the worker's client CA)."""
    key_file: Path | None = None
    """Key of ``cert_file``."""
    server_name: str = ""
    """Name to verify the worker's certificate against, when it does not name
    the address dialled (a probe dials 127.0.0.1; the certificate names the Service)."""
    timeout_s: float = 3.0
    """Seconds for the whole check, connection included."""


def _read(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {str(path)!r}: {exc.strerror or exc}") from None


def validate(target: HealthTarget) -> None:
    host, sep, port = target.address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--address: {target.address!r} is not host:port")
    if (target.cert_file is None) != (target.key_file is None):
        raise ConfigError("--tls-cert and --tls-key go together (mTLS needs both)")
    if target.cert_file is not None and target.ca_file is None:
        raise ConfigError("--tls-cert needs --tls-ca (the CA that signed the worker's certificate)")
    if target.server_name and target.ca_file is None:
        raise ConfigError("--tls-server-name needs --tls-ca")
    if not target.timeout_s > 0:
        raise ConfigError(f"--timeout: {target.timeout_s} is not a positive number of seconds")


def check(target: HealthTarget) -> tuple[bool, str]:
    """Ask the worker; (serving, what it answered or why it could not be asked)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    validate(target)
    options: list[tuple[str, str]] = []
    if target.ca_file is None:
        channel = grpc.insecure_channel(target.address)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(target.ca_file, "--tls-ca"),
            private_key=_read(target.key_file, "--tls-key"),
            certificate_chain=_read(target.cert_file, "--tls-cert"))
        if target.server_name:
            options.append(("grpc.ssl_target_name_override", target.server_name))
        channel = grpc.secure_channel(target.address, credentials, options=options)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=target.service), timeout=target.timeout_s,
                wait_for_ready=False)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            return False, f"{getattr(code, 'name', 'ERROR')}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, status


__all__ = ["HealthTarget", "check", "validate"]
