"""Teller's configuration: one typed object, loaded in one place.

Sources, later ones winning: defaults, a TOML file (``--config`` or
``TELLER_CONFIG``), environment variables ``TELLER_*``, command-line flags.
Outside dev mode a missing KEK or operator credential stops start-up.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from teller import files
from teller.errors import ConfigError

EVENT_LOOPS = ("uvloop", "asyncio")


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = "127.0.0.1:7402"
    """host:port the gRPC server binds."""

    database_url: str = ""
    """SQLAlchemy URL: ``postgresql+psycopg://...`` or ``sqlite:///path``. Empty means
    the embedded SQLite file ``<data_dir>/teller.db``, which only ``--dev`` serves
    on (and offline commands such as ``teller migrate`` use). Secret: prefer
    ``database_url_file``."""

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
    """The bootstrap operator credential for AdminService (compared in constant
    time), audited as operator ``bootstrap``. Named, revocable operator
    credentials are made with it (``teller admin operator create``). Secret:
    prefer ``admin_token_file``."""

    admin_token_file: Path | None = None
    """File holding ``admin_token`` (its first line)."""

    database_url_file: Path | None = None
    """File holding ``database_url`` (it may carry a password)."""

    rpc_urls_file: Path | None = None
    """File holding ``rpc_urls`` as ``network=url`` pairs, one per line or
    comma-separated (the URLs may carry provider keys)."""

    networks: dict[str, int] = field(default_factory=dict)
    """Extra x402 v1 network names mapped to chain ids (e.g. ``{"anvil": 31337}``);
    CAIP-2 ``eip155:<id>`` names and the x402 SDK's v1 names need no entry."""

    rpc_urls: dict[str, str] = field(default_factory=dict)
    """JSON-RPC endpoint per CAIP-2 network (``{"eip155:8453": "https://..."}``), for
    reading balances and authorization states, reconciling payments and voiding them.
    Secret (provider keys live in URLs): prefer ``rpc_urls_file``."""

    session_escrows: dict[str, str] = field(default_factory=dict)
    """MPP sessions: the channel escrow trusted per CAIP-2 network besides Tempo's
    precompile (``0x4d50500000000000000000000000000000000000``, trusted everywhere),
    e.g. ``{"eip155:31337": "0x5FbD..."}``. A session challenge naming any other
    escrow is not paid: the escrow holds the deposit."""

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
    """DEBUG, INFO, WARNING, ERROR or CRITICAL."""

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
    "TELLER_ADMIN_TOKEN_FILE": "admin_token_file",
    "TELLER_DATABASE_URL_FILE": "database_url_file",
    "TELLER_RPC_URLS_FILE": "rpc_urls_file",
    "TELLER_ADMIN_LISTEN": "admin_listen",
    "TELLER_TLS_CERT_FILE": "tls_cert_file",
    "TELLER_TLS_KEY_FILE": "tls_key_file",
    "TELLER_TLS_CLIENT_CA_FILE": "tls_client_ca_file",
    "TELLER_NETWORKS": "networks",
    "TELLER_RPC_URLS": "rpc_urls",
    "TELLER_SESSION_ESCROWS": "session_escrows",
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


#: Settings that hold secrets: never echoed in an error message. Each but the KEK
#: (which has its own ``kek_file``) may instead come from ``<name>_file``.
SECRETS = ("kek", "admin_token", "database_url", "rpc_urls")
SECRET_FILES = {"admin_token": "admin_token_file", "database_url": "database_url_file",
                "rpc_urls": "rpc_urls_file"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
DATABASE_SCHEMES = ("postgresql+psycopg", "sqlite")


def _pairs(name: str, raw: str) -> list[tuple[str, str]]:
    out = []
    for part in (p.strip() for p in raw.replace("\n", ",").split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")  # network ids contain ':', so split on '='
        if not sep or not key.strip():
            shown = "an entry" if name in SECRETS else f"entry {part[:60]!r}"
            raise ConfigError(f"{name}: {shown} must look like network=value")
        out.append((key.strip(), value.strip()))
    return out


def _coerce(name: str, raw: Any) -> Any:
    types = {f.name: f.type for f in fields(Settings)}
    kind = str(types[name])
    shown = "(value hidden: a secret)" if name in SECRETS else repr(raw)[:80]
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
                raise ValueError("expected true or false")
            return text in {"1", "true", "yes", "on"}
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError("expected an integer")
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
            return dict(_pairs(name, str(raw)))
        if kind == "tuple[str, ...]":
            items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
            return tuple(str(i).strip() for i in items if str(i).strip())
        if kind == "dict[str, int]":
            if isinstance(raw, dict):
                return {str(k): int(v) for k, v in raw.items()}
            return {k: int(v) for k, v in _pairs(name, str(raw))}
    except (TypeError, ValueError) as exc:
        what = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(kind, "")
        reason = f"must be {what}" if what else f"cannot be used ({exc})"
        raise ConfigError(f"{name} {reason}, got {shown}") from None
    return str(raw)


def _gather(config_file: Path | None, env: dict[str, str], overrides: dict[str, Any],
            problems: list[str]) -> dict[str, Any]:
    """The raw settings from every source, coerced; each unusable one is a problem."""
    values: dict[str, Any] = {}

    def put(name: str, raw: Any) -> None:
        try:
            values[name] = _coerce(name, raw)
        except ConfigError as exc:
            problems.append(str(exc))

    path = config_file or (Path(env["TELLER_CONFIG"]) if env.get("TELLER_CONFIG") else None)
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text())
        except OSError as exc:
            problems.append(f"cannot read config file {path}: {exc.strerror}")
            doc = {}
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"config file {path} is not valid TOML: {exc}")
            doc = {}
        known = {f.name for f in fields(Settings)}
        unknown = set(doc) - known
        if unknown:
            problems.append(f"unknown config keys in {path}: {sorted(unknown)}")
        for k, v in doc.items():
            if k in known:
                put(k, v)
    for var, name in _ENV_FIELDS.items():
        if var in env and env[var] != "":
            put(name, env[var])
    for name, value in overrides.items():
        if value is not None:
            put(name, value)
    for name, file_field in SECRET_FILES.items():
        secret_file = values.get(file_field)
        if secret_file is None:
            continue
        if values.get(name):
            problems.append(f"set {name} or {file_field}, not both")
            continue
        try:
            text = Path(secret_file).read_text().strip()
        except OSError as exc:
            problems.append(f"{file_field}: cannot read {secret_file}: {exc.strerror}")
            continue
        if not text:
            problems.append(f"{file_field}: {secret_file} is empty")
            continue
        put(name, text if name != "admin_token" else text.splitlines()[0].strip())
    return values


def load(config_file: Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from file, environment and explicit overrides (``None`` = unset).

    Raises ConfigError naming every setting that cannot be used, on one line."""
    problems: list[str] = []
    values = _gather(config_file, dict(os.environ if env is None else env), overrides, problems)
    if problems:
        raise ConfigError("; ".join(problems))
    return Settings(**values)


def check(config_file: Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> list[str]:
    """Every problem of a configuration a worker would serve with, one sentence
    each (``teller config check``); empty when it is fine. Reads the files it
    names, connects to nothing."""
    problems: list[str] = []
    values = _gather(config_file, dict(os.environ if env is None else env), overrides, problems)
    settings = Settings(**values)  # what could not be read is a problem already, and left at its default
    problems += validate(settings, secrets_needed=not settings.dev_mode)
    problems += database_problems(settings)
    return problems


def _address_problem(name: str, address: str) -> str | None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"{name} must be host:port with a port from 0 to 65535, got {address[:80]!r}"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{name}: {host[:60]!r} is not an IPv6 address"
        return None
    if not host:
        return None  # all interfaces
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    labels = host.split(".")
    if not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        return f"{name}: {host[:60]!r} is neither an IP address nor a host name"
    return None


_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def database_problems(settings: Settings) -> list[str]:
    """A worker outside dev mode needs a database named explicitly: it must
    never fall back to a local SQLite file nobody else sees."""
    if not settings.database_url and not settings.dev_mode:
        return ["database_url is not set: set TELLER_DATABASE_URL (or TELLER_DATABASE_URL_FILE) to "
                "postgresql+psycopg://... or sqlite:///path; only --dev uses the embedded SQLite file"]
    return []


def validate(settings: Settings, *, secrets_needed: bool = True) -> list[str]:
    """Every problem of these settings, one sentence each, naming the setting."""
    problems: list[str] = []
    for name in ("listen", "admin_listen", "metrics_listen"):
        value = getattr(settings, name)
        if value or name == "listen":
            problem = _address_problem(name, value)
            if problem:
                problems.append(problem)
    if settings.database_url:
        scheme = settings.database_url.partition("://")[0] if "://" in settings.database_url else ""
        if scheme not in DATABASE_SCHEMES:
            problems.append(f"database_url must start with postgresql+psycopg:// or sqlite:///, got "
                            f"{(scheme[:30] + '://') if scheme else 'no scheme'}")
    if settings.log_level.upper() not in LOG_LEVELS:
        problems.append(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {settings.log_level[:30]!r}")
    if settings.log_format not in LOG_FORMATS:
        problems.append(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {settings.log_format[:30]!r}")
    for network, url in settings.rpc_urls.items():
        chain_id = network.removeprefix("eip155:")
        if not network.startswith("eip155:") or not chain_id.isdigit():
            problems.append(f"rpc_urls: network {network[:40]!r} must be a CAIP-2 id like eip155:8453")
        parsed = urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or " " in url:
            problems.append(f"rpc_urls[{network[:40]!r}] must be an http:// or https:// URL")
    for network, escrow in settings.session_escrows.items():
        chain_id = network.removeprefix("eip155:")
        if not network.startswith("eip155:") or not chain_id.isdigit():
            problems.append(f"session_escrows: network {network[:40]!r} must be a CAIP-2 id like eip155:4217")
        if not re.fullmatch(r"0x[0-9a-fA-F]{40}", escrow):
            problems.append(f"session_escrows[{network[:40]!r}] must be an address (0x and 40 hex digits)")
    for name, value in settings.networks.items():
        if value < 1:
            problems.append(f"networks[{name[:40]!r}] must be a positive chain id, got {value}")
    if settings.kek or settings.kek_file:
        from teller.vault.kek import LocalKekProvider

        try:
            if settings.kek_file is not None:
                LocalKekProvider.from_file(settings.kek_file)
            else:
                LocalKekProvider.parse(settings.kek)
        except ConfigError as exc:
            problems.append(str(exc))
    elif secrets_needed:
        problems.append("no KEK configured: set TELLER_KEK_FILE (or TELLER_KEK), or run with --dev for local use")
    if secrets_needed and not settings.admin_token:
        problems.append("no operator credential: set TELLER_ADMIN_TOKEN (or TELLER_ADMIN_TOKEN_FILE), "
                        "or run with --dev")
    for name in ("sign_batch_max", "sign_batches_in_flight", "db_pool_size", "grpc_acceptors",
                 "max_authorization_seconds"):
        if getattr(settings, name) < 1:
            problems.append(f"{name} must be at least 1, got {getattr(settings, name)}")
    if not settings.pay_deadline_seconds > 0:
        problems.append(f"pay_deadline_seconds must be more than 0, got {settings.pay_deadline_seconds}")
    for name in ("keep_paid_response_bytes", "max_void_fee_wei", "balance_check_seconds"):
        if getattr(settings, name) < 0:
            problems.append(f"{name} must not be negative, got {getattr(settings, name)}")
    if settings.grpc_acceptors > 64:
        problems.append(f"grpc_acceptors must be at most 64, got {settings.grpc_acceptors}")
    for name in ("outbound_connect_timeout_seconds", "outbound_read_timeout_seconds", "max_response_bytes",
                 "max_challenge_bytes", "idempotency_ttl_seconds"):
        if getattr(settings, name) <= 0:
            problems.append(f"{name} must be positive, got {getattr(settings, name)}")
    for name in ("shutdown_grace_seconds", "reconcile_interval_seconds", "reconcile_lookback_blocks",
                 "key_cache_seconds", "max_redirects"):
        if getattr(settings, name) < 0:
            problems.append(f"{name} must not be negative, got {getattr(settings, name)}")
    if settings.event_loop not in EVENT_LOOPS:
        problems.append(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, got {settings.event_loop!r}")
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        problems.append("TLS needs both tls_cert_file and tls_key_file")
    if settings.tls_client_ca_file is not None and settings.tls_cert_file is None:
        problems.append("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(settings, name)
        if path is not None and not Path(path).is_file():
            problems.append(f"{name}: {path} is not a readable file")
    return problems


def _dev_secret(path: Path, make: str) -> str:
    files.private_dir(path.parent)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make + "\n")
    files.private_file(path)  # one written by an older Teller may be wider
    return path.read_text().strip()


def finalize_for_serving(settings: Settings) -> Settings:
    """Check the settings a serving worker needs; in dev mode, make local secrets.

    Raises ConfigError naming every problem (one line) outside dev mode when the
    KEK or the operator token is missing, or when any setting is unusable.
    """
    if settings.dev_mode:
        # Everything --dev writes lives here, some of it secrets in plain text.
        files.private_dir(settings.data_dir)
    if not (settings.kek or settings.kek_file) and settings.dev_mode:
        import base64

        key = base64.b64encode(secrets.token_bytes(32)).decode()
        settings = replace(settings, kek_file=None, kek=_dev_secret(settings.data_dir / "dev-kek", f"dev1:{key}"))
    if not settings.admin_token and settings.dev_mode:
        settings = replace(
            settings,
            admin_token=_dev_secret(settings.data_dir / "admin-token", "op_" + secrets.token_urlsafe(24)),
        )
    problems = validate(settings)
    if problems:
        raise ConfigError("; ".join(problems))
    return replace(settings, log_level=settings.log_level.upper())
