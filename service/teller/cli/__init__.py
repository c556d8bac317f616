"""The `teller` command: serve, migrate, demo, and admin calls for operators."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from teller import config
from teller.cli import output as cli_output
from teller.errors import ConfigError, InvalidArgument


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (or TELLER_CONFIG)")
    p.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in the data dir)")
    p.add_argument("--data-dir", help="data directory for the embedded database (default .teller)")


def _settings(ns: argparse.Namespace, **extra: Any) -> config.Settings:
    return config.load(ns.config, database_url=ns.database_url, data_dir=ns.data_dir, **extra)


def cmd_serve(ns: argparse.Namespace) -> int:
    from teller.app import build
    from teller.rpc.server import run

    settings = config.finalize_for_serving(
        _settings(ns, listen=ns.listen, kek_file=ns.kek_file, dev_mode=True if ns.dev else None)
    )
    problems = config.database_problems(settings)
    if problems:
        raise ConfigError("; ".join(problems))
    from teller.observe import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    # Alembic narrates reading the schema revision at INFO on every start.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    if settings.dev_mode:
        logging.getLogger("teller").warning("dev mode: local KEK and operator token in %s; never use real funds",
                                            settings.data_dir)
    app = build(settings)
    try:
        run(app, settings.listen)
    finally:
        app.close()
    return 0


def cmd_migrate(ns: argparse.Namespace) -> int:
    from teller.db import migrate

    settings = _settings(ns)
    print(migrate.migrate(settings.resolved_database_url(), ns.to))
    return 0


def _database(ns: argparse.Namespace):  # type: ignore[no-untyped-def]
    from teller.db import Database, make_engine

    return Database(make_engine(_settings(ns).resolved_database_url(), 2))


def _public_key_arg(value: str) -> bytes:
    from teller.audit.export import parse_public_key

    path = Path(value)
    return parse_public_key(path.read_text() if path.is_file() else value)
def cmd_config_check(ns: argparse.Namespace) -> int:
    """Every problem of the configuration a worker would serve with, one per line."""
    problems = config.check(ns.config, database_url=ns.database_url, data_dir=ns.data_dir, listen=ns.listen,
                            kek_file=ns.kek_file, dev_mode=True if ns.dev else None)
    for problem in problems:
        print(problem)
    if not problems:
        print("configuration ok")
    return 1 if problems else 0


def cmd_audit(ns: argparse.Namespace) -> int:
    from teller.audit import tools as audit_tools

    fmt = _fmt(ns)
    if ns.action == "verify-export":
        from teller.audit.export import verify_export

        public_key = _public_key_arg(ns.public_key)
        with (sys.stdin if ns.file == "-" else open(ns.file, encoding="utf-8")) as fh:
            problems, tail = verify_export(fh, public_key)
        what = (f"tenant {tail.get('tenant_id')}: {tail.get('events')} event(s) up to seq {tail.get('seq')}, "
                f"signed by key {tail.get('key_id')}") if tail else "export"
    elif ns.action == "verify" and ns.file:
        with (sys.stdin if ns.file == "-" else open(ns.file, encoding="utf-8")) as fh:
            problems = audit_tools.verify_file(fh)
        what = "audit log"
    else:
        from teller.audit import keys as audit_keys
        from teller.clock import ms, system_clock

        db = _database(ns)
        try:
            if ns.action == "export":
                from teller.app import kek_provider

                key = audit_keys.signing_key(db, kek_provider(_settings(ns, kek_file=ns.kek_file)), ms(system_clock))
                audit_tools.export(db, ns.tenant, sys.stdout, key, ms(system_clock))
                return 0
            if ns.action == "rotate-key":
                from teller.app import kek_provider

                new = audit_keys.rotate(db, kek_provider(_settings(ns, kek_file=ns.kek_file)), ms(system_clock))
                cli_output.record(fmt, asdict(new), f"audit key {new.id} is current: {new.public_key}\n"
                                  "(the previous key is retired; exports it signed still verify against it)")
                return 0
            if ns.action == "public-key":
                keys = audit_keys.public_keys(db)
                if not keys:
                    from teller.app import kek_provider

                    # First use: make the key (needs the KEK), so it can be published before any export.
                    audit_keys.signing_key(db, kek_provider(_settings(ns, kek_file=ns.kek_file)), ms(system_clock))
                    keys = audit_keys.public_keys(db)
                shown = keys if ns.all else keys[:1]
                if fmt == "table" and not ns.all:
                    print(shown[0].public_key)
                else:
                    cli_output.rows(fmt, [{**asdict(k), "created": cli_output.when(k.created_ms),
                                           "retired": cli_output.when(k.retired_ms)} for k in shown],
                                    ["id", "public_key", "created", "retired"])
                return 0
            problems = audit_tools.verify_database(db, ns.tenant)
            what = f"audit log of tenant {ns.tenant}" if ns.tenant else "audit log"
        finally:
            db.engine.dispose()
    if fmt == "json":
        print(json.dumps({"ok": not problems, "problems": [str(p) for p in problems]}, indent=2))
    else:
        for p in problems:
            print(p)
        print(f"{what} verified: no problems" if not problems else f"{len(problems)} problem(s)",
              file=sys.stderr if problems else sys.stdout)
    return 1 if problems else 0


def cmd_keys(ns: argparse.Namespace) -> int:
    from teller import rotation
    from teller.app import kek_provider
    from teller.db import Database, make_engine

    settings = _settings(ns, kek_file=ns.kek_file)
    db = Database(make_engine(settings.resolved_database_url(), 2))
    try:
        doc: dict[str, Any] = {}
        if ns.action == "rewrap":
            result = rotation.rewrap_all(db, kek_provider(settings))
            doc.update(rewrapped=result.rewrapped, already_current=result.already_current,
                       current_version=result.current_version)
            if _fmt(ns) == "table":
                print(f"re-wrapped {result.rewrapped} wallet key(s) under KEK {result.current_version!r}; "
                      f"{result.already_current} already were")
        counts = rotation.status(db)
        doc["wallets_per_kek_version"] = dict(sorted(counts.items()))
        if _fmt(ns) == "json":
            print(json.dumps(doc, indent=2, sort_keys=True))
        else:
            print("wallets per KEK version: " + (", ".join(f"{v}={n}" for v, n in sorted(counts.items())) or "none"))
    finally:
        db.engine.dispose()
    return 0


def cmd_health(ns: argparse.Namespace) -> int:
    from teller.healthcheck import HealthTarget, check

    serving, answer = check(HealthTarget(
        ns.address, ns.service, ns.tls_ca, ns.tls_cert, ns.tls_key, ns.tls_server_name or "", ns.timeout))
    print(f"{ns.address}: {answer}", file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


def cmd_demo(ns: argparse.Namespace) -> int:
    from teller.demo import run

    return run(Path(ns.data_dir) if ns.data_dir else None)


# --- policy dry run ----------------------------------------------------------

def _print_dry_run(ns: argparse.Namespace, result: Any) -> int:
    doc = result.to_json()
    if _fmt(ns) == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        cli_output.rows(_fmt(ns), [{**o, "decision": "allow" if o["allowed"] else o["reason"]} for o in doc["offers"]],
                        ["protocol", "scheme", "network", "asset", "amount", "pay_to", "decision"])
        if _fmt(ns) == "table":
            c = doc["chosen"]
            print(f"decision: pay {c['amount']} of {c['asset']} on {c['network']} to {c['pay_to']} ({c['protocol']})"
                  if c else f"decision: deny ({doc['reason']}): {doc['message']}")
    # Like grep: 0 when the payment would be signed, 1 when it would be refused.
    return 0 if result.allowed else 1


def _read_document(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{path}: not a JSON policy document: {exc}") from None


def _used(pairs: Sequence[str] | None, field: str) -> dict[str, int]:
    used = {}
    for pair in pairs or ():
        name, sep, amount = pair.partition("=")
        if not sep or not amount.isdigit():
            raise InvalidArgument(f"{field}: {pair!r} is not <budget name>=<amount in common units>")
        used[name] = int(amount)
    return used


def cmd_policy_test(ns: argparse.Namespace) -> int:
    """Offline: a policy document (file) against a saved 402; nothing is signed."""
    from teller import policy_dryrun

    saved = policy_dryrun.load_challenge(Path(ns.challenge).read_text(), ns.url or "")
    result = policy_dryrun.dry_run(
        saved, _read_document(ns.policy), _read_document(ns.wallet_policy) if ns.wallet_policy else None,
        used={"tenant": _used(ns.used, "--used"), "wallet": _used(ns.wallet_used, "--wallet-used")},
        max_amount=ns.max_amount, networks=config.load(ns.config).networks, now=datetime.now(UTC))
    return _print_dry_run(ns, result)


# --- admin -----------------------------------------------------------------

def _fmt(ns: argparse.Namespace) -> str:
    return getattr(ns, "output", None) or "table"


def _opt(ns: argparse.Namespace, name: str) -> Any:
    # Options shared by every admin level are SUPPRESSed (absent unless given),
    # so that one given after the noun is not reset by the noun's parser.
    return getattr(ns, name, None)


def _local_address(listen: str) -> str:
    """Where a client on this host reaches a server bound to ``listen``."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):  # noqa: S104 - a bind-all address is mapped to loopback here
        host = "127.0.0.1"
    return f"{host}:{port}"


def admin_target(ns: argparse.Namespace, settings: config.Settings) -> str:
    """--target, else TELLER_TARGET, else where the configuration beside the CLI
    serves AdminService: ``admin_listen`` when set, else ``listen``."""
    return (_opt(ns, "target") or os.environ.get("TELLER_TARGET")
            or _local_address(settings.admin_listen or settings.listen))


def _admin_client(ns: argparse.Namespace):  # type: ignore[no-untyped-def]
    from teller_client import AdminClient

    settings = config.load(_opt(ns, "config"))
    token = _opt(ns, "token") or os.environ.get("TELLER_ADMIN_TOKEN", "") or settings.admin_token
    if not token:
        dev_token = Path(_opt(ns, "data_dir") or settings.data_dir) / "admin-token"
        if dev_token.exists():
            token = dev_token.read_text().strip()
    if not token:
        raise ConfigError("no operator credential: pass --token, set TELLER_ADMIN_TOKEN, or use a dev data dir")
    credentials = None
    if _opt(ns, "tls_ca"):
        import grpc

        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(ns.tls_ca).read_bytes(),
            private_key=Path(ns.tls_key).read_bytes() if _opt(ns, "tls_key") else None,
            certificate_chain=Path(ns.tls_cert).read_bytes() if _opt(ns, "tls_cert") else None)
    return AdminClient(admin_target(ns, settings), token, credentials=credentials)


def _frozen_view(d: dict[str, Any]) -> dict[str, Any]:
    return {**d, "created": cli_output.when(d.get("created_at_ms")),
            "frozen_reason": d.get("frozen_reason", "") if d.get("frozen") else ""}


def _pages(fetch: Any, ns: argparse.Namespace) -> tuple[list[Any], str]:
    """One page (--limit, --page-token), or every page with --all."""
    items, token = fetch(page_size=ns.limit, page_token=ns.page_token or "")
    while ns.all and token:
        more, token = fetch(page_size=ns.limit, page_token=token)
        items.extend(more)
    return items, token


def _follow(admin: Any, ns: argparse.Namespace, last_id: int) -> None:
    """Poll for events newer than ``last_id`` and print them oldest first, until interrupted."""
    while True:
        time.sleep(ns.interval)
        fresh: list[Any] = []
        token = ""
        while True:
            page, token = admin.audit_events(tenant_id=ns.tenant or "", action=ns.action or "", page_size=200,
                                             page_token=token)
            newer = [e for e in page if e.id > last_id]
            fresh.extend(newer)
            if len(newer) < len(page) or not token:
                break
        for e in reversed(fresh):
            print(json.dumps(asdict(e), sort_keys=True), flush=True)
            last_id = max(last_id, e.id)


def cmd_admin(ns: argparse.Namespace) -> int:
    from teller_client import Policy

    fmt = _fmt(ns)
    what = (ns.noun, ns.verb)
    if what == ("policy", "set") and not ns.file and ns.per_payment_max is None and ns.daily_budget is None \
            and not ns.allow_unknown_assets:
        # Checked before connecting: an empty document would silently replace the policy.
        raise InvalidArgument("policy set: give --file (a policy document, - for stdin) or at least one of "
                              "--per-payment-max, --daily-budget, --allow-unknown-assets; nothing was changed")
    with _admin_client(ns) as admin:
        if what == ("tenant", "create"):
            t = admin.create_tenant(ns.name)
            cli_output.record(fmt, asdict(t), f"tenant {t.id} {t.name}")
        elif what in (("tenant", "disable"), ("tenant", "enable")):
            t = admin.disable_tenant(ns.tenant_id) if ns.verb == "disable" else admin.enable_tenant(ns.tenant_id)
            cli_output.record(fmt, asdict(t), f"tenant {t.id} is {t.state}")
        elif what == ("tenant", "list"):
            cli_output.rows(fmt, [_frozen_view(asdict(t)) for t in admin.list_tenants()],
                            ["id", "name", "state", "frozen", "frozen_reason", "created"])
        elif what == ("token", "issue"):
            token_id, token = admin.issue_token(ns.tenant_id, ns.description)
            cli_output.record(fmt, {"token_id": token_id, "token": token},
                              f"token id {token_id}\n{token}\n(shown once: Teller keeps only its hash)")
        elif what == ("token", "rotate"):
            token_id, token = admin.rotate_token(ns.token_id)
            cli_output.record(fmt, {"token_id": token_id, "token": token, "revoked_token_id": ns.token_id},
                              f"token id {token_id}\n{token}\n(shown once; token {ns.token_id} is revoked)")
        elif what == ("token", "revoke"):
            admin.revoke_token(ns.token_id)
            cli_output.record(fmt, {"token_id": ns.token_id, "revoked": True}, f"token {ns.token_id} revoked")
        elif what == ("token", "list"):
            cli_output.rows(fmt, [{**asdict(t), "created": cli_output.when(t.created_at_ms),
                                   "revoked": cli_output.when(t.revoked_at_ms)} for t in admin.list_tokens(ns.tenant_id)],
                            ["id", "description", "created", "revoked"])
        elif what == ("wallet", "create"):
            w = admin.create_wallet(ns.tenant_id, ns.label)
            cli_output.record(fmt, asdict(w), f"wallet {w.id} {w.address}")
        elif what == ("wallet", "import"):
            # Keys come from a file or stdin, never argv (visible in ps).
            key = (sys.stdin.read() if ns.key_file == "-" else Path(ns.key_file).read_text()).strip()
            w = admin.import_wallet(ns.tenant_id, key, ns.label)
            cli_output.record(fmt, asdict(w), f"wallet {w.id} {w.address}")
        elif what == ("wallet", "disable"):
            w = admin.disable_wallet(ns.tenant_id, ns.wallet_id)
            cli_output.record(fmt, asdict(w), f"wallet {w.id} is {w.state}")
        elif what == ("wallet", "list"):
            cli_output.rows(fmt, [_frozen_view(asdict(w)) for w in admin.list_wallets(ns.tenant_id)],
                            ["id", "address", "state", "frozen", "frozen_reason", "label"])
        elif what == ("policy", "set"):
            if ns.file:
                document: Any = sys.stdin.read() if ns.file == "-" else Path(ns.file).read_text()
            else:
                document = Policy(per_payment_max=ns.per_payment_max, daily_budget=ns.daily_budget,
                                  allow_unknown_assets=ns.allow_unknown_assets)
            print(json.dumps(admin.set_policy(ns.tenant_id, document, wallet_id=ns.wallet or ""), indent=2))
        elif what == ("policy", "get"):
            print(json.dumps(admin.get_policy(ns.tenant_id, wallet_id=ns.wallet or ""), indent=2))
        elif what == ("policy", "test"):
            return _admin_policy_test(admin, ns)
        elif what in (("freeze", "set"), ("unfreeze", "set")):
            frozen = ns.noun == "freeze"
            admin.set_frozen(ns.tenant_id, frozen, wallet_id=ns.wallet or "", reason=ns.reason)
            target = f"wallet {ns.wallet}" if ns.wallet else f"tenant {ns.tenant_id}"
            cli_output.record(fmt, {"tenant_id": ns.tenant_id, "wallet_id": ns.wallet or "", "frozen": frozen,
                                    "reason": ns.reason}, f"{target} {'frozen' if frozen else 'unfrozen'}")
        elif what == ("spend", "show"):
            cli_output.rows(fmt, [asdict(w) for w in admin.spend(ns.tenant_id, wallet_id=ns.wallet or "")],
                            ["scope", "window", "kind", "limit", "spent", "reserved", "remaining"])
        elif what == ("spend", "report"):
            _spend_report(admin, ns)
        elif what == ("payment", "show"):
            p = admin.get_payment(ns.payment_id)
            print(json.dumps(asdict(p), indent=2))
        elif what == ("payment", "list"):
            rows, token = _pages(lambda **page: admin.list_payments(ns.tenant_id, state=ns.state or "", **page), ns)
            cli_output.rows(fmt, [asdict(p) for p in rows],
                            ["id", "state", "amount", "network", "pay_to", "tx_hash", "released", "state_reason"],
                            key="payments", next_page_token=token)
        elif what == ("payment", "void"):
            p = admin.void_payment(ns.payment_id, ns.reason)
            cli_output.record(fmt, asdict(p),
                              f"payment {p.id} {p.state} (cancelAuthorization {p.tx_hash}); its budget is released")
        elif what == ("reconcile", "run"):
            transitions, errors = admin.reconcile()
            print(json.dumps({"transitions": transitions, "errors": errors}, indent=2))
            return 1 if errors else 0
        elif what == ("operator", "create"):
            op, credential = admin.create_operator(ns.name)
            cli_output.record(fmt, {**asdict(op), "credential": credential},
                              f"operator {op.id} {op.name}\n{credential}\n(shown once: Teller keeps only its hash)")
        elif what == ("operator", "list"):
            cli_output.rows(fmt, [{**asdict(o), "created": cli_output.when(o.created_at_ms),
                                   "revoked": cli_output.when(o.revoked_at_ms)} for o in admin.list_operators()],
                            ["id", "name", "created_by", "created", "revoked"])
        elif what == ("operator", "revoke"):
            op = admin.revoke_operator(ns.name)
            cli_output.record(fmt, asdict(op), f"operator {op.name} revoked")
        elif what == ("audit", "tail"):
            events, token = _pages(lambda **page: admin.audit_events(tenant_id=ns.tenant or "",
                                                                     action=ns.action or "", **page), ns)
            if fmt == "json" and not ns.follow:
                print(json.dumps({"events": [asdict(e) for e in events], "next_page_token": token}, indent=2,
                                 sort_keys=True))
                return 0
            # One JSON object per line, oldest first: the form a log pipeline takes.
            for e in reversed(events):
                print(json.dumps(asdict(e), sort_keys=True), flush=True)
            if token and not ns.follow:
                print(f"more (older): repeat with --page-token {token} (or --all)", file=sys.stderr)
            if ns.follow:
                try:
                    _follow(admin, ns, max((e.id for e in events), default=0))
                except KeyboardInterrupt:
                    return 0
    return 0


def _admin_policy_test(admin: Any, ns: argparse.Namespace) -> int:
    """The tenant's stored policy, freeze state and current spend against a saved 402."""
    from teller import policy_dryrun

    saved = policy_dryrun.load_challenge(Path(ns.challenge).read_text(), ns.url or "")
    tenant_doc = admin.get_policy(ns.tenant_id)
    wallet_doc = admin.get_policy(ns.tenant_id, wallet_id=ns.wallet) if ns.wallet else None
    tenant = next((t for t in admin.list_tenants() if t.id == ns.tenant_id), None)
    wallet = next((w for w in admin.list_wallets(ns.tenant_id) if w.id == ns.wallet), None) if ns.wallet else None
    used: dict[str, dict[str, int]] = {"tenant": {}, "wallet": {}}
    for w in admin.spend(ns.tenant_id, wallet_id=ns.wallet or ""):
        scope = "tenant" if w.scope == "tenant" else "wallet"
        used[scope][w.window] = int(w.limit) - int(w.remaining)
    result = policy_dryrun.dry_run(
        saved, tenant_doc, wallet_doc, used=used,
        frozen={"tenant": bool(tenant and tenant.frozen), "wallet": bool(wallet and wallet.frozen)},
        max_amount=ns.max_amount, networks=config.load(_opt(ns, "config")).networks, now=datetime.now(UTC))
    return _print_dry_run(ns, result)


def _spend_report(admin: Any, ns: argparse.Namespace) -> None:
    from teller import spend_report

    since = spend_report.parse_time(ns.since, "--since")
    until = spend_report.parse_time(ns.until, "--until") if ns.until else int(time.time() * 1000)
    facts: list[tuple[int, str, str, str, int]] = []
    token = ""
    while True:
        page, token = admin.list_payments(ns.tenant_id, page_size=1000, page_token=token)
        facts.extend((p.created_at_ms, p.network, p.asset, p.state, p.amount) for p in page)
        # Newest first: once a page reaches before --since, the rest is older still.
        if not token or (page and page[-1].created_at_ms < since):
            break
    lines = spend_report.report(facts, by=ns.by, since_ms=since, until_ms=until)
    cli_output.rows(_fmt(ns), [{**asdict(ln), "window_start": cli_output.when(ln.window_start_ms),
                                "window_end": cli_output.when(ln.window_end_ms)} for ln in lines],
                    ["window_start", "window_end", "network", "asset", "state", "payments", "amount"])


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("teller")
    except Exception:  # noqa: BLE001 - running from a source tree that was never installed
        return "unknown"


class _SubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    def add_parser(self, name: str, **kw: Any) -> Any:
        # A subcommand's --help starts with the line its parent lists it with.
        if "help" in kw:
            kw.setdefault("description", kw["help"])
        return super().add_parser(name, **kw)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command gets a description: the help line it is listed with."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.register("action", "parsers", _SubParsers)


def _admin_options() -> _Parser:
    """Options every admin (sub)command takes, before or after its noun and verb."""
    p = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    p.add_argument("--target", help="host:port of AdminService (default: TELLER_TARGET, else admin_listen or "
                                    "listen of the configuration, as `teller serve` would read it)")
    p.add_argument("--config", type=Path, help="TOML config file the target and dev data dir are read from "
                                                "(or TELLER_CONFIG)")
    p.add_argument("--token", help="operator credential (or TELLER_ADMIN_TOKEN)")
    p.add_argument("--data-dir", help="dev data dir holding admin-token (default: the config's, .teller)")
    p.add_argument("--tls-ca", help="PEM CA that signed the server's certificate (enables TLS)")
    p.add_argument("--tls-cert", help="operator client certificate (mTLS, subject CN 'operator')")
    p.add_argument("--tls-key", help="key of --tls-cert")
    _output_option(p)
    return p


def _output_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=cli_output.FORMATS, default=argparse.SUPPRESS,
                   help="table (default), json or csv")


def _paging(p: argparse.ArgumentParser, limit: int) -> None:
    p.add_argument("--limit", type=int, default=limit, help=f"page size (default {limit}, at most 1000)")
    p.add_argument("--page-token", help="continue after a previous page (printed when there is more)")
    p.add_argument("--all", action="store_true", help="follow every page")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="teller", description="Server-wallet worker for HTTP 402 payments")
    parser.add_argument("--version", action="version", version=f"teller {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the gRPC worker")
    _server_flags(serve)
    serve.add_argument("--listen", help="host:port to bind (default 127.0.0.1:7402)")
    serve.add_argument("--kek-file", help="file with version:base64key lines (or TELLER_KEK_FILE / TELLER_KEK)")
    serve.add_argument("--dev", action="store_true", help="dev mode: local KEK/token, auto-migrate")
    serve.set_defaults(fn=cmd_serve)

    migrate = sub.add_parser("migrate", help="bring the database schema up to date")
    _server_flags(migrate)
    migrate.add_argument("--to", help="migrate up or down to this revision (a rollback: see docs/upgrades.md)")
    migrate.set_defaults(fn=cmd_migrate)

    health = sub.add_parser("health", help="gRPC health check of a worker (exit 0 when SERVING): an exec probe")
    health.add_argument("--address", default="127.0.0.1:7402", help="host:port (default 127.0.0.1:7402)")
    health.add_argument("--service", default="", help="health service name (default: the whole worker)")
    health.add_argument("--tls-ca", type=Path, help="PEM CA of the worker's certificate (enables TLS)")
    health.add_argument("--tls-cert", type=Path, help="client certificate, for a worker with mTLS")
    health.add_argument("--tls-key", type=Path, help="key of --tls-cert")
    health.add_argument("--tls-server-name", help="name the worker's certificate holds, if not the address's host")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    health.set_defaults(fn=cmd_health)
    config_cmd = sub.add_parser("config", help="check a configuration without serving")
    config_verbs = config_cmd.add_subparsers(dest="action", required=True)
    check = config_verbs.add_parser("check", help="one line per problem; exit 1 when there is any")
    _server_flags(check)
    check.add_argument("--listen", help="host:port to bind")
    check.add_argument("--kek-file", help="KEK file (or TELLER_KEK_FILE / TELLER_KEK)")
    check.add_argument("--dev", action="store_true", help="check as `serve --dev` would run")
    check.set_defaults(fn=cmd_config_check)

    demo = sub.add_parser("demo", help="self-check, offline: sign a real x402 challenge on the embedded default "
                                       "and verify it (the full demo is ./run demo in a checkout)")
    demo.add_argument("--data-dir", help="keep the demo's data here (default: a temporary dir)")
    demo.set_defaults(fn=cmd_demo)

    audit_cmd = sub.add_parser("audit", help="verify the audit log's hash chains; export and verify signed exports")
    audit_verbs = audit_cmd.add_subparsers(dest="action", required=True, metavar="VERB", parser_class=_Parser)
    av = audit_verbs.add_parser("verify", help="check every chain (or --tenant's, or an unsigned --file)")
    _server_flags(av)
    av.add_argument("--tenant", help="only this tenant's chain (an unknown tenant is an error)")
    av.add_argument("--file", help="check the chain of a JSON Lines export instead of the database (- for stdin); "
                                   "this does not check its signature: use verify-export")
    ae = audit_verbs.add_parser("export", help="a tenant's audit log as JSON Lines on stdout, its head signed with "
                                               "Teller's audit key (needs the KEK)")
    _server_flags(ae)
    ae.add_argument("--tenant", required=True)
    ae.add_argument("--kek-file", type=Path, help="KEK file (or TELLER_KEK_FILE / TELLER_KEK)")
    ave = audit_verbs.add_parser("verify-export", help="verify a signed export offline against Teller's public "
                                                       "key: no database, no server")
    ave.add_argument("file", help="the export (JSON Lines), or - for stdin")
    ave.add_argument("--public-key", required=True, help="Teller's audit public key (hex, or a file holding it "
                                                         "in hex or PEM), from `teller audit public-key`")
    apk = audit_verbs.add_parser("public-key", help="print the audit public key tenants verify exports with "
                                                    "(made on first use, which needs the KEK)")
    _server_flags(apk)
    apk.add_argument("--all", action="store_true", help="list retired keys too")
    apk.add_argument("--kek-file", type=Path, help="KEK file (or TELLER_KEK_FILE / TELLER_KEK)")
    arot = audit_verbs.add_parser("rotate-key", help="retire the audit key and make a new one")
    _server_flags(arot)
    arot.add_argument("--kek-file", type=Path, help="KEK file (or TELLER_KEK_FILE / TELLER_KEK)")
    for p in (av, ae, ave, apk, arot):
        _output_option(p)
    audit_cmd.set_defaults(fn=cmd_audit)

    keys = sub.add_parser("keys", help="KEK rotation: re-wrap wallet data keys under the current KEK")
    key_verbs = keys.add_subparsers(dest="action", required=True, metavar="VERB", parser_class=_Parser)
    for verb_name, text in (("rewrap", "re-wrap every wallet's data key under the first (current) KEK, online"),
                            ("status", "how many wallets each KEK version still protects")):
        kp = key_verbs.add_parser(verb_name, help=text)
        _server_flags(kp)
        kp.add_argument("--kek-file", type=Path, help="KEK file (or TELLER_KEK_FILE / TELLER_KEK)")
        _output_option(kp)
    keys.set_defaults(fn=cmd_keys)

    pol_cmd = sub.add_parser("policy", help="offline policy tools (no server, no database)")
    pol_verbs = pol_cmd.add_subparsers(dest="action", required=True, metavar="VERB", parser_class=_Parser)
    ptest = pol_verbs.add_parser("test", help="dry-run a policy document against a saved 402: which offer would "
                                              "be paid, or why not (nothing is signed)")
    ptest.add_argument("--policy", required=True, help="the tenant's policy document (JSON file, - for stdin)")
    ptest.add_argument("--wallet-policy", help="a wallet's policy document, applied with the tenant's")
    _dry_run_flags(ptest)
    ptest.add_argument("--used", action="append", metavar="BUDGET=AMOUNT",
                       help="what a tenant budget already holds, in common units (repeatable)")
    ptest.add_argument("--wallet-used", action="append", metavar="BUDGET=AMOUNT", help="the same for wallet budgets")
    ptest.add_argument("--config", type=Path, help="TOML config (for extra x402 v1 network names)")
    _output_option(ptest)
    ptest.set_defaults(fn=cmd_policy_test)

    common = _admin_options()
    admin = sub.add_parser("admin", help="operator calls against a running worker", parents=[common])
    nouns = admin.add_subparsers(dest="noun", required=True, metavar="NOUN", parser_class=_Parser)

    def noun(name: str, text: str) -> argparse._SubParsersAction:
        return nouns.add_parser(name, help=text, parents=[common]).add_subparsers(
            dest="verb", required=True, metavar="VERB", parser_class=_Parser)

    def verb(group: argparse._SubParsersAction, name: str, *args: str, about: str = "",
             **opts: Any) -> argparse.ArgumentParser:
        """A verb with positional ``args``; ``about`` is its help line (a test wants one)."""
        p: argparse.ArgumentParser = group.add_parser(name, help=about, parents=[common])
        for a in args:
            p.add_argument(a)
        p.set_defaults(fn=cmd_admin, verb=name, **opts)
        return p

    tenant = noun("tenant", "tenants: create, list, disable, enable")
    verb(tenant, "create", "name", about="create a tenant")
    verb(tenant, "disable", "tenant_id", about="refuse every call of the tenant's tokens")
    verb(tenant, "enable", "tenant_id", about="undo disable")
    verb(tenant, "list", about="every tenant, with its state and freeze")
    token = noun("token", "a tenant's API tokens: issue, list, rotate, revoke")
    verb(token, "issue", "tenant_id", about="issue a token (shown once)").add_argument("--description", default="")
    verb(token, "list", "tenant_id", about="a tenant's tokens (never their secrets)")
    verb(token, "rotate", "token_id", about="revoke a token and issue its replacement at once")
    verb(token, "revoke", "token_id", about="revoke a token")
    wallet = noun("wallet", "a tenant's wallets: create, import, list, disable")
    verb(wallet, "create", "tenant_id", about="generate a wallet key inside Teller").add_argument("--label", default="")
    imp = verb(wallet, "import", "tenant_id", about="import a private key (from a file or stdin, never argv)")
    imp.add_argument("--key-file", required=True, help="file holding the 0x hex key, or - for stdin")
    imp.add_argument("--label", default="")
    verb(wallet, "list", "tenant_id", about="a tenant's wallets, with state and freeze")
    verb(wallet, "disable", "tenant_id", "wallet_id", about="stop a wallet signing for good (freeze to pause it)")
    pol = noun("policy", "spend policies: set, get, test")
    pset = verb(pol, "set", "tenant_id", about="replace a tenant's (or --wallet's) policy")
    pset.add_argument("--file", help="policy document (JSON), or - for stdin; see docs/reference.md 'Spend policy'")
    pset.add_argument("--wallet", help="set a wallet's policy instead of the tenant's")
    pset.add_argument("--per-payment-max", type=int, help="common units (without --file)")
    pset.add_argument("--daily-budget", type=int, help="common units per UTC day (without --file)")
    pset.add_argument("--allow-unknown-assets", action="store_true", help="(without --file)")
    verb(pol, "get", "tenant_id", about="print the stored policy document").add_argument("--wallet")
    pt = verb(pol, "test", "tenant_id", about="dry-run the tenant's stored policy, freeze and spend against a saved 402")
    pt.add_argument("--wallet", help="the wallet that would pay (its policy and freeze apply too)")
    _dry_run_flags(pt)
    for name in ("freeze", "unfreeze"):
        fz = nouns.add_parser(name, help=f"{name} a tenant or one wallet on every replica", parents=[common])
        fz.add_argument("tenant_id")
        fz.add_argument("--wallet")
        fz.add_argument("--reason", default="", help="recorded in the audit log and shown by tenant/wallet list")
        fz.set_defaults(fn=cmd_admin, verb="set")
    spend = noun("spend", "budgets: current windows, and reports of past spend")
    verb(spend, "show", "tenant_id", about="each budget window: limit, spent, reserved, remaining").add_argument("--wallet")
    rep = verb(spend, "report", "tenant_id", about="payments summed per window, network, asset and state (-o csv for a spreadsheet)")
    rep.add_argument("--since", required=True, help="start, ISO 8601 (2026-11-01 or 2026-11-01T00:00:00Z), UTC")
    rep.add_argument("--until", help="end (exclusive), ISO 8601; default now")
    rep.add_argument("--by", default="day", choices=("hour", "day", "week", "month"), help="window (default day)")
    pay = noun("payment", "signed payments: show, list, void")
    verb(pay, "show", "payment_id", about="one payment record")
    plist = verb(pay, "list", "tenant_id", about="a tenant's payments, newest first")
    plist.add_argument("--state", help="signed, settled, failed, expired or voided")
    _paging(plist, 50)
    verb(pay, "void", "payment_id", about="cancel an unused authorization on chain; release its budget").add_argument("--reason", default="")
    rec = nouns.add_parser("reconcile", help="run one reconciler pass now", parents=[common])
    rec.set_defaults(fn=cmd_admin, verb="run")
    operator = noun("operator", "named operator credentials, each audited by name: create, list, revoke")
    verb(operator, "create", "name", about="create a named operator credential (shown once)")
    verb(operator, "list", about="every operator credential (never their secrets)")
    verb(operator, "revoke", "name", about="revoke an operator credential on every replica")
    aud = noun("audit", "the audit log through the worker")
    tail = verb(aud, "tail", about="newest events as JSON lines, oldest first")
    tail.add_argument("--tenant", help="tenant id")
    tail.add_argument("--action", help="e.g. payment.sign, payment.deny")
    _paging(tail, 20)
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events until interrupted")
    tail.add_argument("--interval", type=float, default=2.0, help="--follow: seconds between polls (default 2)")
    return parser


def _dry_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--challenge", required=True, help="the saved 402: raw HTTP (curl -i) or JSON "
                                                      "{status, headers, body, url}")
    p.add_argument("--url", help="the URL that answered 402 (for host rules; overrides the saved one)")
    p.add_argument("--max-amount", type=int, help="the caller's max_amount, atomic units")
def _json_errors(ns: argparse.Namespace) -> bool:
    """Whether this run logs JSON (so its last word must be JSON too), read as
    leniently as possible: the configuration may be what failed."""
    try:
        return config.load(getattr(ns, "config", None)).log_format == "json"
    except ConfigError:
        return os.environ.get("TELLER_LOG_FORMAT", "").strip() == "json"


def _fail(ns: argparse.Namespace, message: str) -> None:
    """A failure that stops the command: one line on stderr, JSON when JSON logs are on."""
    from teller.observe import redact

    message = redact(" ".join(message.split()))
    if _json_errors(ns):
        import time

        print(json.dumps({"ts": round(time.time(), 3), "level": "ERROR", "logger": "teller", "msg": message},
                         separators=(",", ":")), file=sys.stderr)
    else:
        print(f"teller: {message}", file=sys.stderr)


#: Commands whose failures are start-up failures: one line, never a traceback.
_ONE_LINE = {"serve", "migrate", "config", "keys"}


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    from teller.errors import TellerError as DomainError

    try:
        return int(ns.fn(ns))
    except ConfigError as exc:
        _fail(ns, str(exc))
        return 2
    except InvalidArgument as exc:
        _fail(ns, exc.message)
        return 2
    except DomainError as exc:
        _fail(ns, exc.message)
        return 1
    except OSError as exc:
        _fail(ns, str(exc))
        return 1
    except Exception as exc:
        from teller_client import TellerError as ClientError

        if isinstance(exc, ClientError):
            print(f"teller: {exc}", file=sys.stderr)
            return 1
        if ns.command not in _ONE_LINE:
            raise
        # Not foreseen: still one line (the traceback only at DEBUG), and a failure exit.
        logging.getLogger("teller").debug("start-up failed", exc_info=exc)
        _fail(ns, f"{ns.command} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return 1

