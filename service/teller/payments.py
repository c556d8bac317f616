"""The Sign flow: challenge in, proof out, with the spend limit, the idempotency
claim and the audit row committed in one transaction before the proof leaves.

``prepare`` does everything that needs no lock (parse, chain facts, sign the
likely offer); ``commit`` reserves a batch of prepared calls in one transaction
(``_plan``, answered by a SQLAlchemy session or, on PostgreSQL, async psycopg).

Concurrency: the batch's tenant rows are locked (SELECT ... FOR UPDATE in id
order on PostgreSQL, BEGIN IMMEDIATE on SQLite) for the check-and-reserve, and
the calls are decided one after another under those locks, so no two calls,
in one batch or in two workers, can both spend the last of a budget.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from teller import audit, auth, balances, batch_io, idempotency, observe, signing
from teller import offers as offers_mod
from teller.auth import Caller
from teller.chain import ChainReader, NotCached
from teller.clock import Clock, ms, system_clock
from teller.db import Database
from teller.db.models import Payment, Tenant, Wallet
from teller.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    TellerError,
    Unavailable,
)
from teller.schemes import Offer
from teller.schemes.proofs import Proofs
from teller.signing import SignInput
from teller.spend.decision import Decision, DenialReason
from teller.spend.evaluate import evaluate
from teller.spend.ledger import MINUTE_MS, bucket_delta
from teller.spend.parse import Rules, rules_from
from teller.spend.rules import DEFAULT, PROTOCOLS, Budget, Charge, Policy, Scope, inherit
from teller.states import PaymentState
from teller.vault import SealedKey, Vault

log = logging.getLogger("teller.payments")


@dataclass(frozen=True, slots=True)
class SignResult:
    header_name: str
    header_value: str
    payment_id: str
    protocol: str
    version: int
    scheme: str
    network: str
    asset: str
    amount: int
    pay_to: str
    #: Headers besides the proof to set on the paid retry (MPP's Idempotency-Key).
    headers: tuple[tuple[str, str], ...] = ()


#: Digits of the largest uint256.
MAX_CAP_DIGITS = 78


def _parse_cap(text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or not text.isascii():
        raise InvalidArgument(f"max_amount must be an integer string of atomic units, got {text[:40]!r}")
    if len(text) > MAX_CAP_DIGITS:
        # Checked before int(): Python refuses strings past 4,300 digits with a ValueError.
        raise InvalidArgument(f"max_amount has {len(text)} digits; a uint256 has at most {MAX_CAP_DIGITS}")
    return int(text)


def sign_input(
    *, status: int, headers: tuple[tuple[str, str], ...], body: bytes, url: str, method: str,
    wallet_id: str, max_amount: str, idempotency_key: str, protocols: Sequence[str] = (),
) -> SignInput:
    if len(idempotency_key) > 200:
        raise InvalidArgument("idempotency_key must be at most 200 characters")
    for name, value in (("challenge.url", url), ("wallet_id", wallet_id), ("idempotency_key", idempotency_key),
                        ("challenge.method", method)):
        if "\x00" in value:
            # PostgreSQL text cannot hold it: refuse it here rather than fail the write.
            raise InvalidArgument(f"{name} contains a NUL character")
    for p in protocols:
        if p not in PROTOCOLS:
            raise InvalidArgument(f"protocols: unknown protocol {p[:20]!r} (x402 or mpp)")
    return SignInput(status, headers, body, url, method, wallet_id, _parse_cap(max_amount), idempotency_key or None,
                     tuple(protocols))


def _request_hash(req: SignInput, collected: offers_mod.Collected) -> str:
    """What the idempotency key is bound to: the purchase, not one challenge."""
    return idempotency.purchase_hash(wallet_id=req.wallet_id, url=req.url, method=req.method, cap=req.max_amount,
                                     collected=collected)


@dataclass(slots=True)
class Call:
    """One Sign call, validated, parsed and (for its likely offer) already signed,
    waiting for the transaction that reserves it."""

    caller: Caller
    req: SignInput
    secret: str | None
    collected: offers_mod.Collected
    request_hash: str
    prepared: signing.Prepared
    presigned: signing.Presigned | None
    #: Offers the wallet cannot cover (by ``id``), with their refusal: skipped when deciding.
    short: Mapping[int, FailedPrecondition] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PushPending:
    """A push payment whose reservation committed: its transaction is still to be
    broadcast (``Payments.finish``), outside any batch."""

    caller: Caller
    payment: signing.NewPayment
    raw: bytes
    offer: Offer


Outcome = SignResult | PushPending | BaseException


@dataclass(slots=True)
class _Batch:
    """What one transaction decides for its calls, written at its end: payments,
    audit events (chained per tenant in memory, from the locked heads), spend
    buckets; and the running window sums, so each call sees the calls before it."""

    now_ms: int
    heads: dict[str, tuple[int, str]]
    usage: dict[tuple[str, str], dict[str, int]]
    payments: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    moved: dict[str, tuple[int, str]] = field(default_factory=dict)
    buckets: dict[tuple[str, str, int], list[int]] = field(default_factory=dict)
    claims: dict[tuple[str, str], Any] = field(default_factory=dict)
    #: (wallet, nonce) -> the payment holding it, or None: what the batch knows of
    #: these nonces (its reads looked them up, or it reserved them itself).
    nonces: dict[tuple[str, str], Any] = field(default_factory=dict)
    #: Per (tenant, scope name), the scope a signature of this batch counted against.
    signed_scopes: dict[tuple[str, str], Scope] = field(default_factory=dict)

    def audit(self, tenant_id: str, **fields: Any) -> None:
        row = audit.event(tenant_id=tenant_id, head=self.heads[tenant_id], at_ms=self.now_ms, **fields)
        self.heads[tenant_id] = self.moved[tenant_id] = (row["seq"], row["hash"])
        self.events.append(row)

    def reserve(self, row: signing.NewPayment, scopes: Sequence[Scope]) -> None:
        self.payments.append(dict(vars(row)))
        reserved, spent = bucket_delta(None, 0, row.state, row.amount_common)
        minute = row.created_ms // MINUTE_MS
        for key in (("tenant", row.tenant_id, minute), ("wallet", row.wallet_id, minute)):
            bucket = self.buckets.setdefault(key, [0, 0])
            bucket[0] += reserved
            bucket[1] += spent
        for scope in scopes:
            used = scope.used
            assert isinstance(used, dict)
            for name in used:
                used[name] += row.amount_common
        if row.idempotency_key:
            self.claims[(row.tenant_id, row.idempotency_key)] = row
        self.nonces[(row.wallet_id, row.nonce)] = row

    def bucket_rows(self) -> list[dict[str, Any]]:
        """Tenants before wallets, each in id order (the lock order everywhere)."""
        return [{"scope": scope, "scope_id": sid, "minute": minute, "reserved": r, "spent": sp}
                for (scope, sid, minute), (r, sp) in sorted(
                    self.buckets.items(), key=lambda kv: (kv[0][0] != "tenant", kv[0][1], kv[0][2]))]


class Payments:
    def __init__(
        self, db: Database, vault: Vault, *, networks: Mapping[str, int] | None = None,
        max_challenge_bytes: int = 256 * 1024, idempotency_ttl_s: int = 86400, clock: Clock = system_clock,
        chain: ChainReader | None = None, max_authorization_s: int = 3600, balance_check_s: float = 0.0,
    ) -> None:
        self.db = db
        self.vault = vault
        self.networks = dict(networks or {})
        self.max_challenge_bytes = max_challenge_bytes
        self.idempotency_ttl_ms = idempotency_ttl_s * 1000
        self.clock = clock
        self.chain = chain or ChainReader({})
        self._wallets: dict[str, tuple[float, str, str, SealedKey]] = {}
        self.sql = batch_io.SqlBatchIO()
        self.proofs = Proofs(vault, self.chain, clock, self.idempotency_ttl_ms, max_authorization_s)
        self.balances = balances.Balances(self.chain, db, ttl_s=balance_check_s)
        # Per tenant/wallet scope, the budgets its last batch measured (a guess for the next).
        self._budgets: dict[tuple[str, str], Sequence[Budget]] = {}

    def sign(self, caller: Caller, req: SignInput, token_secret: str | None = None) -> SignResult:
        """Sign a payment for ``req``. With ``token_secret`` the caller's token is
        verified inside the locking transaction (the RPC path); without it the
        caller is taken as already authenticated."""
        return self.finish(self.commit([self.prepare(caller, req, token_secret)])[0])

    def prepare(self, caller: Caller, req: SignInput, token_secret: str | None = None, *,
                cached_only: bool = False) -> Call:
        """Everything that needs no lock: validate and parse the challenge, read the
        chain facts its offers need, and sign the offer the tenant most likely pays.
        Nothing leaves unless ``commit`` reserves it. With ``cached_only`` it raises
        ``NotCached`` rather than block on the database or a chain (so an event
        loop can run it and hand only a cold call to a thread)."""
        if req.status != 402:
            raise InvalidArgument(f"challenge.status must be 402, got {req.status}")
        if not req.wallet_id:
            raise InvalidArgument("wallet_id is required")
        collected = offers_mod.collect(req.headers, req.body, networks=self.networks,
                                       max_bytes=self.max_challenge_bytes,
                                       now=datetime.fromtimestamp(self.clock(), UTC))
        known = self._wallet_info(caller.tenant_id, req.wallet_id, cached_only)
        prepared = self.proofs.chain_facts(collected.offers, cached_only, payer=known[0] if known else None)
        presigned = self.proofs.presign(caller.tenant_id, req, collected, prepared, *known) if known else None
        short = self._shortfalls(req.wallet_id, known[0], collected, cached_only) if known else {}
        return Call(caller, req, token_secret, collected, _request_hash(req, collected), prepared, presigned, short)

    def _shortfalls(self, wallet_id: str, address: str, collected: offers_mod.Collected,
                    cached_only: bool) -> dict[int, FailedPrecondition]:
        """The offers this wallet cannot cover, where the chain can tell (see ``balances``)."""
        out: dict[int, FailedPrecondition] = {}
        for o in collected.offers:
            if self.balances.checks(o.network, o.scheme.id, o.amount):
                refusal = self.balances.shortfall(wallet_id=wallet_id, address=address, network=o.network,
                                                  asset=o.asset, amount=o.amount, cached_only=cached_only)
                if refusal is not None:
                    out[id(o)] = refusal
        return out

    def commit(self, calls: Sequence[Call]) -> list[Outcome]:
        """Check, reserve and audit ``calls`` in one transaction (group commit: the
        transaction, the tenant locks and the writes are shared; each call is
        decided in order against the sums the calls before it left). One outcome
        per call: its result, its own error, or a push payment to finish.

        If the transaction itself fails, nothing of it was committed: a batch is
        then retried one call per transaction, so one call cannot fail the others;
        a database that is down fails them all closed."""
        try:
            return self._commit(calls)
        except Exception as exc:  # noqa: BLE001 - handed to the caller(s) as their outcome
            failed = _failed(calls, exc)
            return failed if failed is not None else [self.commit([call])[0] for call in calls]

    async def commit_async(self, calls: Sequence[Call], aio: batch_io.AsyncPgBatchIO | None,
                           in_thread: Callable[[Callable[[Sequence[Call]], list[Outcome]], Sequence[Call]],
                                               Awaitable[list[Outcome]]]) -> list[Outcome]:
        """``commit`` on the event loop: on PostgreSQL the batch's statements go
        through an async psycopg connection, so a worker needs no thread (and no
        hand-over of the interpreter lock) per batch. Elsewhere, and for the rare
        batch that needs more than the fast path offers, ``in_thread(commit)``."""
        if aio is None:
            return await in_thread(self.commit, calls)
        try:
            out = await aio.run(self._plan(calls))
        except batch_io.NeedsSession:
            return await in_thread(self.commit, calls)
        except Exception as exc:  # noqa: BLE001 - handed to the caller(s) as their outcome
            failed = _failed(calls, exc)
            return failed if failed is not None else [(await self.commit_async([c], aio, in_thread))[0] for c in calls]
        self._observe(calls, out)
        return out

    def finish(self, outcome: Outcome) -> SignResult:
        """The caller's answer for one outcome of ``commit`` (push payments are
        broadcast here, after their reservation committed)."""
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, PushPending):
            return self._push(outcome.caller, outcome.payment, outcome.raw, outcome.offer)
        return outcome

    def _commit(self, calls: Sequence[Call]) -> list[Outcome]:
        with self.db.transaction() as s:
            out = batch_io.drive(self._plan(calls), lambda request: self._answer(s, request))
        self._observe(calls, out)
        return out

    def _observe(self, calls: Sequence[Call], out: Sequence[Outcome]) -> None:
        for call, o in zip(calls, out, strict=True):
            if isinstance(o, SignResult | PushPending):
                # Counted against the wallet's balance until its next read (a replay counts too: conservative).
                row = o.payment if isinstance(o, PushPending) else o
                if self.balances.checks(row.network, row.scheme, row.amount):
                    self.balances.signed(call.req.wallet_id, row.network, row.asset, row.amount)
        for o in out:
            # Policy denials (each audited as payment.deny); a disabled tenant is not one.
            if isinstance(o, PermissionDenied | LimitExceeded) and o.reason and o.reason != "tenant_disabled":
                observe.child(observe.DENIALS, o.reason).inc()
        observe.SIGN_BATCH.observe(len(calls))

    def _answer(self, s: Session, request: batch_io.Request) -> Any:
        """The SQLAlchemy answer to one request of a batch plan (any database)."""
        if isinstance(request, batch_io.Read):
            return self.sql.read(s, request)
        if isinstance(request, batch_io.Measure):
            return self.sql.measure(s, request.scopes, request.now_ms)
        if isinstance(request, batch_io.Write):
            return self.sql.write(s, request)
        if isinstance(request, batch_io.Missing):
            frozen = self._lock_tenant(s, request.tenant_id)
            return frozen, audit.locked_head(s, request.tenant_id)
        if isinstance(request, batch_io.ReleaseKey):
            s.execute(update(Payment).where(Payment.id == request.payment_id).values(idempotency_key=None))
            return None
        assert isinstance(request, batch_io.FindNonce)
        return s.execute(select(Payment).where(Payment.wallet_id == request.wallet_id,
                                               Payment.nonce == request.nonce)).scalar_one_or_none()

    def _plan(self, calls: Sequence[Call]) -> Generator[batch_io.Request, Any, list[Outcome]]:
        """The batch, free of I/O: it yields what it needs from the database (a
        driver answers) and returns one outcome per call."""
        tenant_ids = sorted({c.caller.tenant_id for c in calls})
        # The batch's time, read before its locks are granted. Safe for exact limits:
        # a rolling window has no upper bound (a payment stamped later by a batch
        # that committed first still counts), and a calendar window is the one its
        # payments are stamped in. Known already, it lets the window query travel
        # with the lock, for the budgets the last batches of these tenants had.
        now_ms = ms(self.clock)
        guess = self._guess(calls)
        # Presigned Tempo payments: whether their transactions are already recorded
        # is read with the lock (else one round trip each, holding it).
        nonces = sorted({(c.presigned.wallet_id, c.presigned.nonce) for c in calls
                         if c.presigned is not None and c.presigned.nonce is not None})
        snap: batch_io.Snapshot = yield batch_io.Read(
            tenant_ids, sorted({c.req.wallet_id for c in calls}),
            sorted({c.caller.token_id for c in calls if c.secret is not None}),
            sorted({c.req.idempotency_key for c in calls if c.req.idempotency_key}),
            batch_io.Measure(guess, now_ms) if guess else None, nonces)
        refused: dict[str, TellerError] = {}
        for tenant_id in tenant_ids:
            if tenant_id not in snap.tenants:
                # No such tenant, or its chain has no head yet (created here, rarely).
                try:
                    frozen, snap.heads[tenant_id] = yield batch_io.Missing(tenant_id)
                    snap.tenants[tenant_id] = _TenantRow(tenant_id, "active", frozen)
                except TellerError as exc:
                    refused[tenant_id] = exc
        locked: list[_Locked | TellerError] = []
        for call in calls:
            try:
                locked.append(self._check(call, snap.tenants.get(call.caller.tenant_id), refused,
                                          snap.wallets.get(call.req.wallet_id), snap.tokens.get(call.caller.token_id)))
            except TellerError as exc:
                locked.append(exc)
        scopes = _scopes(locked, calls)
        self._remember(scopes)
        if snap.windows is not None and all(guess.get(key) == budgets for key, budgets in scopes.items()):
            windows = snap.windows
        else:  # first sight of a tenant, or its policy changed: measure what it has now
            windows = yield batch_io.Measure(scopes, now_ms)
        batch = _Batch(now_ms, snap.heads, {key: {name: w.used for name, w in use.items()}
                                            for key, use in windows.items()},
                       nonces={**dict.fromkeys(nonces), **snap.nonces})
        out: list[Outcome] = []
        for call, lk in zip(calls, locked, strict=True):
            if isinstance(lk, TellerError):
                out.append(lk)
                continue
            try:
                out.append((yield from self._decide(call, lk, batch, snap.claims)))
            except TellerError as exc:
                out.append(exc)
        _observe_budgets(batch.signed_scopes)
        yield batch_io.Write(batch.payments, batch.bucket_rows(), batch.events, batch.moved)
        return out

    def _guess(self, calls: Sequence[Call]) -> dict[tuple[str, str], Sequence[Budget]]:
        """The windows the batch will most likely measure: each tenant's and wallet's
        budgets as the last batch that locked it found them (empty if one is new)."""
        guess: dict[tuple[str, str], Sequence[Budget]] = {}
        for call in calls:
            for key in (("tenant", call.caller.tenant_id), ("wallet", call.req.wallet_id)):
                budgets = self._budgets.get(key)
                if budgets is not None:
                    guess[key] = budgets
                elif key[0] == "tenant":
                    return {}
        return guess

    def _remember(self, scopes: Mapping[tuple[str, str], Sequence[Budget]]) -> None:
        if len(self._budgets) > 100_000:
            self._budgets.clear()
        self._budgets.update(scopes)

    # -- the locked part ----------------------------------------------------

    @staticmethod
    def _check(call: Call, tenant: Any, refused: Mapping[str, TellerError], wallet: batch_io.WalletRow | None,
               token: Any) -> _Locked:
        tenant_id, wallet_id = call.caller.tenant_id, call.req.wallet_id
        if call.secret is not None:
            mine = token is not None and token.tenant_id == tenant_id
            auth.check_secret(token.secret_hash if mine else None, token.revoked_ms if mine else None, call.secret)
        # Another tenant's wallet is reported exactly like a missing one.
        if wallet is None or wallet.tenant_id != tenant_id:
            raise NotFound(f"wallet {wallet_id!r} not found")
        if tenant_id in refused:
            raise refused[tenant_id]
        if tenant.state != "active":
            raise PermissionDenied("tenant is disabled", reason="tenant_disabled")
        if wallet.state != "active":
            raise FailedPrecondition(f"wallet {wallet_id!r} is {wallet.state}")
        return _Locked(wallet, bool(tenant.frozen), rules_from(wallet.tenant_doc, wallet.wallet_doc))

    def _lock_tenant(self, s: Session, tenant_id: str) -> bool:
        """Lock the tenant's row for the check-and-reserve; returns its freeze flag."""
        row = s.execute(select(Tenant.state, Tenant.frozen).where(Tenant.id == tenant_id).with_for_update()).first()
        if row is None or row.state != "active":
            raise PermissionDenied("tenant is disabled", reason="tenant_disabled")
        return bool(row.frozen)

    @staticmethod
    def _claimed(row: Any, key: str, request_hash: str, now_ms: int) -> Generator[batch_io.Request, Any, Any]:
        if row is None:
            return None
        if row.idempotency_expires_ms is not None and row.idempotency_expires_ms <= now_ms:
            # Expired: release the key so this request is treated as new.
            yield batch_io.ReleaseKey(row.id)
            return None
        if row.request_hash != request_hash:
            raise AlreadyExists(f"idempotency_key {key!r} was already used for a different request")
        if not row.header_value:
            # A push payment whose broadcast is under way or failed: there is no proof to return.
            if row.state == PaymentState.FAILED:
                raise FailedPrecondition(f"payment {row.id} failed: {row.state_reason}", reason="payment_failed")
            raise Unavailable(f"payment {row.id} is still being broadcast; retry shortly")
        if _spent(row, now_ms):
            # The key's one payment can never move money now: paying again under it would make
            # the key name two payments, and handing back a dead proof would only be refused.
            raise FailedPrecondition(
                f"idempotency_key {key!r} names payment {row.id}, which is {row.state} and can no longer be "
                "used; send the request with a new key to pay again", reason="idempotency_key_spent",
                metadata={"payment_id": row.id, "state": row.state})
        # The same purchase (a retry, perhaps with a fresh challenge): the payment already made for it.
        return row

    def _decide(self, call: Call, lk: _Locked, batch: _Batch, claims: Mapping[tuple[str, str], Any],
                ) -> Generator[batch_io.Request, Any, SignResult | PushPending | TellerError]:
        """One call, in batch order: its idempotency claim, the policy against the
        windows as the calls before it left them, then sign and reserve (or audit
        the denial). Raises a TellerError before anything of it is recorded."""
        caller, req, wallet, rules = call.caller, call.req, lk.wallet, lk.rules
        key = req.idempotency_key
        if key:
            # A claim made earlier in this batch comes first: it is the newest.
            claim = yield from self._claimed(
                batch.claims.get((caller.tenant_id, key)) or claims.get((caller.tenant_id, key)), key,
                call.request_hash, batch.now_ms)
            if claim is not None:
                return _result(claim)
        scopes = [Scope("tenant", rules.tenant, lk.tenant_frozen, batch.usage[("tenant", caller.tenant_id)])]
        if rules.wallet is not None or wallet.frozen:
            scopes.append(Scope("wallet", lk.wallet_rules, wallet.frozen, batch.usage[("wallet", wallet.id)]))
        preference = ([p for p in req.protocols if p in rules.tenant.protocols] if req.protocols
                      else list(rules.tenant.protocols))
        chosen: tuple[Offer, Decision] | None = None
        first: tuple[Offer, Decision] | None = None
        short: tuple[Offer, FailedPrecondition] | None = None
        for offer in offers_mod.by_preference(call.collected.offers, preference):
            decision = _evaluate(scopes, offer, req, offer.scheme.max_fee(offer, call.prepared))
            if decision.allowed and id(offer) in call.short:
                # The policy allows it but the wallet cannot cover it: no budget is held
                # for a proof that can only fail.
                short = short or (offer, call.short[id(offer)])
                continue
            if decision.allowed:
                chosen = (offer, decision)
                break
            first = first or (offer, decision)
        if chosen is None and short is not None:
            offer, refusal = short
            batch.audit(caller.tenant_id, actor=caller.actor, action="payment.deny", outcome="denied",
                        reason=DenialReason.INSUFFICIENT_BALANCE, wallet_id=wallet.id, amount=offer.amount, asset=offer.asset,
                        network=offer.network, payee=offer.pay_to, resource_url=req.url,
                        details={"protocol": offer.scheme.protocol, "scheme": offer.scheme.id, **refusal.metadata})
            return refusal
        if chosen is None and first is None:
            offered = sorted({o.scheme.protocol for o in call.collected.offers})
            batch.audit(caller.tenant_id, actor=caller.actor, action="payment.deny", outcome="denied",
                        reason=DenialReason.PROTOCOL_NOT_ALLOWED, wallet_id=wallet.id, resource_url=req.url,
                        details={"offered": offered})
            return PermissionDenied(
                f"the server offers {', '.join(offered)}; the tenant's policy pays only "
                f"{', '.join(preference) or 'nothing this call asked for'}", reason=DenialReason.PROTOCOL_NOT_ALLOWED)
        if chosen is None:
            assert first is not None
            denied, decision = first
            denial = decision.error(_facts(denied, req.url, fee=denied.scheme.max_fee(denied, call.prepared)))
            batch.audit(caller.tenant_id, actor=caller.actor, action="payment.deny", outcome="denied",
                        reason=decision.reason, wallet_id=wallet.id, amount=denied.amount, asset=denied.asset,
                        network=denied.network, payee=denied.pay_to, resource_url=req.url,
                        details={"protocol": denied.scheme.protocol, "scheme": denied.scheme.id, **denial.metadata})
            return denial
        offer, decision = chosen
        for scope in scopes:
            batch.signed_scopes[(caller.tenant_id, scope.name)] = scope
        ctx = signing.Context(caller, req, wallet, decision, batch.now_ms, call.request_hash, rules.tenant.mpp_mode,
                       call.presigned if call.presigned is not None and call.presigned.fits(offer, wallet) else None)
        payment, raw = yield from self._sign_and_record(offer, ctx, call.prepared, batch, scopes)
        observe.child(observe.SIGNATURES, payment.protocol, payment.scheme).inc()
        return _result(payment) if raw is None else PushPending(caller, payment, raw, offer)

    def _wallet_info(self, tenant_id: str, wallet_id: str, cached_only: bool = False) -> tuple[str, SealedKey] | None:
        """A wallet's address and sealed key, remembered briefly: they never change
        except by re-wrapping, and the locked path re-reads the row anyway."""
        now = time.monotonic()
        hit = self._wallets.get(wallet_id)
        if hit is not None and hit[0] > now and hit[1] == tenant_id:
            return hit[2], hit[3]
        if cached_only:
            raise NotCached(f"wallet {wallet_id}")
        with self.db.read() as s:
            w = s.get(Wallet, wallet_id)
            if w is None or w.tenant_id != tenant_id:
                return None
            info = (w.address, SealedKey(w.kek_version, w.wrapped_data_key, w.key_ciphertext))
        self._wallets[wallet_id] = (now + 30.0, tenant_id, *info)
        return info

    def _sign_and_record(self, offer: Offer, ctx: signing.Context, prepared: signing.Prepared, batch: _Batch,
                         scopes: Sequence[Scope]) -> Generator[batch_io.Request, Any,
                                                                      tuple[signing.NewPayment, bytes | None]]:
        """Sign the chosen offer and add its payment row and audit event to the
        batch. Returns the row and, for a push payment, the transaction still to
        broadcast."""
        row, details, raw = self.proofs.sign(offer, ctx, prepared)
        if offer.scheme.deterministic and raw is None:
            # Some proofs are deterministic: an evm nonce is bound to its challenge, and a
            # Tempo transaction signed twice within one second is the same bit for bit.
            # The chain takes only one, so return that payment rather than reserve twice.
            key = (ctx.wallet.id, row.nonce)
            existing: Any = batch.nonces[key] if key in batch.nonces else (
                yield batch_io.FindNonce(ctx.wallet.id, row.nonce))
            if existing is not None:
                return existing, None
        batch.reserve(row, scopes)
        batch.audit(ctx.caller.tenant_id, actor=ctx.caller.actor, action="payment.sign", wallet_id=ctx.wallet.id,
                    payment_id=row.id, amount=row.amount, asset=row.asset, network=row.network, payee=row.pay_to,
                    resource_url=ctx.req.url,
                    details={"protocol": offer.scheme.protocol, "scheme": offer.scheme.id, "nonce": row.nonce,
                             "valid_before": row.valid_before, **details})
        return row, raw

    # -- push mode, after the reservation committed -------------------------

    def _push(self, caller: Caller, payment: signing.NewPayment, raw: bytes, offer: Offer) -> SignResult:
        from teller import lifecycle

        failure: str | None = None
        mined = None
        try:
            mined = self.chain.broadcast(payment.network, raw)
        except Unavailable as exc:
            failure = str(exc)
        with self.db.transaction() as s:
            row = s.get(Payment, payment.id)
            assert row is not None
            now = ms(self.clock)
            if mined is not None and mined.succeeded:
                wallet = s.get(Wallet, row.wallet_id)
                assert wallet is not None
                row.header_value = offer.scheme.pushed(offer, mined.tx_hash, wallet.address)
                change = lifecycle.mined_change(mined)
                lifecycle.advance(s, row, change, from_states=lifecycle.LIVE, now_ms=now, actor=caller.actor)
                fee = change.fee
                audit.record(s, at_ms=now, actor=caller.actor, action="payment.gas", tenant_id=row.tenant_id,
                             wallet_id=row.wallet_id, payment_id=row.id, network=row.network, asset=row.asset,
                             amount=fee, details={"tx_hash": mined.tx_hash, "gas_used": mined.gas_used,
                                                  "gas_price": mined.gas_price, "unit": "fee token base units"})
                s.flush()
                s.refresh(row)
                return _result(row)
            if mined is not None:
                # Mined and reverted: its expiring nonce is spent, so it can never move money.
                failure = "transaction reverted"
                lifecycle.advance(s, row, lifecycle.mined_change(mined), from_states=lifecycle.LIVE, now_ms=now,
                                  actor=caller.actor)
            else:
                # Unknown fate: reserved until the reconciler sees it mined or expired.
                lifecycle.advance(s, row, lifecycle.Change(PaymentState.FAILED, release=False, reason=(failure or "")[:200]),
                                  from_states=lifecycle.LIVE, now_ms=now, actor=caller.actor)
        raise FailedPrecondition(f"push payment {payment.id} failed on {payment.network}: {failure}",
                                 reason="payment_failed")


@dataclass(frozen=True, slots=True)
class _Locked:
    wallet: batch_io.WalletRow
    tenant_frozen: bool
    rules: Rules

    @property
    def wallet_rules(self) -> Policy:
        return self.rules.wallet or inherit(DEFAULT, self.rules.tenant)


class _TenantRow(NamedTuple):
    id: str
    state: str
    frozen: bool


def _failed(calls: Sequence[Call], exc: Exception) -> list[Outcome] | None:
    """The outcomes of a batch whose transaction failed, or None: retry its calls
    one by one (nothing of it committed). A database that is down fails them all."""
    if isinstance(exc, Unavailable) and not isinstance(exc, batch_io.Contended):
        return [exc] * len(calls)
    if len(calls) == 1:
        return [_out_of_range(exc) or exc]
    log.warning("a batch of %d Sign calls failed (%s); retrying them one by one", len(calls), exc)
    return None


def _out_of_range(exc: BaseException) -> TellerError | None:
    """A sum the database cannot hold (a minute's spend bucket is a 64-bit
    integer): the call is refused by name rather than failed as INTERNAL.
    Nothing of it was written."""
    cause = getattr(exc, "orig", exc)  # SQLAlchemy wraps the driver's error
    # SQLite: migration 0006's trigger refuses a bucket that would turn into a float.
    if isinstance(cause, psycopg.errors.NumericValueOutOfRange) or (
            isinstance(cause, sqlite3.IntegrityError) and str(cause).startswith("amount_out_of_range")):
        return FailedPrecondition(
            f"this payment would take a minute's spend of its tenant or wallet past {2**63 - 1} units, "
            "the most Teller accounts", reason="amount_out_of_range")
    return None


def _scopes(locked: Sequence[_Locked | TellerError],
            calls: Sequence[Call]) -> dict[tuple[str, str], Sequence[Budget]]:
    """The budget windows a batch must measure: each tenant's, and each wallet's
    that has a policy of its own (or is frozen)."""
    scopes: dict[tuple[str, str], Sequence[Budget]] = {}
    for call, lk in zip(calls, locked, strict=True):
        if isinstance(lk, TellerError):
            continue
        scopes[("tenant", call.caller.tenant_id)] = lk.rules.tenant.budgets
        if lk.rules.wallet is not None or lk.wallet.frozen:
            scopes[("wallet", lk.wallet.id)] = lk.wallet_rules.budgets
    return scopes


def _facts(offer: Offer, url: str, payee: str | None = None, fee: int = 0) -> Charge:
    return Charge(offer.network, offer.asset, offer.amount, payee or offer.pay_to, url, fee)


def _evaluate(scopes: Sequence[Scope], offer: Offer, req: SignInput, fee: int) -> Decision:
    """The policy's decision, with the most the payment's fee can cost; split
    recipients must pass the payee lists too."""
    decision = evaluate(scopes, _facts(offer, req.url, fee=fee), req.max_amount)
    for payee in offer.other_payees if decision.allowed else ():
        split = evaluate(scopes, _facts(offer, req.url, payee, fee), req.max_amount)
        if not split.allowed:
            return split
    return decision


def _observe_budgets(scopes: Mapping[tuple[str, str], Scope]) -> None:
    """Budget utilisation once per batch, as its signatures left the windows (not
    after each call: a batch's calls would set the same gauges many times over)."""
    for (tenant_id, name), scope in scopes.items():
        for budget in scope.policy.budgets:
            used = scope.used.get(budget.name, 0)
            observe.child(observe.BUDGET, tenant_id, name, budget.name).set(
                used / budget.limit if budget.limit else 1.0)


def _spent(row: Any, now_ms: int) -> bool:
    """A claimed payment that can never be used: voided or expired on chain, or
    unsettled past its validBefore."""
    if row.state == PaymentState.SETTLED:
        return False
    return row.state in (PaymentState.EXPIRED, PaymentState.VOIDED) or row.released_ms is not None or (
        bool(row.valid_before) and row.valid_before * 1000 <= now_ms)


def _result(p: Any) -> SignResult:
    return SignResult(p.header_name, p.header_value, p.id, p.protocol, p.version, p.scheme, p.network,
                      p.asset, p.amount, p.pay_to,
                      idempotency.retry_headers(p.protocol, p.tenant_id, p.idempotency_key))


__all__ = ["Payments", "SignResult", "sign_input"]
