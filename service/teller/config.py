"""Teller's configuration: one typed object, loaded in one place.

Sources, later ones winning: defaults, a TOML file (``--config`` or
``TELLER_CONFIG``), environment variables ``TELLER_*``, command-line flags.
Outside dev mode a missing KEK or operator credential stops start-up.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from teller import files
from teller.errors import ConfigError

EVENT_LOOPS = ("uvloop", "asyncio")


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = "127.0.0.1:7402"
    """host:port the gRPC server binds."""

    database_url: str = ""
    """SQLAlchemy URL. Empty means the embedded SQLite file ``<data_dir>/teller.db``;
    ``postgresql+psycopg://...`` selects PostgreSQL."""

    data_dir: Path = Path(".teller")
    """Where the embedded database and dev-mode secrets live."""

    dev_mode: bool = False
    """Dev mode generates a local KEK and operator token when none is given and
    migrates the embedded database on start. Never use it with real funds."""

    kek: str = ""
    """Key-encryption keys: ``version:base64key[,version:base64key...]``; the first
    is current. Secret: prefer ``kek_file``."""

    kek_file: Path | None = None
    """File with one ``version:base64key`` per line; the first is current."""

    admin_listen: str = ""
    """Serve AdminService on this separate address (e.g. ``127.0.0.1:7403``) and not
    on ``listen``. Empty: both services on ``listen``."""

    tls_cert_file: Path | None = None
    """PEM certificate chain for the gRPC ports; with ``tls_key_file`` enables TLS."""

    tls_key_file: Path | None = None
    """PEM private key for ``tls_cert_file``."""

    tls_client_ca_file: Path | None = None
    """PEM CA bundle: require client certificates it signed (mTLS). A tenant's
    certificate names it in its subject CN (``tenant:<tenant id>``); a call whose
    token belongs to another tenant is refused."""

    admin_token: str = ""
    """Operator credential for AdminService (compared in constant time)."""

    networks: dict[str, int] = field(default_factory=dict)
    """Extra x402 v1 network names mapped to chain ids (e.g. ``{"anvil": 31337}``);
    CAIP-2 ``eip155:<id>`` names and the x402 SDK's v1 names need no entry."""

    rpc_urls: dict[str, str] = field(default_factory=dict)
    """JSON-RPC endpoint per CAIP-2 network (``{"eip155:8453": "https://..."}``), for
    reading balances and authorization states, reconciling payments and voiding them."""

    outbound_allow: tuple[str, ...] = ()
    """Hosts (``api.internal``, ``*.corp.example``) or networks (``10.1.0.0/16``) that
    ``Pay`` may fetch although they resolve to non-public addresses. Empty: public only."""

    outbound_connect_timeout_seconds: float = 5.0
    """``Pay``: how long to wait for a connection to the paid API."""

    outbound_read_timeout_seconds: float = 30.0
    """``Pay``: how long one read from the paid API may take."""

    max_response_bytes: int = 10 * 1024 * 1024
    """``Pay``: responses larger than this are cut off with an error (they stream, never buffered)."""

    max_redirects: int = 3
    """``Pay``: redirects followed per request, each re-checked like the first URL."""

    pay_deadline_seconds: float = 60.0
    """``Pay``: the most one call may take until the final response's headers
    (both requests, the 402's body, signing and every redirect). A server that
    trickles bytes keeps each read alive but not the call. After the headers the
    body streams with only the read timeout between chunks (and the caller's own
    gRPC deadline)."""

    keep_paid_response_bytes: int = 0
    """``Pay``: keep the paid response (status, headers, body) when its body is at
    most this many bytes, so a retry with the same idempotency key of a settled
    payment gets it back without paying again. 0 keeps none (the default): a kept
    body is stored in the database as the server sent it."""

    shutdown_grace_seconds: float = 20.0
    """On SIGTERM: stop taking calls at once, give calls in flight this long to
    finish, then exit. Keep it below the pod's terminationGracePeriodSeconds."""

    reconcile_interval_seconds: float = 15.0
    """How often each worker's reconciler looks at the chain; 0 turns it off.
    Failures back off up to ten times this."""

    reconcile_lookback_blocks: int = 10_000
    """Where a network's first log scan starts, counted back from the head."""

    db_pool_size: int = 10
    """Connections per worker process."""

    grpc_acceptors: int = 32
    """gRPC servers per worker, all bound to ``listen`` (SO_REUSEPORT): the kernel
    spreads client connections over them. A grpc.aio server accepts one call at a
    time (one request outstanding in the gRPC core per turn of the event loop), so
    with one server calls wait in the core while the worker is busy and reach the
    Sign batcher a few at a time; several accept in parallel and batches fill up.
    About one per concurrent client connection is best (measured at 32 callers:
    8 acceptors left ~1.8 ms more of each call waiting to be accepted than 32).
    Calls multiplexed on one client connection all go to one of them."""

    event_loop: str = "uvloop"
    """``uvloop`` (libuv; the worker spends less of each call in the event loop) or
    ``asyncio`` (the standard library's loop)."""

    sign_batch_max: int = 64
    """Sign calls that arrive while a batch is in the database go together in the
    next one (one transaction, one lock per tenant, one write): at most this many.
    1 gives every call its own transaction."""

    sign_batches_in_flight: int = 1
    """Batches one worker keeps in the database at once (each holds a connection).
    One is fastest measured: a second batch mostly waits on the first one's
    tenant locks, and the calls it took would have made the next batch larger."""

    key_cache_seconds: float = 300.0
    """How long a decrypted wallet key may stay in memory after its last use;
    0 decrypts on every signature."""

    idempotency_ttl_seconds: int = 24 * 3600
    """How long an idempotency key keeps returning the same proof."""

    max_authorization_seconds: int = 3600
    """The longest any proof Teller signs stays usable (x402 exact and MPP evm
    EIP-3009 validBefore, Tempo valid_before): a server asking for longer gets
    this, so no reservation outlives a bound the operator chose."""

    max_void_fee_wei: int = 10**16
    """The most native gas an operator's void (a ``cancelAuthorization`` the wallet
    sends and pays for) may cost: gas limit x max fee per gas, in wei."""

    balance_check_seconds: float = 0.0
    """Where ``rpc_urls`` are configured, Sign refuses up front (``FAILED_PRECONDITION``
    ``insufficient_balance``) a payment the wallet's token balance cannot cover after
    what its unsettled payments hold, reading the balance at most this often per wallet
    and token (the staleness bound; see ``teller.balances``). 0: no pre-check (the
    server's refusal, then the reconciler, release the budget instead)."""

    max_challenge_bytes: int = 256 * 1024
    """Largest 402 body or single header Teller will parse."""

    log_level: str = "INFO"

    log_format: str = "text"
    """``json`` for one JSON object per line (with the call's request id), or ``text``."""

    metrics_listen: str = ""
    """Serve Prometheus metrics over HTTP here (e.g. ``0.0.0.0:9402``); empty: off."""

    tracing: bool = False
    """Emit OpenTelemetry spans per call (needs opentelemetry; exporters are configured
    the OpenTelemetry way, e.g. ``OTEL_EXPORTER_OTLP_ENDPOINT``)."""

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'teller.db').resolve()}"


_ENV_FIELDS = {
    "TELLER_LISTEN": "listen",
    "TELLER_DATABASE_URL": "database_url",
    "TELLER_DATA_DIR": "data_dir",
    "TELLER_DEV_MODE": "dev_mode",
    "TELLER_KEK": "kek",
    "TELLER_KEK_FILE": "kek_file",
    "TELLER_ADMIN_TOKEN": "admin_token",
    "TELLER_ADMIN_LISTEN": "admin_listen",
    "TELLER_TLS_CERT_FILE": "tls_cert_file",
    "TELLER_TLS_KEY_FILE": "tls_key_file",
    "TELLER_TLS_CLIENT_CA_FILE": "tls_client_ca_file",
    "TELLER_NETWORKS": "networks",
    "TELLER_RPC_URLS": "rpc_urls",
    "TELLER_RECONCILE_INTERVAL_SECONDS": "reconcile_interval_seconds",
    "TELLER_SHUTDOWN_GRACE_SECONDS": "shutdown_grace_seconds",
    "TELLER_OUTBOUND_ALLOW": "outbound_allow",
    "TELLER_OUTBOUND_CONNECT_TIMEOUT_SECONDS": "outbound_connect_timeout_seconds",
    "TELLER_OUTBOUND_READ_TIMEOUT_SECONDS": "outbound_read_timeout_seconds",
    "TELLER_MAX_RESPONSE_BYTES": "max_response_bytes",
    "TELLER_PAY_DEADLINE_SECONDS": "pay_deadline_seconds",
    "TELLER_KEEP_PAID_RESPONSE_BYTES": "keep_paid_response_bytes",
    "TELLER_MAX_REDIRECTS": "max_redirects",
    "TELLER_RECONCILE_LOOKBACK_BLOCKS": "reconcile_lookback_blocks",
    "TELLER_DB_POOL_SIZE": "db_pool_size",
    "TELLER_GRPC_ACCEPTORS": "grpc_acceptors",
    "TELLER_EVENT_LOOP": "event_loop",
    "TELLER_SIGN_BATCH_MAX": "sign_batch_max",
    "TELLER_SIGN_BATCHES_IN_FLIGHT": "sign_batches_in_flight",
    "TELLER_KEY_CACHE_SECONDS": "key_cache_seconds",
    "TELLER_IDEMPOTENCY_TTL_SECONDS": "idempotency_ttl_seconds",
    "TELLER_MAX_AUTHORIZATION_SECONDS": "max_authorization_seconds",
    "TELLER_MAX_VOID_FEE_WEI": "max_void_fee_wei",
    "TELLER_BALANCE_CHECK_SECONDS": "balance_check_seconds",
    "TELLER_MAX_CHALLENGE_BYTES": "max_challenge_bytes",
    "TELLER_LOG_LEVEL": "log_level",
    "TELLER_LOG_FORMAT": "log_format",
    "TELLER_METRICS_LISTEN": "metrics_listen",
    "TELLER_TRACING": "tracing",
}


def _coerce(name: str, raw: Any) -> Any:
    types = {f.name: f.type for f in fields(Settings)}
    kind = str(types[name])
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in {"1", "true", "yes", "on"}
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
        if kind == "Path | None":
            return Path(raw) if raw else None
        if kind == "dict[str, str]":
            if isinstance(raw, dict):
                return {str(k): str(v) for k, v in raw.items()}
            pairs = [p for p in str(raw).split(",") if p.strip()]
            # network ids contain ':', so split on the first '=' only
            return {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in pairs)}
        if kind == "tuple[str, ...]":
            items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
            return tuple(str(i).strip() for i in items if str(i).strip())
        if kind == "dict[str, int]":
            if isinstance(raw, dict):
                return {str(k): int(v) for k, v in raw.items()}
            pairs = [p for p in str(raw).split(",") if p.strip()]
            return {k.strip(): int(v) for k, v in (p.split("=", 1) for p in pairs)}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config field {name!r}: cannot use {raw!r}: {exc}") from exc
    return str(raw)


def load(config_file: Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from file, environment and explicit overrides (``None`` = unset)."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    path = config_file or (Path(env["TELLER_CONFIG"]) if env.get("TELLER_CONFIG") else None)
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        known = {f.name for f in fields(Settings)}
        unknown = set(doc) - known
        if unknown:
            raise ConfigError(f"unknown config keys in {path}: {sorted(unknown)}")
        values.update({k: _coerce(k, v) for k, v in doc.items()})
    for var, name in _ENV_FIELDS.items():
        if var in env and env[var] != "":
            values[name] = _coerce(name, env[var])
    for name, value in overrides.items():
        if value is not None:
            values[name] = _coerce(name, value)
    return Settings(**values)


def _dev_secret(path: Path, make: str) -> str:
    files.private_dir(path.parent)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make + "\n")
    files.private_file(path)  # one written by an older Teller may be wider
    return path.read_text().strip()


def finalize_for_serving(settings: Settings) -> Settings:
    """Check the secrets a serving worker needs; in dev mode, make local ones.

    Raises ConfigError outside dev mode when the KEK or the operator token is missing.
    """
    if settings.dev_mode:
        # Everything --dev writes lives here, some of it secrets in plain text.
        files.private_dir(settings.data_dir)
    if settings.kek or settings.kek_file:
        pass
    elif settings.dev_mode:
        import base64

        key = base64.b64encode(secrets.token_bytes(32)).decode()
        settings = replace(settings, kek_file=None, kek=_dev_secret(settings.data_dir / "dev-kek", f"dev1:{key}"))
    else:
        raise ConfigError(
            "no KEK configured: set TELLER_KEK_FILE (or TELLER_KEK), or run with --dev for local use"
        )
    if not settings.admin_token:
        if not settings.dev_mode:
            raise ConfigError("no operator credential: set TELLER_ADMIN_TOKEN, or run with --dev")
        settings = replace(
            settings,
            admin_token=_dev_secret(settings.data_dir / "admin-token", "op_" + secrets.token_urlsafe(24)),
        )
    for name in ("sign_batch_max", "sign_batches_in_flight", "db_pool_size", "grpc_acceptors",
                 "max_authorization_seconds"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(settings, name)}")
    if not settings.pay_deadline_seconds > 0:
        raise ConfigError(f"pay_deadline_seconds must be more than 0, got {settings.pay_deadline_seconds}")
    if settings.keep_paid_response_bytes < 0:
        raise ConfigError(f"keep_paid_response_bytes must not be negative, got {settings.keep_paid_response_bytes}")
    if settings.grpc_acceptors > 64:
        raise ConfigError(f"grpc_acceptors must be at most 64, got {settings.grpc_acceptors}")
    if settings.event_loop not in EVENT_LOOPS:
        raise ConfigError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, got {settings.event_loop!r}")
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise ConfigError("TLS needs both tls_cert_file and tls_key_file")
    if settings.tls_client_ca_file is not None and settings.tls_cert_file is None:
        raise ConfigError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
    return settings
