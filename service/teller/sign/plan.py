"""A Sign batch decided without I/O: the tenants' locks and reads, each call's
idempotency claim, policy decision, signature and reservation, and the batch's
writes. ``Planner.plan`` is a generator: it yields what it needs from the
database (``teller.sign.batch_io``) and a driver answers; it returns one
verdict per call.

Concurrency: the batch's tenant rows are locked (SELECT ... FOR UPDATE in id
order on PostgreSQL, BEGIN IMMEDIATE on SQLite) for the check-and-reserve, and
the calls are decided one after another under those locks, so no two calls,
in one batch or in two workers, can both spend the last of a budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

from teller import callers, observe, signing
from teller import offers as offers_mod
from teller.audit.chain import event as audit_event
from teller.channels.rules import ChannelState
from teller.clock import Clock, ms
from teller.errors import (
    AlreadyExists,
    FailedPrecondition,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    TellerError,
    Unavailable,
)
from teller.schemes import Offer
from teller.schemes.mpp_session import TEMPO_SESSION, ChannelKey, channel_key, stored_channel_key
from teller.schemes.proofs import Proofs
from teller.sign import batch_io
from teller.sign.call import Call, PushPending, Revisit, SignResult, Verdict, sign_result
from teller.signing import SignInput
from teller.spend.decision import Decision, DenialReason
from teller.spend.evaluate import channel_room, evaluate
from teller.spend.ledger import MINUTE_MS, bucket_delta
from teller.spend.parse import Rules, rules_from
from teller.spend.rules import DEFAULT, Budget, Charge, Policy, Scope, inherit
from teller.states import PaymentState

#: The reason of a session challenge's refusal when another call has just opened
#: its channel: the Sign paths answer it with a voucher on that channel.
CHANNEL_OPENING = "channel_opening"

#: A payment a batch knows of: read from the database, or reserved by the batch itself.
Recorded: TypeAlias = batch_io.PaymentRow | signing.NewPayment


@dataclass(slots=True)
class _Batch:
    """What one transaction decides for its calls, written at its end: payments,
    audit events (chained per tenant in memory, from the locked heads), spend
    buckets; and the running window sums, so each call sees the calls before it."""

    now_ms: int
    heads: dict[str, tuple[int, str]]
    usage: dict[tuple[str, str], dict[str, int]]
    payments: list[dict[str, Any]] = field(default_factory=list)
    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    moved: dict[str, tuple[int, str]] = field(default_factory=dict)
    buckets: dict[tuple[str, str, int], list[int]] = field(default_factory=dict)
    claims: dict[tuple[str, str], Recorded] = field(default_factory=dict)
    #: (wallet, nonce) -> the payment holding it, or None: what the batch knows of
    #: these nonces (its reads looked them up, or it reserved them itself).
    nonces: dict[tuple[str, str], Recorded | None] = field(default_factory=dict)
    #: Per (tenant, scope name), the scope a signature of this batch counted against.
    signed_scopes: dict[tuple[str, str], Scope] = field(default_factory=dict)
    #: Per tenant with a session challenge in the batch, its channels that are not
    #: closed, as (key, state, handle, channel id): read under its lock, and each
    #: channel this batch opens added as it is signed.
    channels: dict[str, list[tuple[ChannelKey, str, str, str]]] = field(default_factory=dict)
    #: The channels the batch's top-ups are for, locked, as its top-ups leave them.
    top_ups: dict[str, batch_io.TopUpChannel | None] = field(default_factory=dict)

    def audit(self, tenant_id: str, **fields: Any) -> None:
        row = audit_event(tenant_id=tenant_id, head=self.heads[tenant_id], at_ms=self.now_ms, **fields)
        self.heads[tenant_id] = self.moved[tenant_id] = (row["seq"], row["hash"])
        self.events.append(row)

    def reserve(self, row: signing.NewPayment, scopes: Sequence[Scope]) -> None:
        columns = dict(vars(row))
        # Rows of other tables that exist with this payment (a channel and its first voucher).
        rows = columns.pop("rows", ())
        self.rows.extend(rows)
        for table, r in rows:
            if table == "channels" and r["tenant_id"] in self.channels:
                self.channels[r["tenant_id"]].append(
                    (stored_channel_key(r["wallet_id"], r["network"], r["escrow"], r["payee"], r["token"],
                                        r["descriptor"]), r["state"], r["id"], r["channel_id"]))
        columns.pop("raises", None)
        self.payments.append(columns)
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


class Planner:
    """Decides Sign batches. Holds, per tenant/wallet scope, the budgets its last
    batch measured (a guess for the next)."""

    def __init__(self, proofs: Proofs, clock: Clock) -> None:
        self.proofs = proofs
        self.clock = clock
        self._budgets: dict[tuple[str, str], Sequence[Budget]] = {}

    def plan(self, calls: Sequence[Call]) -> batch_io.Plan[list[Verdict]]:
        """The batch, free of I/O: it yields what it needs from the database (a
        driver answers) and returns one verdict per call."""
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
        # Channels to top up are locked first: a voucher locks its channel, then the
        # tenant's audit chain head, and the batch takes that head with its tenant.
        top_ups: dict[str, batch_io.TopUpChannel | None] = {}
        for tenant_id, handle in sorted({(c.caller.tenant_id, c.top_up.terms.channel) for c in calls
                                         if c.top_up is not None}, key=lambda tc: tc[1]):
            top_ups[handle] = yield batch_io.LockChannel(tenant_id, handle)
        # Tenants with a session challenge: their channels, to count (max_open_channels)
        # and to find one another call has just opened for the same payee.
        channel_tenants = sorted({c.caller.tenant_id for c in calls
                                  if any(o.scheme is TEMPO_SESSION for o in c.collected.offers)})
        snap: batch_io.Snapshot = yield batch_io.Read(
            tenant_ids, sorted({c.req.wallet_id for c in calls}),
            sorted({c.caller.token_id for c in calls if c.secret is not None}),
            sorted({c.req.idempotency_key for c in calls if c.req.idempotency_key}),
            batch_io.Measure(guess, now_ms) if guess else None, nonces, channel_tenants)
        locked: list[_Locked | TellerError] = []
        for call in calls:
            try:
                locked.append(self._check(call, snap.tenants.get(call.caller.tenant_id),
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
                       nonces={**dict.fromkeys(nonces), **snap.nonces},
                       channels={t: [(stored_channel_key(r.wallet_id, r.network, r.escrow, r.payee, r.token,
                                                          r.descriptor), r.state, r.id, r.channel_id)
                                     for r in rows] for t, rows in snap.channels.items()},
                       top_ups=top_ups)
        out: list[Verdict] = []
        for call, lk in zip(calls, locked, strict=True):
            if isinstance(lk, TellerError):
                out.append(lk)
                continue
            try:
                out.append((yield from self._decide(call, lk, batch, snap.claims)))
            except TellerError as exc:
                out.append(exc)
        _observe_budgets(batch.signed_scopes)
        yield batch_io.Write(batch.payments, batch.bucket_rows(), batch.events, batch.moved, batch.rows)
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
    def _check(call: Call, tenant: batch_io.TenantRow | None, wallet: batch_io.WalletRow | None,
               token: batch_io.TokenRow | None) -> _Locked:
        tenant_id, wallet_id = call.caller.tenant_id, call.req.wallet_id
        if call.secret is not None:
            mine = token if token is not None and token.tenant_id == tenant_id else None
            callers.check_secret(mine.secret_hash if mine else None, mine.revoked_ms if mine else None, call.secret)
        # Another tenant's wallet is reported exactly like a missing one.
        if wallet is None or wallet.tenant_id != tenant_id:
            raise NotFound(f"wallet {wallet_id!r} not found")
        # Not locked: no such tenant (each tenant's chain head is written with it, by
        # admin.create_tenant or migration 0004, and neither is ever deleted).
        if tenant is None or tenant.state != "active":
            raise PermissionDenied("tenant is disabled", reason="tenant_disabled")
        if wallet.state != "active":
            raise FailedPrecondition(f"wallet {wallet_id!r} is {wallet.state}")
        return _Locked(wallet, bool(tenant.frozen), rules_from(wallet.tenant_doc, wallet.wallet_doc))

    @staticmethod
    def _claimed(row: Recorded | None, key: str, request_hash: str, now_ms: int) -> batch_io.Plan[Recorded | None]:
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

    def _decide(self, call: Call, lk: _Locked, batch: _Batch, claims: Mapping[tuple[str, str], batch_io.PaymentRow],
                ) -> batch_io.Plan[SignResult | PushPending | TellerError | Revisit]:
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
                return sign_result(claim)
        scopes = [Scope("tenant", rules.tenant, lk.tenant_frozen, batch.usage[("tenant", caller.tenant_id)])]
        if rules.wallet is not None or wallet.frozen:
            scopes.append(Scope("wallet", lk.wallet_rules, wallet.frozen, batch.usage[("wallet", wallet.id)]))
        preference = ([p for p in req.protocols if p in rules.tenant.protocols] if req.protocols
                      else list(rules.tenant.protocols))
        ordered = offers_mod.by_preference(call.collected.offers, preference)
        channels = batch.channels.get(caller.tenant_id)
        if call.top_up is None and channels is not None and ordered and ordered[0].scheme is TEMPO_SESSION:
            # Single flight (not a top-up: its channel is the one found): this call found no
            # channel to pay on before the lock, and
            # another call (in this batch, or a worker's that committed first) has
            # opened one since. A second open would hold a second deposit.
            wanted = channel_key(ordered[0], wallet.id)
            for have, state, handle, cid in channels:
                if have == wanted and state == ChannelState.OPEN:
                    return Unavailable(f"channel {handle} ({cid}) for this payee was opened by another call a moment "
                                       "ago: this call is answered with a voucher on it (retry if it was not)",
                                       reason=CHANNEL_OPENING, metadata={"channel": handle, "channel_id": cid})
        open_channels = None if channels is None else len(channels)
        chosen: tuple[Offer, Decision] | None = None
        first: tuple[Offer, Decision] | None = None
        short: tuple[Offer, FailedPrecondition] | None = None
        if call.top_up is not None:
            top = self._top_up(call, scopes, batch)
            if not isinstance(top, Offer):
                return top
            ordered = [top]
        for offer in ordered:
            # A top-up opens no channel: max_open_channels does not judge it.
            decision = _evaluate(scopes, offer, req, offer.scheme.max_fee(offer, call.prepared),
                                 open_channels if call.top_up is None else None)
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
            denial = decision.error(_facts(denied, req.url, fee=denied.scheme.max_fee(denied, call.prepared),
                                           open_channels=open_channels))
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
        # A push payment (``raw``) is always the row just reserved, never one found.
        return sign_result(payment) if raw is None else PushPending(caller, cast(signing.NewPayment, payment), raw, offer)

    @staticmethod
    def _top_up(call: Call, scopes: Sequence[Scope], batch: _Batch) -> Offer | TellerError | Revisit:
        """The top-up ``call`` asks for, decided on its channel as it stands under
        the channel's lock: Revisit when another call topped it up (or it closed)
        since it was read; the refusal when the policy's ``max_channel_deposit``
        leaves too little room for the next voucher; else the top-up offer, for
        as much as the cap allows of what it asked."""
        asked = call.top_up
        assert asked is not None
        top = asked.terms
        row = batch.top_ups.get(top.channel)
        shortfall = 0 if row is None else top.lacks(row.deposit, row.cumulative)
        if row is None or row.state != "open" or shortfall == 0:
            return Revisit()
        amount = max(top.amount, shortfall)
        charge = _facts(asked, call.req.url)
        for scope in scopes:
            room = channel_room(scope.policy, charge, row.deposit)
            if room is not None:
                amount = min(amount, room)
        if amount < shortfall:
            left = row.deposit - row.cumulative
            refusal = LimitExceeded(
                f"channel {top.channel} ({top.channel_id}) has {left} left of its deposit of {row.deposit}, "
                f"{shortfall} short of the voucher asked, and max_channel_deposit leaves no room to top it up: close it "
                "(CloseChannel) and the next challenge opens a new one", reason="channel_deposit_exhausted",
                metadata={"channel": top.channel, "remaining": str(left), "deposit": str(row.deposit)})
            batch.audit(call.caller.tenant_id, actor=call.caller.actor, action="payment.deny", outcome="denied",
                        reason="channel_deposit_exhausted", wallet_id=call.req.wallet_id, amount=shortfall,
                        asset=asked.asset, network=asked.network, payee=asked.pay_to, resource_url=call.req.url,
                        details={"protocol": asked.scheme.protocol, "scheme": asked.scheme.id, "action": "topUp",
                                 **refusal.metadata})
            return refusal
        offer = dataclasses.replace(asked, terms=top.at(row.deposit, row.cumulative, amount), deposit=amount,
                                    channel_deposit=row.deposit + amount)
        # Its gas was estimated for the offer as asked (the amount changes no gas but calldata's).
        gas = call.prepared.gas_limits.get(id(asked))
        if gas is not None:
            call.prepared.gas_limits[id(offer)] = gas
        return offer

    def _sign_and_record(self, offer: Offer, ctx: signing.Context, prepared: signing.Prepared, batch: _Batch,
                         scopes: Sequence[Scope]) -> batch_io.Plan[tuple[Recorded, bytes | None]]:
        """Sign the chosen offer and add its payment row and audit event to the
        batch. Returns the row and, for a push payment, the transaction still to
        broadcast."""
        row, details, raw = self.proofs.sign(offer, ctx, prepared)
        raises = getattr(row, "raises", None)
        if raises is not None:
            # A top-up: the channel's deposit goes up in the transaction that reserves it
            # (the channel is locked since ``_top_up``; the compare-and-set is the backstop).
            channel, before, after = raises
            if not (yield batch_io.RaiseDeposit(channel, before, after, batch.now_ms)):
                raise TellerError(f"channel {channel}: its deposit moved while locked")
            locked = batch.top_ups.get(channel)
            if locked is not None:  # a later call of this batch sees the deposit raised
                batch.top_ups[channel] = locked._replace(deposit=after)
        if offer.scheme.deterministic and raw is None:
            # Some proofs are deterministic: an evm nonce is bound to its challenge, and a
            # Tempo transaction signed twice within one second is the same bit for bit.
            # The chain takes only one, so return that payment rather than reserve twice.
            key = (ctx.wallet.id, row.nonce)
            existing = batch.nonces[key] if key in batch.nonces else (
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


@dataclass(frozen=True, slots=True)
class _Locked:
    wallet: batch_io.WalletRow
    tenant_frozen: bool
    rules: Rules

    @property
    def wallet_rules(self) -> Policy:
        return self.rules.wallet or inherit(DEFAULT, self.rules.tenant)


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


def _facts(offer: Offer, url: str, payee: str | None = None, fee: int = 0, open_channels: int | None = None) -> Charge:
    return Charge(offer.network, offer.asset, offer.amount, payee or offer.pay_to, url, fee, offer.deposit,
                  open_channels if offer.deposit is not None else None, offer.channel_deposit)


def _evaluate(scopes: Sequence[Scope], offer: Offer, req: SignInput, fee: int, open_channels: int | None) -> Decision:
    """The policy's decision, with the most the payment's fee can cost (and, for a
    channel's open, how many channels the tenant holds); split recipients must
    pass the payee lists too."""
    decision = evaluate(scopes, _facts(offer, req.url, fee=fee, open_channels=open_channels), req.max_amount)
    for payee in offer.other_payees if decision.allowed else ():
        split = evaluate(scopes, _facts(offer, req.url, payee, fee, open_channels), req.max_amount)
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


def _spent(row: Recorded, now_ms: int) -> bool:
    """A claimed payment that can never be used: voided or expired on chain, or
    unsettled past its validBefore."""
    if row.state == PaymentState.SETTLED:
        return False
    return row.state in (PaymentState.EXPIRED, PaymentState.VOIDED) or row.released_ms is not None or (
        bool(row.valid_before) and row.valid_before * 1000 <= now_ms)


__all__ = ["CHANNEL_OPENING", "Planner"]
