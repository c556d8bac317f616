"""The `teller` command line: every command, flag and help text, and the
function each command runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from teller.channels.rules import ChannelState
from teller.cli import output
from teller.cli.admin import cmd_admin
from teller.cli.commands import (
    cmd_audit,
    cmd_config_check,
    cmd_demo,
    cmd_health,
    cmd_keys,
    cmd_migrate,
    cmd_policy_test,
    cmd_serve,
)


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (or TELLER_CONFIG)")
    p.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in the data dir)")
    p.add_argument("--data-dir", help="data directory for the embedded database (default .teller)")


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
    p.add_argument("-o", "--output", choices=output.FORMATS, default=argparse.SUPPRESS,
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
    ptest.add_argument("--open-channels", type=int, metavar="N",
                       help="MPP session channels the tenant holds that are not closed (judges max_open_channels)")
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
    chan = noun("channel", "MPP session channels: list, show (deposit, spent, state, vouchers), close --force")
    clist = verb(chan, "list", about="a tenant's channels, newest first: deposit, spent, remaining, state")
    clist.add_argument("--tenant", required=True, help="tenant id")
    clist.add_argument("--state", choices=[s.value for s in ChannelState], help="only channels in this state")
    _paging(clist, 50)
    cshow = verb(chan, "show", about="one channel and its vouchers, highest total first")
    cshow.add_argument("channel", metavar="ID", help="the channel's id (the ID column of `channel list`)")
    cshow.add_argument("--tenant", required=True, help="the channel's tenant id")
    _paging(cshow, 50)
    cclose = verb(chan, "close", about="close a channel by force: the wallet's requestClose now, withdraw by the "
                                       "reconciler after the grace period (its fees count against the budgets)")
    cclose.add_argument("channel", metavar="ID", help="the channel's id (the ID column of `channel list`)")
    cclose.add_argument("--tenant", required=True, help="the channel's tenant id")
    cclose.add_argument("--force", action="store_true", required=True,
                        help="required: operators close without the payee's server (TIP-1034 forced close)")
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
