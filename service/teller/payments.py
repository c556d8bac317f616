"""The Sign flow: challenge in, proof out, with the spend limit, the idempotency
claim and the audit row committed in one transaction before the proof leaves.

Concurrency: the tenant row is locked (SELECT ... FOR UPDATE on PostgreSQL,
BEGIN IMMEDIATE on SQLite) for the check-and-reserve, so two calls can never
both spend the last of a budget. Other tenants are not blocked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eth_utils import keccak
from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.orm import Session

from teller import audit, auth, eip3009, observe, policy, spend
from teller import offers as offers_mod
from teller.auth import Caller
from teller.chain import ChainReader
from teller.clock import Clock, ms, system_clock
from teller.db import Database
from teller.db.models import ApiToken, AuditHead, Payment, SpendPolicy, Tenant, Wallet
from teller.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TellerError,
    Unavailable,
)
from teller.mpp import charge as mpp_charge
from teller.vault import SealedKey, Vault
from teller.vault.signer import WalletSigner
from teller.x402 import proof as x402_proof


@dataclass(frozen=True, slots=True)
class SignInput:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    url: str
    method: str
    wallet_id: str
    max_amount: int | None = None
    idempotency_key: str | None = None
    #: This call's protocol preference; only protocols the tenant's policy pays are used.
    protocols: tuple[str, ...] = ()


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


def _parse_cap(text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or not text.isascii():
        raise InvalidArgument(f"max_amount must be an integer string of atomic units, got {text[:40]!r}")
    return int(text)


def sign_input(
    *, status: int, headers: tuple[tuple[str, str], ...], body: bytes, url: str, method: str,
    wallet_id: str, max_amount: str, idempotency_key: str, protocols: Sequence[str] = (),
) -> SignInput:
    if len(idempotency_key) > 200:
        raise InvalidArgument("idempotency_key must be at most 200 characters")
    for p in protocols:
        if p not in policy.PROTOCOLS:
            raise InvalidArgument(f"protocols: unknown protocol {p[:20]!r} (x402 or mpp)")
    return SignInput(status, headers, body, url, method, wallet_id, _parse_cap(max_amount), idempotency_key or None,
                     tuple(protocols))


def _request_hash(req: SignInput, collected: offers_mod.Collected) -> str:
    doc = {
        "wallet": req.wallet_id,
        "url": req.url,
        "method": req.method.upper(),
        "cap": req.max_amount,
        "offers": [o.request_fingerprint() for o in collected.offers],
        "resource": collected.x402.resource if collected.x402 is not None else None,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Prepared:
    """Chain facts an offer needs before it can be signed, read before the
    tenant lock is taken so no RPC runs while other calls wait on it."""

    gas_price: dict[str, int]
    domains: dict[tuple[str, str], tuple[str, str]]


@functools.lru_cache(maxsize=16)
def _payment_insert(keys: tuple[str, ...]) -> str:
    return (f"INSERT INTO payments ({', '.join(keys)}) "  # noqa: S608 - column names from the model
            f"VALUES ({', '.join(':r_' + k for k in keys)})")


# Built once; parameters bound per call (statement construction is not free).
_LOCK = (
    select(Tenant.state, Tenant.frozen, Wallet,
           select(SpendPolicy.document).where(SpendPolicy.tenant_id == Tenant.id, SpendPolicy.wallet_id == "")
           .scalar_subquery().label("tenant_doc"),
           select(SpendPolicy.document).where(SpendPolicy.tenant_id == Tenant.id,
                                              SpendPolicy.wallet_id == Wallet.id)
           .scalar_subquery().label("wallet_doc"),
           AuditHead.seq, AuditHead.hash, ApiToken.secret_hash, ApiToken.revoked_ms)
    .select_from(Tenant)
    .join(Wallet, and_(Wallet.id == bindparam("wallet_id"), Wallet.tenant_id == Tenant.id))
    .join(AuditHead, AuditHead.chain == Tenant.id)
    # The caller's token, checked in this same statement (no separate round trip).
    .outerjoin(ApiToken, and_(ApiToken.id == bindparam("token_id"), ApiToken.tenant_id == Tenant.id))
    .where(Tenant.id == bindparam("tenant_id"))
    .with_for_update(of=[Tenant, AuditHead])
)


class Payments:
    def __init__(
        self, db: Database, vault: Vault, *, networks: Mapping[str, int] | None = None,
        max_challenge_bytes: int = 256 * 1024, idempotency_ttl_s: int = 86400, clock: Clock = system_clock,
        chain: ChainReader | None = None,
    ) -> None:
        self.db = db
        self.vault = vault
        self.networks = dict(networks or {})
        self.max_challenge_bytes = max_challenge_bytes
        self.idempotency_ttl_ms = idempotency_ttl_s * 1000
        self.clock = clock
        self.chain = chain or ChainReader({})
        self._wallets: dict[str, tuple[float, str, str, SealedKey]] = {}

    def sign(self, caller: Caller, req: SignInput, token_secret: str | None = None) -> SignResult:
        """Sign a payment for ``req``. With ``token_secret`` the caller's token is
        verified inside the locking statement (the RPC path); without it the
        caller is taken as already authenticated."""
        if req.status != 402:
            raise InvalidArgument(f"challenge.status must be 402, got {req.status}")
        if not req.wallet_id:
            raise InvalidArgument("wallet_id is required")
        collected = offers_mod.collect(req.headers, req.body, networks=self.networks,
                                       max_bytes=self.max_challenge_bytes,
                                       now=datetime.fromtimestamp(self.clock(), UTC))
        request_hash = _request_hash(req, collected)
        prepared = self._prepare(collected.offers)
        # Sign the likely offer before taking the tenant lock, so the lock is held
        # only for the check-and-reserve. Nothing leaves unless the reservation commits.
        presigned = self._presign(caller, req, collected, prepared)

        denial: TellerError | None = None
        push: tuple[Payment, bytes, offers_mod.Offer] | None = None
        with self.db.transaction() as s:
            locked = self._lock(s, caller, req.wallet_id, token_secret)
            wallet, tenant_frozen, rules = locked.wallet, locked.tenant_frozen, locked.rules
            # Read the clock only once the lock is held, so payments of one tenant
            # are stamped in the order they were reserved.
            now_ms = ms(self.clock)
            if req.idempotency_key:
                previous = self._claimed(s, caller, req.idempotency_key, request_hash, now_ms)
                if previous is not None:
                    return _result(previous)
            scopes = [policy.Scope("tenant", rules.tenant, tenant_frozen,
                                   _used(spend.measure(s, "tenant", caller.tenant_id, rules.tenant.budgets, now_ms)))]
            if rules.wallet is not None or wallet.frozen:
                wallet_rules = rules.wallet or policy.inherit(policy.DEFAULT, rules.tenant)
                scopes.append(policy.Scope("wallet", wallet_rules, wallet.frozen,
                                           _used(spend.measure(s, "wallet", wallet.id, wallet_rules.budgets, now_ms))))
            preference = ([p for p in req.protocols if p in rules.tenant.protocols] if req.protocols
                          else list(rules.tenant.protocols))
            candidates = offers_mod.by_preference(collected.offers, preference)
            chosen: tuple[offers_mod.Offer, policy.Decision] | None = None
            first: tuple[offers_mod.Offer, policy.Decision] | None = None
            for offer in candidates:
                decision = _evaluate(scopes, offer, req)
                if decision.allowed:
                    chosen = (offer, decision)
                    break
                first = first or (offer, decision)
            if chosen is None and first is None:
                offered = sorted({o.protocol for o in collected.offers})
                denial = PermissionDenied(
                    f"the server offers {', '.join(offered)}; the tenant's policy pays only "
                    f"{', '.join(preference) or 'nothing this call asked for'}", reason="protocol_not_allowed")
                audit.record(s, at_ms=now_ms, actor=caller.actor, action="payment.deny", outcome="denied",
                             tenant_id=caller.tenant_id, reason="protocol_not_allowed", wallet_id=wallet.id,
                             resource_url=req.url, details={"offered": offered}, head=locked.audit_head)
            elif chosen is None:
                assert first is not None
                denied, decision = first
                denial = decision.error(_facts(denied, req.url))
                audit.record(
                    s, at_ms=now_ms, actor=caller.actor, action="payment.deny", outcome="denied",
                    tenant_id=caller.tenant_id, reason=decision.reason, wallet_id=wallet.id,
                    amount=denied.amount, asset=denied.asset, network=denied.network,
                    payee=denied.pay_to, resource_url=req.url,
                    details={"protocol": denied.protocol, "scheme": denied.scheme, **denial.metadata},
                    head=locked.audit_head,
                )
            else:
                offer, decision = chosen
                _observe_budgets(caller.tenant_id, scopes, decision.amount_common)
                ctx = _Context(caller, req, wallet, decision, now_ms, request_hash, rules.tenant.mpp_mode,
                               locked.audit_head, presigned if presigned is not None
                               and presigned.fits(offer, wallet) else None)
                payment, raw = self._sign_and_record(s, offer, ctx, prepared)
                observe.SIGNATURES.labels(payment.protocol, payment.scheme).inc()
                if raw is None:
                    return _result(payment)
                push = (payment, raw, offer)
        if push is not None:
            return self._push(caller, *push)
        assert denial is not None
        observe.DENIALS.labels(denial.reason).inc()
        raise denial

    # -- chain facts, before the lock --------------------------------------

    def _prepare(self, candidates: Sequence[offers_mod.Offer]) -> _Prepared:
        gas: dict[str, int] = {}
        domains: dict[tuple[str, str], tuple[str, str]] = {}
        for o in candidates:
            if o.scheme == "tempo/charge" and o.network not in gas:
                try:
                    gas[o.network] = self.chain.gas_price(o.network)
                except FailedPrecondition:
                    pass  # no RPC for it: the offer is refused below if it is the one chosen
            if o.scheme == "evm/charge" and o.charge is not None and o.charge.domain is None:
                key = (o.network, o.asset)
                if key not in domains:
                    try:
                        domains[key] = self.chain.token_domain(o.network, o.asset)
                    except FailedPrecondition:
                        pass
        return _Prepared(gas, domains)

    # -- the locked part ----------------------------------------------------

    def _lock(self, s: Session, caller: Caller, wallet_id: str, token_secret: str | None,
              retry: bool = True) -> _Locked:
        """One statement: lock the tenant row (the check-and-reserve lock) and its
        audit chain head, read the wallet and both policy documents, and (when
        given the secret) check the caller's token."""
        row = s.execute(_LOCK, {"tenant_id": caller.tenant_id, "wallet_id": wallet_id,
                                "token_id": caller.token_id}).first()
        if row is None:
            # Say precisely what is wrong (these raise), else create the missing chain head.
            if token_secret is not None:
                token = s.execute(select(ApiToken.secret_hash, ApiToken.revoked_ms)
                                  .where(ApiToken.id == caller.token_id, ApiToken.tenant_id == caller.tenant_id)).first()
                auth.check_secret(token.secret_hash if token else None, token.revoked_ms if token else None,
                                  token_secret)
            self._wallet(s, caller, wallet_id)
            self._lock_tenant(s, caller.tenant_id)
            audit.locked_head(s, caller.tenant_id)
            if not retry:
                raise Unavailable("could not lock the tenant; retry")
            return self._lock(s, caller, wallet_id, token_secret, retry=False)
        if token_secret is not None:
            auth.check_secret(row.secret_hash, row.revoked_ms, token_secret)
        wallet: Wallet = row.Wallet
        if row.state != "active":
            raise PermissionDenied("tenant is disabled", reason="tenant_disabled")
        if wallet.state != "active":
            raise FailedPrecondition(f"wallet {wallet_id!r} is {wallet.state}")
        return _Locked(wallet, bool(row.frozen), spend.rules_from(row.tenant_doc, row.wallet_doc),
                       (int(row.seq), str(row.hash)))

    def _wallet(self, s: Session, caller: Caller, wallet_id: str) -> Wallet:
        wallet = s.get(Wallet, wallet_id)
        # Another tenant's wallet is reported exactly like a missing one.
        if wallet is None or wallet.tenant_id != caller.tenant_id:
            raise NotFound(f"wallet {wallet_id!r} not found")
        if wallet.state != "active":
            raise FailedPrecondition(f"wallet {wallet_id!r} is {wallet.state}")
        return wallet

    def _lock_tenant(self, s: Session, tenant_id: str) -> bool:
        """Lock the tenant's row for the check-and-reserve; returns its freeze flag."""
        row = s.execute(select(Tenant.state, Tenant.frozen).where(Tenant.id == tenant_id).with_for_update()).first()
        if row is None or row.state != "active":
            raise PermissionDenied("tenant is disabled", reason="tenant_disabled")
        return bool(row.frozen)

    def _claimed(self, s: Session, caller: Caller, key: str, request_hash: str, now_ms: int) -> Payment | None:
        row = s.execute(
            select(Payment).where(Payment.tenant_id == caller.tenant_id, Payment.idempotency_key == key)
        ).scalar_one_or_none()
        if row is None:
            return None
        if row.idempotency_expires_ms is not None and row.idempotency_expires_ms <= now_ms:
            # Expired: release the key so this request is treated as new.
            s.execute(update(Payment).where(Payment.id == row.id).values(idempotency_key=None))
            return None
        if row.request_hash != request_hash:
            raise AlreadyExists(f"idempotency_key {key!r} was already used for a different request")
        if not row.header_value:
            # A push payment whose broadcast is under way or failed: there is no proof to return.
            if row.state == "failed":
                raise FailedPrecondition(f"payment {row.id} failed: {row.state_reason}", reason="payment_failed")
            raise Unavailable(f"payment {row.id} is still being broadcast; retry shortly")
        return row

    def _presign(self, caller: Caller, req: SignInput, collected: offers_mod.Collected,
                 prepared: _Prepared) -> _Presigned | None:
        candidates = offers_mod.by_preference(collected.offers, req.protocols or policy.PROTOCOLS)
        if not candidates:
            return None
        offer = candidates[0]
        known = self._wallet_info(caller.tenant_id, req.wallet_id)
        if known is None:
            return None
        address, sealed = known
        try:
            signer = self.vault.signer(caller.tenant_id, req.wallet_id, address, sealed)
        except TellerError:
            return None  # the locked path reports it
        now_s = int(self.clock())
        if offer.x402 is not None:
            chosen = offer.x402
            auth = eip3009.authorize(signer.address, chosen.pay_to, chosen.amount, now_s, chosen.timeout_s,
                                     os.urandom(32))
            return _Presigned(offer, req.wallet_id, address, auth=auth,
                              signature=signer.sign_typed_data(eip3009.typed_data(chosen.token, auth)))
        req_charge, gas_price = offer.charge, prepared.gas_price.get(offer.network)
        if (offer.scheme == "tempo/charge" and offer.mpp is not None and req_charge is not None
                and req_charge.amount > 0 and not req_charge.fee_payer and gas_price is not None):
            try:
                tx = mpp_charge.tempo_transaction(req_charge, offer.mpp, now_s=now_s,
                                                  gas_limit=mpp_charge.gas_limit(req_charge), gas_price=gas_price)
            except TellerError:
                return None
            return _Presigned(offer, req.wallet_id, address, tx=tx, raw=signer.sign_tempo_transaction(tx))
        return None

    def _wallet_info(self, tenant_id: str, wallet_id: str) -> tuple[str, SealedKey] | None:
        """A wallet's address and sealed key, remembered briefly: they never change
        except by re-wrapping, and the locked path re-reads the row anyway."""
        now = time.monotonic()
        hit = self._wallets.get(wallet_id)
        if hit is not None and hit[0] > now and hit[1] == tenant_id:
            return hit[2], hit[3]
        with self.db.read() as s:
            w = s.get(Wallet, wallet_id)
            if w is None or w.tenant_id != tenant_id:
                return None
            info = (w.address, SealedKey(w.kek_version, w.wrapped_data_key, w.key_ciphertext))
        self._wallets[wallet_id] = (now + 30.0, tenant_id, *info)
        return info

    def _signer(self, caller: Caller, wallet: Wallet) -> WalletSigner:
        return self.vault.signer(caller.tenant_id, wallet.id, wallet.address,
                                 SealedKey(wallet.kek_version, wallet.wrapped_data_key, wallet.key_ciphertext))

    def _sign_and_record(self, s: Session, offer: offers_mod.Offer, ctx: _Context,
                         prepared: _Prepared) -> tuple[Payment, bytes | None]:
        """Sign the chosen offer and insert its payment row and audit row. Returns
        the row and, for a push payment, the transaction still to broadcast."""
        signer = self._signer(ctx.caller, ctx.wallet)
        raw: bytes | None = None
        if offer.x402 is not None:
            row, details = self._x402(signer, offer, ctx)
        elif offer.scheme == "evm/charge":
            row, details = self._evm_charge(signer, offer, ctx, prepared)
        else:
            row, details, raw = self._tempo_charge(signer, offer, ctx, prepared)
        if offer.x402 is None and raw is None:
            # MPP proofs are deterministic: an evm nonce is bound to its challenge, and a
            # Tempo transaction signed twice within one second is the same bit for bit.
            # The chain takes only one, so return that payment rather than reserve twice.
            existing = s.execute(select(Payment).where(Payment.wallet_id == ctx.wallet.id,
                                                       Payment.nonce == row.nonce)).scalar_one_or_none()
            if existing is not None:
                return existing, None
        # Inserted with its audit event (one statement on PostgreSQL); the row object
        # is returned as a value, not tracked by the session.
        values = {c.key: getattr(row, c.key) for c in Payment.__table__.columns if getattr(row, c.key) is not None}
        spent = row.amount_common if row.state == spend.SPENT else 0
        buckets = spend.bucket_params(row.tenant_id, row.wallet_id, row.created_ms, row.amount_common - spent, spent)
        audit.record(
            s, at_ms=ctx.now_ms, actor=ctx.caller.actor, action="payment.sign", tenant_id=ctx.caller.tenant_id,
            wallet_id=ctx.wallet.id, payment_id=row.id, amount=row.amount, asset=row.asset,
            network=row.network, payee=row.pay_to, resource_url=ctx.req.url,
            details={"protocol": offer.protocol, "scheme": offer.scheme, "nonce": row.nonce,
                     "valid_before": row.valid_before, **details},
            head=ctx.audit_head,
            also=((_payment_insert(tuple(values)), {f"r_{k}": v for k, v in values.items()}),
                  (spend.BUCKET_UPSERT_SQL, buckets)),
        )
        return row, raw

    def _row(self, offer: offers_mod.Offer, ctx: _Context, *, version: int, nonce: str, valid_before: int,
             header_name: str, header_value: str, token_domain: tuple[str, str] = ("", "")) -> Payment:
        req = ctx.req
        return Payment(
            id=str(uuid.uuid4()), tenant_id=ctx.caller.tenant_id, wallet_id=ctx.wallet.id, protocol=offer.protocol,
            version=version, scheme=offer.scheme, network=offer.network, asset=offer.asset,
            asset_name=token_domain[0], asset_version=token_domain[1], pay_to=offer.pay_to, amount=offer.amount,
            amount_common=ctx.decision.amount_common, resource_url=req.url, nonce=nonce, valid_before=valid_before,
            state="signed", header_name=header_name, header_value=header_value,
            idempotency_key=req.idempotency_key,
            idempotency_expires_ms=(ctx.now_ms + self.idempotency_ttl_ms) if req.idempotency_key else None,
            request_hash=ctx.request_hash, created_ms=ctx.now_ms, updated_ms=ctx.now_ms,
        )

    def _x402(self, signer: WalletSigner, offer: offers_mod.Offer, ctx: _Context) -> tuple[Payment, dict[str, Any]]:
        chosen, chall = offer.x402, offer.x402_challenge
        assert chosen is not None and chall is not None
        pre = ctx.presigned
        if pre is not None and pre.auth is not None and pre.signature is not None:
            auth, signature = pre.auth, pre.signature
        else:
            auth = eip3009.authorize(signer.address, chosen.pay_to, chosen.amount, ctx.now_ms // 1000,
                                     chosen.timeout_s, os.urandom(32))
            signature = signer.sign_typed_data(eip3009.typed_data(chosen.token, auth))
        name, value = x402_proof.payment_header(chall, chosen, auth, signature)
        row = self._row(offer, ctx, version=chall.version, nonce="0x" + auth.nonce.hex(),
                        valid_before=auth.valid_before, header_name=name, header_value=value,
                        token_domain=(chosen.token.name, chosen.token.version))
        return row, {"version": chall.version}

    def _evm_charge(self, signer: WalletSigner, offer: offers_mod.Offer, ctx: _Context,
                    prepared: _Prepared) -> tuple[Payment, dict[str, Any]]:
        ch, req = offer.mpp, offer.charge
        assert ch is not None and req is not None
        domain = req.domain or prepared.domains.get((offer.network, offer.asset))
        if domain is None:
            raise FailedPrecondition(f"{offer.asset} on {offer.network}: the challenge names no EIP-712 domain and "
                                     "no RPC endpoint is configured to read it (set rpc_urls)")
        token = eip3009.Token(req.chain_id, req.currency, *domain)
        auth = mpp_charge.evm_authorization(req, ch, signer.address, ctx.now_ms // 1000)
        signature = signer.sign_typed_data(eip3009.typed_data(token, auth))
        payload = {"type": "authorization", **auth.to_json(), "signature": "0x" + signature.hex()}
        value = mpp_charge.credential(ch, payload, mpp_charge.did_pkh(req.chain_id, signer.address))
        row = self._row(offer, ctx, version=1, nonce="0x" + auth.nonce.hex(), valid_before=auth.valid_before,
                        header_name=ch.header, header_value=value, token_domain=domain)
        return row, {"method": ch.method, "intent": ch.intent, "challenge_id": ch.id, "realm": ch.realm}

    def _tempo_charge(self, signer: WalletSigner, offer: offers_mod.Offer, ctx: _Context,
                      prepared: _Prepared) -> tuple[Payment, dict[str, Any], bytes | None]:
        ch, req = offer.mpp, offer.charge
        assert ch is not None and req is not None
        if req.fee_payer:
            raise FailedPrecondition(f"Payment challenge {ch.id[:40]!r}: sponsored fees (feePayer) are not "
                                     "supported; Teller wallets pay their own fees")
        source = mpp_charge.did_pkh(req.chain_id, signer.address)
        if req.amount == 0:
            # Nothing moves: an EIP-712 proof that this wallet answers this challenge.
            signature = signer.sign_typed_data(mpp_charge.proof_typed_data(ch, req, signer.address))
            value = mpp_charge.credential(ch, {"type": "proof", "signature": "0x" + signature.hex()}, source)
            row = self._row(offer, ctx, version=1, nonce="0x" + keccak(text=f"proof:{ch.id}").hex(),
                            valid_before=int(ch.expires_at.timestamp()) if ch.expires_at else ctx.now_ms // 1000,
                            header_name=ch.header, header_value=value)
            row.state = "settled"  # nothing moves: an amount of zero, spent at once
            return row, {"method": ch.method, "intent": ch.intent, "mode": "proof", "challenge_id": ch.id,
                         "realm": ch.realm}, None
        gas_price = prepared.gas_price.get(offer.network)
        if gas_price is None:
            raise FailedPrecondition(f"no RPC endpoint configured for {offer.network}: Tempo payments need the "
                                     "chain's gas price (set rpc_urls)")
        mode = ctx.mpp_mode if ctx.mpp_mode in req.modes else req.modes[0]
        pre = ctx.presigned
        if pre is not None and pre.tx is not None and pre.raw is not None:
            tx, raw = pre.tx, pre.raw
        else:
            tx = mpp_charge.tempo_transaction(req, ch, now_s=ctx.now_ms // 1000,
                                              gas_limit=mpp_charge.gas_limit(req), gas_price=gas_price)
            raw = signer.sign_tempo_transaction(tx)
        tx_hash = "0x" + keccak(raw).hex()
        details: dict[str, Any] = {"method": ch.method, "intent": ch.intent, "mode": mode, "challenge_id": ch.id,
                                   "realm": ch.realm, "tx_hash": tx_hash}
        if mode == "pull":
            value = mpp_charge.credential(ch, {"type": "transaction", "signature": "0x" + raw.hex()}, source)
            row = self._row(offer, ctx, version=1, nonce=tx_hash, valid_before=int(tx.valid_before or 0),
                            header_name=ch.header, header_value=value)
            return row, details, None
        # Push: the reservation commits first; the credential exists once the chain has the transfer.
        row = self._row(offer, ctx, version=1, nonce=tx_hash, valid_before=int(tx.valid_before or 0),
                        header_name=ch.header, header_value="")
        return row, details, raw

    # -- push mode, after the reservation committed -------------------------

    def _push(self, caller: Caller, payment: Payment, raw: bytes, offer: offers_mod.Offer) -> SignResult:
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
                assert offer.mpp is not None and offer.charge is not None
                wallet = s.get(Wallet, row.wallet_id)
                assert wallet is not None
                row.header_value = mpp_charge.credential(
                    offer.mpp, {"type": "hash", "hash": mined.tx_hash},
                    mpp_charge.did_pkh(offer.charge.chain_id, wallet.address))
                lifecycle.advance(s, row, lifecycle.Change("settled", release=False, tx_hash=mined.tx_hash),
                                  from_states=lifecycle.LIVE, now_ms=now, actor=caller.actor)
                fee = -(-mined.gas_used * mined.gas_price // 10**12)  # fee-token base units, rounded up
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
                lifecycle.advance(s, row, lifecycle.Change("failed", release=True, reason=failure,
                                                           tx_hash=mined.tx_hash),
                                  from_states=lifecycle.LIVE, now_ms=now, actor=caller.actor)
            else:
                # Unknown fate: reserved until the reconciler sees it mined or expired.
                lifecycle.advance(s, row, lifecycle.Change("failed", release=False, reason=(failure or "")[:200]),
                                  from_states=lifecycle.LIVE, now_ms=now, actor=caller.actor)
        raise FailedPrecondition(f"push payment {payment.id} failed on {payment.network}: {failure}",
                                 reason="payment_failed")


@dataclass(frozen=True, slots=True)
class _Presigned:
    """A proof signed before the lock for the offer the tenant most likely pays."""

    offer: offers_mod.Offer
    wallet_id: str
    address: str
    auth: eip3009.Authorization | None = None
    signature: bytes | None = None
    tx: Any = None  # pytempo TempoTransaction
    raw: bytes | None = None

    def fits(self, offer: offers_mod.Offer, wallet: Wallet) -> bool:
        return offer is self.offer and wallet.id == self.wallet_id and wallet.address == self.address


@dataclass(frozen=True, slots=True)
class _Locked:
    wallet: Wallet
    tenant_frozen: bool
    rules: spend.Rules
    audit_head: tuple[int, str]


@dataclass(frozen=True, slots=True)
class _Context:
    caller: Caller
    req: SignInput
    wallet: Wallet
    decision: policy.Decision
    now_ms: int
    request_hash: str
    mpp_mode: str
    audit_head: tuple[int, str]
    presigned: _Presigned | None = None


def _facts(offer: offers_mod.Offer, url: str, payee: str | None = None) -> policy.Payment:
    return policy.Payment(offer.network, offer.asset, offer.amount, payee or offer.pay_to, url)


def _evaluate(scopes: Sequence[policy.Scope], offer: offers_mod.Offer, req: SignInput) -> policy.Decision:
    """The policy's decision; split recipients must pass the payee lists too."""
    decision = policy.evaluate(scopes, _facts(offer, req.url), req.max_amount)
    for payee in offer.other_payees if decision.allowed else ():
        split = policy.evaluate(scopes, _facts(offer, req.url, payee), req.max_amount)
        if not split.allowed:
            return split
    return decision


def _observe_budgets(tenant_id: str, scopes: Sequence[policy.Scope], amount: int) -> None:
    for scope in scopes:
        for budget in scope.policy.budgets:
            used = scope.used.get(budget.name, 0) + amount
            observe.BUDGET.labels(tenant_id, scope.name, budget.name).set(used / budget.limit if budget.limit else 1.0)


def _used(windows: dict[str, spend.WindowUse]) -> dict[str, int]:
    return {name: w.used for name, w in windows.items()}


def _result(p: Payment) -> SignResult:
    return SignResult(p.header_name, p.header_value, p.id, p.protocol, p.version, p.scheme, p.network,
                      p.asset, p.amount, p.pay_to)


__all__ = ["Payments", "SignInput", "SignResult", "sign_input"]
