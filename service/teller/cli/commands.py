"""The `teller` commands that run on this host: serve, migrate, config check,
audit, keys, health, demo and the offline policy test."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from teller import config
from teller.cli import output
from teller.errors import ConfigError, InvalidArgument


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

    fmt = output.format_of(ns)
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
                output.record(fmt, asdict(new), f"audit key {new.id} is current: {new.public_key}\n"
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
                    output.rows(fmt, [{**asdict(k), "created": output.when(k.created_ms),
                                       "retired": output.when(k.retired_ms)} for k in shown],
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

    fmt = output.format_of(ns)
    settings = _settings(ns, kek_file=ns.kek_file)
    db = Database(make_engine(settings.resolved_database_url(), 2))
    try:
        doc: dict[str, Any] = {}
        if ns.action == "rewrap":
            result = rotation.rewrap_all(db, kek_provider(settings))
            doc.update(rewrapped=result.rewrapped, already_current=result.already_current,
                       current_version=result.current_version)
            if fmt == "table":
                print(f"re-wrapped {result.rewrapped} wallet key(s) under KEK {result.current_version!r}; "
                      f"{result.already_current} already were")
        counts = rotation.status(db)
        doc["wallets_per_kek_version"] = dict(sorted(counts.items()))
        if fmt == "json":
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

def print_dry_run(ns: argparse.Namespace, result: Any) -> int:
    """A dry run's offers and decision (``policy test`` here and in ``admin``); its exit code."""
    doc = result.to_json()
    fmt = output.format_of(ns)
    if fmt == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        output.rows(fmt, [{**o, "decision": "allow" if o["allowed"] else o["reason"]} for o in doc["offers"]],
                    ["protocol", "scheme", "network", "asset", "amount", "pay_to", "decision"])
        if fmt == "table":
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
        max_amount=ns.max_amount, networks=config.load(ns.config).networks, now=datetime.now(UTC),
        open_channels=ns.open_channels)
    return print_dry_run(ns, result)
