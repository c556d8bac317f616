"""The `teller` command: serve, migrate, demo, and admin calls for operators."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from teller import config
from teller.errors import ConfigError


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
    from teller import audit_tools

    if ns.action == "verify" and ns.file:
        with (sys.stdin if ns.file == "-" else open(ns.file, encoding="utf-8")) as fh:
            problems = audit_tools.verify_file(fh)
    else:
        from teller.db import Database, make_engine

        db = Database(make_engine(_settings(ns).resolved_database_url(), 2))
        try:
            if ns.action == "export":
                audit_tools.export(db, ns.tenant, sys.stdout)
                return 0
            problems = audit_tools.verify_database(db, ns.tenant)
        finally:
            db.engine.dispose()
    for p in problems:
        print(p)
    print("audit log verified: no problems" if not problems else f"{len(problems)} problem(s)",
          file=sys.stderr if problems else sys.stdout)
    return 1 if problems else 0


def cmd_keys(ns: argparse.Namespace) -> int:
    from teller import rotation
    from teller.app import kek_provider
    from teller.db import Database, make_engine

    settings = _settings(ns, kek_file=ns.kek_file)
    db = Database(make_engine(settings.resolved_database_url(), 2))
    try:
        if ns.action == "rewrap":
            result = rotation.rewrap_all(db, kek_provider(settings))
            print(f"re-wrapped {result.rewrapped} wallet key(s) under KEK {result.current_version!r}; "
                  f"{result.already_current} already were")
        counts = rotation.status(db)
        print("wallets per KEK version: " + (", ".join(f"{v}={n}" for v, n in sorted(counts.items())) or "none"))
    finally:
        db.engine.dispose()
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from teller.demo import run

    return run(Path(ns.data_dir) if ns.data_dir else None)


# --- admin -----------------------------------------------------------------

def _admin_client(ns: argparse.Namespace):  # type: ignore[no-untyped-def]
    from teller_client import AdminClient

    token = ns.token or os.environ.get("TELLER_ADMIN_TOKEN", "")
    if not token:
        dev_token = Path(ns.data_dir or ".teller") / "admin-token"
        if dev_token.exists():
            token = dev_token.read_text().strip()
    if not token:
        raise ConfigError("no operator credential: pass --token, set TELLER_ADMIN_TOKEN, or use a dev data dir")
    credentials = None
    if ns.tls_ca:
        import grpc

        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(ns.tls_ca).read_bytes(),
            private_key=Path(ns.tls_key).read_bytes() if ns.tls_key else None,
            certificate_chain=Path(ns.tls_cert).read_bytes() if ns.tls_cert else None)
    return AdminClient(ns.target, token, credentials=credentials)


def _print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def cmd_admin(ns: argparse.Namespace) -> int:
    from dataclasses import asdict

    from teller_client import Policy

    with _admin_client(ns) as admin:
        what = (ns.noun, ns.verb)
        if what == ("tenant", "create"):
            t = admin.create_tenant(ns.name)
            print(f"tenant {t.id} {t.name}")
        elif what == ("tenant", "disable"):
            t = admin.disable_tenant(ns.tenant_id)
            print(f"tenant {t.id} is {t.state}")
        elif what == ("tenant", "list"):
            _print_table([asdict(t) for t in admin.list_tenants()], ["id", "name", "state"])
        elif what == ("token", "issue"):
            token_id, token = admin.issue_token(ns.tenant_id, ns.description)
            print(f"token id {token_id}\n{token}\n(shown once: Teller keeps only its hash)")
        elif what == ("token", "revoke"):
            admin.revoke_token(ns.token_id)
            print(f"token {ns.token_id} revoked")
        elif what == ("wallet", "create"):
            w = admin.create_wallet(ns.tenant_id, ns.label)
            print(f"wallet {w.id} {w.address}")
        elif what == ("wallet", "import"):
            # Keys come from a file or stdin, never argv (visible in ps).
            key = (sys.stdin.read() if ns.key_file == "-" else Path(ns.key_file).read_text()).strip()
            w = admin.import_wallet(ns.tenant_id, key, ns.label)
            print(f"wallet {w.id} {w.address}")
        elif what == ("wallet", "list"):
            _print_table([asdict(w) for w in admin.list_wallets(ns.tenant_id)], ["id", "address", "state", "label"])
        elif what == ("policy", "set"):
            if ns.file:
                document: Any = sys.stdin.read() if ns.file == "-" else Path(ns.file).read_text()
            else:
                document = Policy(per_payment_max=ns.per_payment_max, daily_budget=ns.daily_budget,
                                  allow_unknown_assets=ns.allow_unknown_assets)
            print(json.dumps(admin.set_policy(ns.tenant_id, document, wallet_id=ns.wallet or ""), indent=2))
        elif what == ("policy", "get"):
            print(json.dumps(admin.get_policy(ns.tenant_id, wallet_id=ns.wallet or ""), indent=2))
        elif what in (("freeze", "set"), ("unfreeze", "set")):
            frozen = ns.noun == "freeze"
            admin.set_frozen(ns.tenant_id, frozen, wallet_id=ns.wallet or "", reason=ns.reason)
            target = f"wallet {ns.wallet}" if ns.wallet else f"tenant {ns.tenant_id}"
            print(f"{target} {'frozen' if frozen else 'unfrozen'}")
        elif what == ("spend", "show"):
            _print_table([asdict(w) for w in admin.spend(ns.tenant_id, wallet_id=ns.wallet or "")],
                         ["scope", "window", "kind", "limit", "spent", "reserved", "remaining"])
        elif what == ("payment", "show"):
            p = admin.get_payment(ns.payment_id)
            print(json.dumps(asdict(p), indent=2))
        elif what == ("payment", "list"):
            rows, _ = admin.list_payments(ns.tenant_id, state=ns.state or "", page_size=ns.limit)
            _print_table([asdict(p) for p in rows],
                         ["id", "state", "amount", "network", "pay_to", "tx_hash", "released", "state_reason"])
        elif what == ("payment", "void"):
            p = admin.void_payment(ns.payment_id, ns.reason)
            print(f"payment {p.id} {p.state} (cancelAuthorization {p.tx_hash}); its budget is released")
        elif what == ("reconcile", "run"):
            transitions, errors = admin.reconcile()
            print(json.dumps({"transitions": transitions, "errors": errors}, indent=2))
            return 1 if errors else 0
        elif what == ("operator", "create"):
            op, credential = admin.create_operator(ns.name)
            print(f"operator {op.id} {op.name}\n{credential}\n(shown once: Teller keeps only its hash)")
        elif what == ("operator", "list"):
            _print_table([{**asdict(o), "revoked_at_ms": o.revoked_at_ms or ""} for o in admin.list_operators()],
                         ["id", "name", "created_by", "created_at_ms", "revoked_at_ms"])
        elif what == ("operator", "revoke"):
            op = admin.revoke_operator(ns.name)
            print(f"operator {op.name} revoked")
        elif what == ("audit", "tail"):
            events, _ = admin.audit_events(tenant_id=ns.tenant or "", action=ns.action or "", page_size=ns.limit)
            for e in reversed(events):
                print(json.dumps(asdict(e), sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teller", description="Server-wallet worker for HTTP 402 payments")
    sub = parser.add_subparsers(dest="command", required=True)

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

    config_cmd = sub.add_parser("config", help="check a configuration without serving")
    config_verbs = config_cmd.add_subparsers(dest="action", required=True)
    check = config_verbs.add_parser("check", help="one line per problem; exit 1 when there is any")
    _server_flags(check)
    check.add_argument("--listen", help="host:port to bind")
    check.add_argument("--kek-file", help="KEK file (or TELLER_KEK_FILE / TELLER_KEK)")
    check.add_argument("--dev", action="store_true", help="check as `serve --dev` would run")
    check.set_defaults(fn=cmd_config_check)

    demo = sub.add_parser("demo", help="sign a real x402 challenge end to end on the embedded default")
    demo.add_argument("--data-dir", help="keep the demo's data here (default: a temporary dir)")
    demo.set_defaults(fn=cmd_demo)

    audit_cmd = sub.add_parser("audit", help="verify the audit log's hash chains, or export a tenant's log")
    audit_verbs = audit_cmd.add_subparsers(dest="action", required=True)
    av = audit_verbs.add_parser("verify", help="check every chain (or --tenant's, or an export --file)")
    _server_flags(av)
    av.add_argument("--tenant", help="only this tenant's chain")
    av.add_argument("--file", help="verify a JSON Lines export instead of the database (- for stdin)")
    ae = audit_verbs.add_parser("export", help="a tenant's audit log as JSON Lines, on stdout")
    _server_flags(ae)
    ae.add_argument("--tenant", required=True)
    audit_cmd.set_defaults(fn=cmd_audit)

    keys = sub.add_parser("keys", help="KEK rotation: re-wrap wallet data keys under the current KEK")
    key_verbs = keys.add_subparsers(dest="action", required=True)
    for verb_name, text in (("rewrap", "re-wrap every wallet's data key under the first (current) KEK, online"),
                            ("status", "how many wallets each KEK version still protects")):
        kp = key_verbs.add_parser(verb_name, help=text)
        _server_flags(kp)
        kp.add_argument("--kek-file", type=Path, help="KEK file (or TELLER_KEK_FILE / TELLER_KEK)")
    keys.set_defaults(fn=cmd_keys)

    admin = sub.add_parser("admin", help="operator calls against a running worker")
    admin.add_argument("--target", default=os.environ.get("TELLER_TARGET", "127.0.0.1:7402"))
    admin.add_argument("--token", help="operator credential (or TELLER_ADMIN_TOKEN)")
    admin.add_argument("--data-dir", help="dev data dir holding admin-token (default .teller)")
    admin.add_argument("--tls-ca", help="PEM CA that signed the server's certificate (enables TLS)")
    admin.add_argument("--tls-cert", help="operator client certificate (mTLS, subject CN 'operator')")
    admin.add_argument("--tls-key", help="key of --tls-cert")
    nouns = admin.add_subparsers(dest="noun", required=True)

    def verb(noun: argparse._SubParsersAction, name: str, *args: str, **opts: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = noun.add_parser(name)
        for a in args:
            p.add_argument(a)
        p.set_defaults(fn=cmd_admin, verb=name, **opts)
        return p

    tenant = nouns.add_parser("tenant").add_subparsers(dest="verb", required=True)
    verb(tenant, "create", "name")
    verb(tenant, "disable", "tenant_id")
    verb(tenant, "list")
    token = nouns.add_parser("token").add_subparsers(dest="verb", required=True)
    verb(token, "issue", "tenant_id").add_argument("--description", default="")
    verb(token, "revoke", "token_id")
    wallet = nouns.add_parser("wallet").add_subparsers(dest="verb", required=True)
    verb(wallet, "create", "tenant_id").add_argument("--label", default="")
    imp = verb(wallet, "import", "tenant_id")
    imp.add_argument("--key-file", required=True, help="file holding the 0x hex key, or - for stdin")
    imp.add_argument("--label", default="")
    verb(wallet, "list", "tenant_id")
    pol = nouns.add_parser("policy").add_subparsers(dest="verb", required=True)
    pset = verb(pol, "set", "tenant_id")
    pset.add_argument("--file", help="policy document (JSON), or - for stdin; see README 'Spend policy'")
    pset.add_argument("--wallet", help="set a wallet's policy instead of the tenant's")
    pset.add_argument("--per-payment-max", type=int, help="common units (without --file)")
    pset.add_argument("--daily-budget", type=int, help="common units per UTC day (without --file)")
    pset.add_argument("--allow-unknown-assets", action="store_true", help="(without --file)")
    verb(pol, "get", "tenant_id").add_argument("--wallet")
    for noun in ("freeze", "unfreeze"):
        fz = nouns.add_parser(noun, help=f"{noun} a tenant or one wallet on every replica")
        fz.add_argument("tenant_id")
        fz.add_argument("--wallet")
        fz.add_argument("--reason", default="")
        fz.set_defaults(fn=cmd_admin, verb="set")
    spend = nouns.add_parser("spend").add_subparsers(dest="verb", required=True)
    verb(spend, "show", "tenant_id").add_argument("--wallet")
    pay = nouns.add_parser("payment").add_subparsers(dest="verb", required=True)
    verb(pay, "show", "payment_id")
    plist = verb(pay, "list", "tenant_id")
    plist.add_argument("--state", help="signed, settled, failed, expired or voided")
    plist.add_argument("--limit", type=int, default=50)
    verb(pay, "void", "payment_id").add_argument("--reason", default="")
    rec = nouns.add_parser("reconcile", help="run one reconciler pass now")
    rec.set_defaults(fn=cmd_admin, verb="run")
    operator = nouns.add_parser("operator", help="named operator credentials, each audited by name").add_subparsers(
        dest="verb", required=True)
    verb(operator, "create", "name")
    verb(operator, "list")
    verb(operator, "revoke", "name")
    aud = nouns.add_parser("audit").add_subparsers(dest="verb", required=True)
    tail = verb(aud, "tail")
    tail.add_argument("--tenant", help="tenant id")
    tail.add_argument("--action", help="e.g. payment.sign, payment.deny")
    tail.add_argument("--limit", type=int, default=20)
    return parser


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
    except DomainError as exc:
        _fail(ns, exc.message)
        return 1
    except Exception as exc:
        from teller_client import TellerError

        if isinstance(exc, TellerError):
            print(f"teller: {exc}", file=sys.stderr)
            return 1
        if ns.command not in _ONE_LINE:
            raise
        # Not foreseen: still one line (the traceback only at DEBUG), and a failure exit.
        logging.getLogger("teller").debug("start-up failed", exc_info=exc)
        _fail(ns, f"{ns.command} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
