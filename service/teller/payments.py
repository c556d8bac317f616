"""The Sign flow: challenge in, proof out, with the spend limit, the idempotency
claim and the audit row committed in one transaction before the proof leaves.

Concurrency: the tenant row is locked (SELECT ... FOR UPDATE on PostgreSQL,
BEGIN IMMEDIATE on SQLite) for the check-and-reserve, so two calls can never
both spend the last of a budget. Other tenants are not blocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from teller import audit, eip3009, policy, spend
from teller.auth import Caller
from teller.clock import Clock, ms, system_clock
from teller.db import Database
from teller.db.models import Payment, Tenant, Wallet
from teller.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TellerError,
)
from teller.vault import SealedKey, Vault
from teller.x402 import challenge as x402_challenge
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
    wallet_id: str, max_amount: str, idempotency_key: str,
) -> SignInput:
    if len(idempotency_key) > 200:
        raise InvalidArgument("idempotency_key must be at most 200 characters")
    return SignInput(status, headers, body, url, method, wallet_id, _parse_cap(max_amount), idempotency_key or None)


def _request_hash(req: SignInput, chall: x402_challenge.X402Challenge) -> str:
    doc = {
        "wallet": req.wallet_id,
        "url": req.url,
        "method": req.method.upper(),
        "cap": req.max_amount,
        "version": chall.version,
        "accepts": [dict(o.raw) for o in chall.offers],
        "resource": chall.resource,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class Payments:
    def __init__(
        self, db: Database, vault: Vault, *, networks: Mapping[str, int] | None = None,
        max_challenge_bytes: int = 256 * 1024, idempotency_ttl_s: int = 86400, clock: Clock = system_clock,
    ) -> None:
        self.db = db
        self.vault = vault
        self.networks = dict(networks or {})
        self.max_challenge_bytes = max_challenge_bytes
        self.idempotency_ttl_ms = idempotency_ttl_s * 1000
        self.clock = clock

    def sign(self, caller: Caller, req: SignInput) -> SignResult:
        if req.status != 402:
            raise InvalidArgument(f"challenge.status must be 402, got {req.status}")
        if not req.wallet_id:
            raise InvalidArgument("wallet_id is required")
        chall = x402_challenge.parse(req.headers, req.body, self.max_challenge_bytes)
        if chall is None:
            raise InvalidArgument(
                "challenge carries no x402 payment requirements "
                "(no PAYMENT-REQUIRED header and no x402Version in the body)"
            )
        offers = x402_proof.payable_offers(chall, self.networks)
        request_hash = _request_hash(req, chall)

        denial: TellerError | None = None
        with self.db.transaction() as s:
            wallet = self._wallet(s, caller, req.wallet_id)
            tenant_frozen = self._lock_tenant(s, caller.tenant_id)
            # Read the clock only once the lock is held, so payments of one tenant
            # are stamped in the order they were reserved.
            now_ms = ms(self.clock)
            if req.idempotency_key:
                previous = self._claimed(s, caller, req.idempotency_key, request_hash, now_ms)
                if previous is not None:
                    return _result(previous)
            rules = spend.load_rules(s, caller.tenant_id, wallet.id)
            scopes = [policy.Scope("tenant", rules.tenant, tenant_frozen,
                                   _used(spend.measure(s, "tenant", caller.tenant_id, rules.tenant.budgets, now_ms)))]
            if rules.wallet is not None or wallet.frozen:
                wallet_rules = rules.wallet or policy.inherit(policy.DEFAULT, rules.tenant)
                scopes.append(policy.Scope("wallet", wallet_rules, wallet.frozen,
                                           _used(spend.measure(s, "wallet", wallet.id, wallet_rules.budgets, now_ms))))
            chosen: tuple[x402_proof.Payable, policy.Decision] | None = None
            first: tuple[x402_proof.Payable, policy.Decision] | None = None
            for offer in offers:
                decision = policy.evaluate(scopes, _facts(offer, req.url), req.max_amount)
                if decision.allowed:
                    chosen = (offer, decision)
                    break
                first = first or (offer, decision)
            if chosen is None:
                assert first is not None
                denied, decision = first
                denial = decision.error(_facts(denied, req.url))
                audit.record(
                    s, at_ms=now_ms, actor=caller.actor, action="payment.deny", outcome="denied",
                    tenant_id=caller.tenant_id, reason=decision.reason, wallet_id=wallet.id,
                    amount=denied.amount, asset=denied.token.address, network=denied.network,
                    payee=denied.pay_to, resource_url=req.url, details={"protocol": "x402", **denial.metadata},
                )
            else:
                offer, decision = chosen
                payment = self._sign_and_record(s, caller, req, chall, offer, decision, wallet, now_ms, request_hash)
                return _result(payment)
        raise denial

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
        return row

    def _sign_and_record(
        self, s: Session, caller: Caller, req: SignInput, chall: x402_challenge.X402Challenge,
        chosen: x402_proof.Payable, decision: policy.Decision, wallet: Wallet, now_ms: int, request_hash: str,
    ) -> Payment:
        signer = self.vault.signer(
            caller.tenant_id, wallet.id, wallet.address,
            SealedKey(wallet.kek_version, wallet.wrapped_data_key, wallet.key_ciphertext),
        )
        auth = eip3009.authorize(signer.address, chosen.pay_to, chosen.amount, now_ms // 1000,
                                 chosen.timeout_s, os.urandom(32))
        signature = signer.sign_typed_data(eip3009.typed_data(chosen.token, auth))
        name, value = x402_proof.payment_header(chall, chosen, auth, signature)
        payment = Payment(
            id=str(uuid.uuid4()), tenant_id=caller.tenant_id, wallet_id=wallet.id, protocol="x402",
            version=chall.version, scheme=chosen.offer.scheme, network=chosen.network,
            asset=chosen.token.address, asset_name=chosen.token.name, asset_version=chosen.token.version,
            pay_to=chosen.pay_to, amount=chosen.amount,
            amount_common=decision.amount_common, resource_url=req.url,
            nonce="0x" + auth.nonce.hex(), valid_before=auth.valid_before, state="signed",
            header_name=name, header_value=value, idempotency_key=req.idempotency_key,
            idempotency_expires_ms=(now_ms + self.idempotency_ttl_ms) if req.idempotency_key else None,
            request_hash=request_hash, created_ms=now_ms, updated_ms=now_ms,
        )
        s.add(payment)
        audit.record(
            s, at_ms=now_ms, actor=caller.actor, action="payment.sign", tenant_id=caller.tenant_id,
            wallet_id=wallet.id, payment_id=payment.id, amount=chosen.amount, asset=chosen.token.address,
            network=chosen.network, payee=chosen.pay_to, resource_url=req.url,
            details={"protocol": "x402", "version": chall.version, "scheme": chosen.offer.scheme,
                     "nonce": payment.nonce, "valid_before": auth.valid_before},
        )
        s.flush()
        return payment


def _facts(offer: x402_proof.Payable, url: str) -> policy.Payment:
    return policy.Payment(offer.network, offer.token.address, offer.amount, offer.pay_to, url)


def _used(windows: dict[str, spend.WindowUse]) -> dict[str, int]:
    return {name: w.used for name, w in windows.items()}


def _result(p: Payment) -> SignResult:
    return SignResult(p.header_name, p.header_value, p.id, p.protocol, p.version, p.scheme, p.network,
                      p.asset, p.amount, p.pay_to)


__all__ = ["Payments", "SignInput", "SignResult", "sign_input"]
