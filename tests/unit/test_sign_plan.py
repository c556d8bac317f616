"""The Sign batch plan without a database: ``Planner.plan`` driven by a scripted
driver that answers its requests from memory and records what it was asked
(the drivers themselves are exercised on every database by test_batching.py);
and the retry rule ``commit`` and ``commit_async`` share."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from teller import callers, idempotency, offers, signing
from teller.callers import Caller
from teller.chain import ChainReader
from teller.errors import AlreadyExists, LimitExceeded, NotFound, Unauthenticated, Unavailable
from teller.schemes.proofs import Proofs
from teller.sign import batch_io
from teller.sign.batch_io import (
    FindNonce,
    Measure,
    PaymentRow,
    Read,
    ReleaseKey,
    Snapshot,
    TenantRow,
    TokenRow,
    WalletRow,
    Windows,
    Write,
)
from teller.sign.call import Call, SignResult, Verdict, sign_input
from teller.sign.plan import Planner
from teller.sign.service import _transactions
from teller.spend.ledger import WindowUse
from teller.spend.parse import to_document
from teller.spend.rules import Asset, Budget, Policy
from teller.vault import LocalKekProvider, Vault
from teller.vault.envelope import associated_data, seal
from teller.vault.signer import address_of
from testbed.x402_server import USDC_BASE_SEPOLIA, sdk_v2_challenge

NOW = 1_800_000_000.0
TENANT, OTHER = "tenant-a", "tenant-b"
KEK = LocalKekProvider([("k1", bytes(range(32)))])
SECRET = "s3cret"


def _wallet(wallet_id: str, tenant_id: str, tenant_policy: Policy) -> WalletRow:
    key = os.urandom(32)
    address = address_of(key)
    sealed = seal(key, associated_data(tenant_id, wallet_id, address), KEK)
    return WalletRow(wallet_id, tenant_id, address, "active", False, sealed.kek_version, sealed.wrapped_data_key,
                     sealed.ciphertext, json.dumps(to_document(tenant_policy)), None)


def _policy(**fields: object) -> Policy:
    usdc = Asset("eip155:84532", USDC_BASE_SEPOLIA.lower(), 6)
    return Policy(assets=(usdc,), **fields)  # type: ignore[arg-type]


class Script:
    """A ``batch_io.Driver`` over rows in memory: the window sums it reports are
    ``used`` (per scope key and budget name) plus nothing else; what it was
    asked is in ``asked``, what the batch wrote in ``written``."""

    def __init__(self, wallets: Sequence[WalletRow], *, used: dict[tuple[str, str], dict[str, int]] | None = None,
                 claims: Sequence[PaymentRow] = ()) -> None:
        self.wallets = {w.id: w for w in wallets}
        self.used = used or {}
        self.claims = {(p.tenant_id, p.idempotency_key or ""): p for p in claims}
        self.asked: list[batch_io.Request[object]] = []
        self.written: Write | None = None

    def _windows(self, request: Measure) -> Windows:
        return {key: {b.name: WindowUse(self.used.get(key, {}).get(b.name, 0), 0) for b in budgets}
                for key, budgets in request.scopes.items()}

    def read(self, request: Read) -> Snapshot:
        self.asked.append(request)
        tenants = {t: TenantRow(t, "active", False) for t in request.tenant_ids}
        tokens = {f"tok-{t}": TokenRow(f"tok-{t}", t, callers.hash_secret(SECRET), None) for t in (TENANT, OTHER)}
        return Snapshot(tenants, {t: (0, "0" * 64) for t in tenants},
                        {w: self.wallets[w] for w in request.wallet_ids if w in self.wallets},
                        {t: tokens[t] for t in request.token_ids if t in tokens},
                        {(t, k): p for (t, k), p in self.claims.items() if t in request.tenant_ids and k in request.keys},
                        self._windows(request.measure) if request.measure is not None else None)

    def measure(self, request: Measure) -> Windows:
        self.asked.append(request)
        return self._windows(request)

    def release_key(self, request: ReleaseKey) -> None:
        self.asked.append(request)

    def find_nonce(self, request: FindNonce) -> PaymentRow | None:
        self.asked.append(request)
        return None

    def write(self, request: Write) -> None:
        self.asked.append(request)
        self.written = request


@pytest.fixture(scope="module")
def challenge():
    return sdk_v2_challenge(amount="1000")


@pytest.fixture
def planner() -> Planner:
    return Planner(Proofs(Vault(KEK), ChainReader({}), lambda: NOW, 86_400_000, 3600), lambda: NOW)


def _call(chall, wallet: WalletRow, *, tenant_id: str = TENANT, key: str = "", secret: str = SECRET) -> Call:
    req = sign_input(status=402, headers=tuple(chall.headers), body=chall.body, url=chall.url, method="GET",
                     wallet_id=wallet.id, max_amount="", idempotency_key=key)
    collected = offers.collect(req.headers, req.body, networks={}, max_bytes=256 * 1024,
                               now=datetime.fromtimestamp(NOW, UTC))
    request_hash = idempotency.purchase_hash(wallet_id=req.wallet_id, url=req.url, method=req.method,
                                             cap=req.max_amount, collected=collected)
    return Call(Caller(tenant_id, f"tok-{tenant_id}"), req, secret, collected, request_hash,
                signing.Prepared({}, {}), None)


def _plan(planner: Planner, script: Script, calls: Sequence[Call]) -> list[Verdict]:
    return batch_io.drive(planner.plan(calls), script)


def _events(script: Script) -> list[tuple[str, str, str]]:
    assert script.written is not None
    return [(e["tenant_id"], e["action"], e["reason"]) for e in script.written.events]


def test_the_calls_of_a_batch_spend_its_budget_in_order_and_the_one_past_it_is_denied(planner, challenge):
    wallet = _wallet("w1", TENANT, _policy(budgets=(Budget("daily", 2500, calendar="day"),)))
    script = Script([wallet], used={("tenant", TENANT): {"daily": 500}})
    verdicts = _plan(planner, script, [_call(challenge, wallet) for _ in range(3)])

    assert [type(v) for v in verdicts[:2]] == [SignResult, SignResult]
    assert isinstance(verdicts[2], LimitExceeded) and verdicts[2].reason == "budget_exhausted:daily"
    assert script.written is not None
    assert [p["amount"] for p in script.written.payments] == [1000, 1000]
    # Both minute buckets (tenant, then wallet) carry the two reservations.
    assert [(b["scope"], b["reserved"]) for b in script.written.buckets] == [("tenant", 2000), ("wallet", 2000)]
    assert _events(script) == [(TENANT, "payment.sign", ""), (TENANT, "payment.sign", ""),
                               (TENANT, "payment.deny", "budget_exhausted:daily")]
    # One chain, advanced once per event.
    assert script.written.heads[TENANT][0] == 3
    # First sight of the tenant: nothing to guess, so its windows were measured after the lock.
    assert [type(r) for r in script.asked] == [Read, Measure, Write]


def test_a_known_tenant_has_its_windows_measured_with_the_lock(planner, challenge):
    wallet = _wallet("w1", TENANT, _policy(budgets=(Budget("daily", 2500, calendar="day"),)))
    _plan(planner, Script([wallet]), [_call(challenge, wallet)])
    script = Script([wallet])
    _plan(planner, script, [_call(challenge, wallet)])
    assert [type(r) for r in script.asked] == [Read, Write]
    first = script.asked[0]
    assert isinstance(first, Read) and first.measure is not None


def test_a_denial_is_audited_and_reserves_nothing(planner, challenge):
    wallet = _wallet("w1", TENANT, _policy(per_payment_max=500))
    script = Script([wallet])
    (verdict,) = _plan(planner, script, [_call(challenge, wallet)])
    assert isinstance(verdict, LimitExceeded) and verdict.reason == "per_payment_max"
    assert script.written is not None
    assert script.written.payments == [] and script.written.buckets == []
    (event,) = script.written.events
    assert (event["action"], event["outcome"], event["reason"]) == ("payment.deny", "denied", "per_payment_max")
    assert event["amount"] == "1000" and event["payment_id"] == ""


def test_an_idempotent_replay_returns_the_payment_already_made(planner, challenge):
    wallet = _wallet("w1", TENANT, _policy())
    first = _call(challenge, wallet, key="k1")
    script = Script([wallet])
    (signed,) = _plan(planner, script, [first])
    assert isinstance(signed, SignResult) and script.written is not None
    (row,) = script.written.payments
    claim = PaymentRow(*(row[name] for name in PaymentRow._fields))

    # In a later batch: the claim comes from the database.
    later = Script([wallet], claims=[claim])
    (again,) = _plan(planner, later, [_call(challenge, wallet, key="k1")])
    assert isinstance(again, SignResult)
    assert (again.payment_id, again.header_value) == (signed.payment_id, signed.header_value)
    assert later.written is not None and later.written.payments == [] and later.written.events == []

    # In one batch: the second call finds the first one's claim, made by the batch itself.
    same = Script([wallet])
    a, b = _plan(planner, same, [_call(challenge, wallet, key="k2"), _call(challenge, wallet, key="k2")])
    assert isinstance(a, SignResult) and isinstance(b, SignResult) and a.payment_id == b.payment_id
    assert same.written is not None and len(same.written.payments) == 1


def test_a_key_reused_for_another_purchase_is_refused_and_an_expired_one_is_released(planner, challenge):
    wallet = _wallet("w1", TENANT, _policy())
    script = Script([wallet])
    _plan(planner, script, [_call(challenge, wallet, key="k1")])
    assert script.written is not None
    row = dict(script.written.payments[0])
    other = sdk_v2_challenge(amount="2000")

    conflict = Script([wallet], claims=[PaymentRow(*(row[name] for name in PaymentRow._fields))])
    (refused,) = _plan(planner, conflict, [_call(other, wallet, key="k1")])
    assert isinstance(refused, AlreadyExists)

    row["idempotency_expires_ms"] = int(NOW * 1000)  # expired now
    expired = Script([wallet], claims=[PaymentRow(*(row[name] for name in PaymentRow._fields))])
    (fresh,) = _plan(planner, expired, [_call(other, wallet, key="k1")])
    assert isinstance(fresh, SignResult) and fresh.payment_id != row["id"] and fresh.amount == 2000
    assert ReleaseKey(row["id"]) in expired.asked


def test_a_call_that_fails_its_checks_fails_alone(planner, challenge):
    mine = _wallet("w1", TENANT, _policy())
    theirs = _wallet("w2", OTHER, _policy())
    script = Script([mine, theirs])
    verdicts = _plan(planner, script, [
        _call(challenge, mine),
        _call(challenge, mine, secret="wrong"),
        _call(challenge, theirs),  # another tenant's wallet, asked for by TENANT
        _call(challenge, theirs, tenant_id=OTHER),
    ])
    assert [type(v) for v in verdicts] == [SignResult, Unauthenticated, NotFound, SignResult]
    assert script.written is not None
    assert sorted(p["tenant_id"] for p in script.written.payments) == [TENANT, OTHER]
    assert sorted(script.written.heads) == [TENANT, OTHER]


# -- the retry rule of commit and commit_async -----------------------------------


def _run_rule(calls: Sequence[str], outcome) -> tuple[list[object], list[Sequence[str]]]:
    """Drive ``_transactions`` with ``outcome(transaction) -> verdicts | Exception``."""
    rule = _transactions(calls)  # type: ignore[arg-type]
    runs: list[Sequence[str]] = []
    batch = next(rule)
    while True:
        runs.append(list(batch))
        try:
            batch = rule.send(outcome(batch))
        except StopIteration as done:
            return done.value, runs


def test_a_failed_batch_transaction_is_retried_one_call_per_transaction():
    boom = RuntimeError("boom")

    def outcome(batch):
        if len(batch) > 1 or list(batch) == ["c"]:
            return boom
        return [f"ok-{batch[0]}"]

    verdicts, runs = _run_rule(["a", "b", "c", "d"], outcome)
    assert runs == [["a", "b", "c", "d"], ["a"], ["b"], ["c"], ["d"]]
    assert verdicts == ["ok-a", "ok-b", boom, "ok-d"]


def test_a_database_that_is_down_fails_the_whole_batch_closed():
    down = Unavailable("database unavailable")
    verdicts, runs = _run_rule(["a", "b", "c"], lambda batch: down)
    assert runs == [["a", "b", "c"]] and verdicts == [down, down, down]


def test_a_contended_batch_is_retried_and_a_lone_call_is_not():
    busy = batch_io.Contended("busy")
    verdicts, runs = _run_rule(["a", "b"], lambda batch: busy if len(batch) > 1 else [f"ok-{batch[0]}"])
    assert runs == [["a", "b"], ["a"], ["b"]] and verdicts == ["ok-a", "ok-b"]
    verdicts, runs = _run_rule(["a"], lambda batch: busy)
    assert runs == [["a"]] and verdicts == [busy]
