"""`teller admin`: operator calls against a running worker, through the
Python client's AdminClient."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from teller import config
from teller.cli import output
from teller.cli.commands import print_dry_run
from teller.errors import ConfigError, InvalidArgument


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
    return {**d, "created": output.when(d.get("created_at_ms")),
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

    fmt = output.format_of(ns)
    what = (ns.noun, ns.verb)
    if what == ("policy", "set") and not ns.file and ns.per_payment_max is None and ns.daily_budget is None \
            and not ns.allow_unknown_assets:
        # Checked before connecting: an empty document would silently replace the policy.
        raise InvalidArgument("policy set: give --file (a policy document, - for stdin) or at least one of "
                              "--per-payment-max, --daily-budget, --allow-unknown-assets; nothing was changed")
    with _admin_client(ns) as admin:
        if what == ("tenant", "create"):
            t = admin.create_tenant(ns.name)
            output.record(fmt, asdict(t), f"tenant {t.id} {t.name}")
        elif what in (("tenant", "disable"), ("tenant", "enable")):
            t = admin.disable_tenant(ns.tenant_id) if ns.verb == "disable" else admin.enable_tenant(ns.tenant_id)
            output.record(fmt, asdict(t), f"tenant {t.id} is {t.state}")
        elif what == ("tenant", "list"):
            output.rows(fmt, [_frozen_view(asdict(t)) for t in admin.list_tenants()],
                        ["id", "name", "state", "frozen", "frozen_reason", "created"])
        elif what == ("token", "issue"):
            token_id, token = admin.issue_token(ns.tenant_id, ns.description)
            output.record(fmt, {"token_id": token_id, "token": token},
                          f"token id {token_id}\n{token}\n(shown once: Teller keeps only its hash)")
        elif what == ("token", "rotate"):
            token_id, token = admin.rotate_token(ns.token_id)
            output.record(fmt, {"token_id": token_id, "token": token, "revoked_token_id": ns.token_id},
                          f"token id {token_id}\n{token}\n(shown once; token {ns.token_id} is revoked)")
        elif what == ("token", "revoke"):
            admin.revoke_token(ns.token_id)
            output.record(fmt, {"token_id": ns.token_id, "revoked": True}, f"token {ns.token_id} revoked")
        elif what == ("token", "list"):
            output.rows(fmt, [{**asdict(t), "created": output.when(t.created_at_ms),
                               "revoked": output.when(t.revoked_at_ms)} for t in admin.list_tokens(ns.tenant_id)],
                        ["id", "description", "created", "revoked"])
        elif what == ("wallet", "create"):
            w = admin.create_wallet(ns.tenant_id, ns.label)
            output.record(fmt, asdict(w), f"wallet {w.id} {w.address}")
        elif what == ("wallet", "import"):
            # Keys come from a file or stdin, never argv (visible in ps).
            key = (sys.stdin.read() if ns.key_file == "-" else Path(ns.key_file).read_text()).strip()
            w = admin.import_wallet(ns.tenant_id, key, ns.label)
            output.record(fmt, asdict(w), f"wallet {w.id} {w.address}")
        elif what == ("wallet", "disable"):
            w = admin.disable_wallet(ns.tenant_id, ns.wallet_id)
            output.record(fmt, asdict(w), f"wallet {w.id} is {w.state}")
        elif what == ("wallet", "list"):
            output.rows(fmt, [_frozen_view(asdict(w)) for w in admin.list_wallets(ns.tenant_id)],
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
            output.record(fmt, {"tenant_id": ns.tenant_id, "wallet_id": ns.wallet or "", "frozen": frozen,
                                "reason": ns.reason}, f"{target} {'frozen' if frozen else 'unfrozen'}")
        elif what == ("spend", "show"):
            output.rows(fmt, [asdict(w) for w in admin.spend(ns.tenant_id, wallet_id=ns.wallet or "")],
                        ["scope", "window", "kind", "limit", "spent", "reserved", "remaining"])
        elif what == ("spend", "report"):
            _spend_report(admin, ns)
        elif what == ("payment", "show"):
            p = admin.get_payment(ns.payment_id)
            print(json.dumps(asdict(p), indent=2))
        elif what == ("payment", "list"):
            rows, token = _pages(lambda **page: admin.list_payments(ns.tenant_id, state=ns.state or "", **page), ns)
            output.rows(fmt, [asdict(p) for p in rows],
                        ["id", "state", "amount", "network", "pay_to", "tx_hash", "released", "state_reason"],
                        key="payments", next_page_token=token)
        elif what == ("payment", "void"):
            p = admin.void_payment(ns.payment_id, ns.reason)
            output.record(fmt, asdict(p),
                          f"payment {p.id} {p.state} (cancelAuthorization {p.tx_hash}); its budget is released")
        elif what == ("channel", "list"):
            rows, token = _pages(lambda **page: admin.list_channels(ns.tenant, state=ns.state or "", **page), ns)
            output.rows(fmt, [_channel_view(asdict(c)) for c in rows],
                        ["id", "state", "deposit", "spent", "remaining", "network", "payee", "wallet_id", "created"],
                        key="channels", next_page_token=token)
        elif what == ("channel", "show"):
            _channel_show(admin, ns, fmt)
        elif what == ("channel", "close"):
            c = admin.close_channel(ns.tenant, ns.channel, force=ns.force)
            when = f"withdraw from chain time {c.grace_end}" if c.grace_end else "grace end not read yet"
            output.record(fmt, asdict(c), f"channel {c.id} closing: requestClose {c.tx_hash} ({when}; "
                                          "the reconciler withdraws)")
        elif what == ("reconcile", "run"):
            transitions, errors = admin.reconcile()
            print(json.dumps({"transitions": transitions, "errors": errors}, indent=2))
            return 1 if errors else 0
        elif what == ("operator", "create"):
            op, credential = admin.create_operator(ns.name)
            output.record(fmt, {**asdict(op), "credential": credential},
                          f"operator {op.id} {op.name}\n{credential}\n(shown once: Teller keeps only its hash)")
        elif what == ("operator", "list"):
            output.rows(fmt, [{**asdict(o), "created": output.when(o.created_at_ms),
                               "revoked": output.when(o.revoked_at_ms)} for o in admin.list_operators()],
                        ["id", "name", "created_by", "created", "revoked"])
        elif what == ("operator", "revoke"):
            op = admin.revoke_operator(ns.name)
            output.record(fmt, asdict(op), f"operator {op.name} revoked")
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


def _channel_view(d: dict[str, Any]) -> dict[str, Any]:
    return {**d, "created": output.when(d.get("created_at_ms")), "updated": output.when(d.get("updated_at_ms"))}


#: The channel's fields `channel show` prints above its vouchers, in this order.
_CHANNEL_FIELDS = ("id", "state", "deposit", "spent", "remaining", "network", "escrow", "channel_id", "token",
                   "payee", "wallet_id", "created", "updated")


def _channel_show(admin: Any, ns: argparse.Namespace, fmt: str) -> None:
    """The channel, then its vouchers (a page, or every page with --all)."""
    first: list[Any] = []

    def fetch(**page: Any) -> tuple[list[Any], str]:
        got = admin.get_channel(ns.tenant, ns.channel, **page)
        first.append(got.channel)
        return list(got.vouchers), got.next_page_token

    vouchers, token = _pages(fetch, ns)
    channel = _channel_view(asdict(first[0]))
    rows = [{**asdict(v), "created": output.when(v.created_at_ms)} for v in vouchers]
    if fmt == "json":
        print(json.dumps({"channel": asdict(first[0]), "vouchers": [asdict(v) for v in vouchers],
                          "next_page_token": token}, indent=2, sort_keys=True))
        return
    if fmt == "table":
        width = max(len(f) for f in _CHANNEL_FIELDS)
        for f in _CHANNEL_FIELDS:
            print(f"{f.upper().ljust(width)}  {channel[f]}".rstrip())
        print(f"\n{len(vouchers)} voucher(s){' on this page' if token else ''}, highest total first:")
    output.rows(fmt, rows, ["cumulative", "created", "signature"], key="vouchers", next_page_token=token)


def _open_channels(admin: Any, tenant_id: str) -> int:
    """How many channels the tenant holds that are not closed (what max_open_channels counts)."""
    count, token = 0, ""
    while True:
        page, token = admin.list_channels(tenant_id, page_size=500, page_token=token)
        count += sum(1 for c in page if c.state != "closed")
        if not token:
            return count


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
        max_amount=ns.max_amount, networks=config.load(_opt(ns, "config")).networks, now=datetime.now(UTC),
        open_channels=_open_channels(admin, ns.tenant_id))
    return print_dry_run(ns, result)


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
    output.rows(output.format_of(ns), [{**asdict(ln), "window_start": output.when(ln.window_start_ms),
                                        "window_end": output.when(ln.window_end_ms)} for ln in lines],
                ["window_start", "window_end", "network", "asset", "state", "payments", "amount"])
