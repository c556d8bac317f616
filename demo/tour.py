"""What the demo shows: a backend service buying API calls through Teller.

Everything runs on loopback: two local chains, a paid API built with the
official x402 and MPP server code, and Teller (``teller serve --dev``). The
backend holds no key; it calls ``Pay`` with the Python client, and Teller checks
the tenant's policy, signs with the wallet it keeps, sends the paid request and
checks the settlement on chain.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from demo.paid_api import PaidApi, Prices, paid_api
from demo.stack import Chains, TellerProcess, chains, fresh_address, teller
from teller_client import AdminClient, Asset, LimitExceeded, PaidResponse, Policy, TellerClient
from tests.support.mpp_live import PATH_USD

PRICES = Prices(weather=10_000, forecast=20_000, report=30_000)  # 0.01, 0.02, 0.03
DAILY_BUDGET = 50_000  # 0.05: room for /weather and /forecast (and its fee), not then for /report
FUNDING = 1_000_000  # 1.00 of each token for the wallet


def usd(base_units: int) -> str:
    return f"{base_units / 10**6:.6f}"


class Tour:
    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.started = time.monotonic()

    def step(self, title: str) -> None:
        self.out(f"\n== {title}  [{time.monotonic() - self.started:4.1f} s]")

    def balances(self, label: str, read: Callable[[str], int], holders: dict[str, str],
                 before: dict[str, int] | None = None, unit: str = "") -> dict[str, int]:
        now = {name: read(address) for name, address in holders.items()}
        for name, value in now.items():
            if before is None:
                self.out(f"  {label:<7} {name:<7} {usd(value)} {unit}")
            else:
                moved = value - before[name]
                change = f"{'+' if moved > 0 else '-'}{usd(abs(moved))}" if moved else "unchanged"
                self.out(f"  {label:<7} {name:<7} {usd(before[name])} -> {usd(value)} ({change}) {unit}")
        return now


def run(out: Callable[[str], None] = print) -> int:
    tour = Tour(out)
    out("Teller demo: a backend service buys API calls through Teller, which holds the wallet,")
    out("checks the tenant's policy, signs, and follows each payment to the chain. All on loopback.")
    with contextlib.ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="teller-demo-")))
        tour.step("Local chains (anvil on loopback; throwaway, anvil's public dev keys)")
        c = stack.enter_context(chains())
        out(f"  x402 chain   {c.evm.network} {c.evm.rpc_url}  token TUSD {c.evm.token.address} (EIP-3009)")
        out(f"  Tempo chain  {c.tempo.network} {c.tempo.rpc_url}  token pathUSD {PATH_USD}")

        tour.step("The paid API (x402 SDK middleware + facilitator; pympp's MPP server)")
        api = stack.enter_context(paid_api(c.evm, c.tempo, PRICES, fresh_address(), fresh_address(),
                                           secret=secrets.token_urlsafe(32)))
        out(f"  GET {api.base}/weather   x402 exact      {usd(PRICES.weather)} TUSD  -> {api.x402_payee}")
        out(f"  GET {api.base}/forecast  MPP tempo charge {usd(PRICES.forecast)} pathUSD -> {api.mpp_recipient}")
        out(f"  GET {api.base}/report    x402 exact      {usd(PRICES.report)} TUSD")

        tour.step("Teller (teller serve --dev: SQLite in a temporary directory)")
        proc = stack.enter_context(teller(data_dir, {c.evm.network: c.evm.rpc_url, c.tempo.network: c.tempo.rpc_url}))
        out(f"  listening on {proc.target}, database {data_dir / 'teller.db'}")
        return _backend(tour, c, api, proc, stack)
    return 1  # not reached: the stack either returns or raises


def _backend(tour: Tour, c: Chains, api: PaidApi, proc: TellerProcess, stack: contextlib.ExitStack) -> int:
    out = tour.out
    tour.step("Operator: a tenant, its token and wallet, and its spend policy (AdminService)")
    admin = stack.enter_context(AdminClient(proc.target, proc.admin_token))
    tenant = admin.create_tenant(f"demo-{secrets.token_hex(3)}")
    _, token = admin.issue_token(tenant.id, "the demo backend")
    wallet = admin.create_wallet(tenant.id, "api spend")
    admin.set_policy(tenant.id, Policy(
        per_payment_max=PRICES.report, daily_budget=DAILY_BUDGET,
        assets=(Asset(c.evm.network, c.evm.token.address, 6), Asset(c.tempo.network, PATH_USD, 6))))
    out(f"  tenant {tenant.name}, wallet {wallet.address} (key made and sealed inside Teller)")
    out(f"  policy: per payment <= {usd(PRICES.report)}, day budget {usd(DAILY_BUDGET)}, assets TUSD and pathUSD")
    c.evm.mint(wallet.address, FUNDING)
    c.tempo.fund(wallet.address, FUNDING)
    out(f"  funded the wallet with {usd(FUNDING)} TUSD and {usd(FUNDING)} pathUSD")

    client = stack.enter_context(TellerClient(proc.target, token))
    evm_holders = {"wallet": wallet.address, "payee": api.x402_payee}
    tempo_holders = {"wallet": wallet.address, "payee": api.mpp_recipient}

    tour.step("Backend: teller.pay(GET /weather), paid with x402")
    before = tour.balances("before", c.evm.balance, evm_holders, unit="TUSD")
    r = client.pay(f"{api.base}/weather", wallet_id=wallet.id, idempotency_key="order-1")
    _show_paid(tour, r, client)
    tour.balances("after", c.evm.balance, evm_holders, before, unit="TUSD")

    tour.step("Backend: teller.pay(GET /forecast), paid with MPP (Tempo)")
    before = tour.balances("before", c.tempo.balance, tempo_holders, unit="pathUSD")
    r = client.pay(f"{api.base}/forecast", wallet_id=wallet.id, idempotency_key="order-2")
    _show_paid(tour, r, client)
    after = tour.balances("after", c.tempo.balance, tempo_holders, before, unit="pathUSD")
    fee = before["wallet"] - after["wallet"] - PRICES.forecast
    out(f"  (the wallet also paid the Tempo fee, {usd(fee)} pathUSD; it counts against the budget too)")
    for w in client.spend():
        out(f"  budget {w.window}: limit {usd(w.limit)}, settled {usd(w.spent)}, reserved {usd(w.reserved)}, "
            f"left {usd(w.remaining)}")

    tour.step("Backend: teller.pay(GET /report), over the day's budget")
    before = tour.balances("before", c.evm.balance, evm_holders, unit="TUSD")
    denied = 0
    try:
        client.pay(f"{api.base}/report", wallet_id=wallet.id, idempotency_key="order-3")
        out("  paid: NOT EXPECTED, the budget should have refused it")
    except LimitExceeded as refusal:
        denied = 1
        out(f"  denied   {type(refusal).__name__} ({refusal.code.name}) reason={refusal.reason} "
            f"limit={usd(refusal.limit or 0)} remaining={usd(refusal.remaining or 0)} price={usd(PRICES.report)}")
        out("  nothing was signed; the backend got an error it can act on")
    tour.balances("after", c.evm.balance, evm_holders, before, unit="TUSD")

    tour.step("Audit trail (hash-chained, one row per decision; oldest first)")
    events, _ = admin.audit_events(tenant_id=tenant.id, page_size=100)
    for e in reversed(events):
        out(f"  #{e.id:<3} {e.action:<18} {e.outcome:<7} {e.reason or '-':<22} "
            f"{usd(int(e.amount)) if e.amount else '':>9} {e.payment_id[:12]}")
    out("\nDone: two payments settled on chain, one refused by policy; no key ever left Teller.")
    return 0 if denied else 1


def _show_paid(tour: Tour, r: PaidResponse, client: TellerClient) -> None:
    out = tour.out
    out(f"  <- {r.status} {json.dumps(json.loads(r.body))}")
    p = r.payment
    if p is None:
        out("  no payment was made")
        return
    out(f"  payment  {p.id} {p.protocol} {usd(p.amount)} to {p.pay_to} sent as {r.payment_header}")
    # The payment's own audit rows tell its story: signed under the policy, the
    # server's receipt reported, then the settlement found on chain.
    events, _ = client.audit_events(page_size=100)
    states = ["signed"]
    for e in reversed(events):
        if e.payment_id == p.id and e.action == "payment.settled":
            details = json.loads(e.details_json)
            states.append(details["to"])
            out(f"  state    {' -> '.join(states)}  (tx {p.tx_hash[:18]}... in block {details['block']})")
    if len(states) == 1:
        out(f"  state    {p.state}")
