"""Operator actions on tenants, tokens, wallets and policies. Each one writes
its audit row in the same transaction as the change it records."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from teller import audit, auth
from teller.clock import Clock, ms, system_clock, utc_day_bounds
from teller.db import Database
from teller.db.models import ApiToken, Payment, SpendPolicy, Tenant, Wallet
from teller.errors import AlreadyExists, InvalidArgument, NotFound
from teller.policy import Policy
from teller.vault import Vault

OPERATOR = "operator"
SPENDING_STATES = ("signed", "settled")


@dataclass(frozen=True, slots=True)
class WindowSpend:
    window: str
    limit: int | None
    spent: int
    start_ms: int
    end_ms: int

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.spent, 0)


def _name(value: str, field: str) -> str:
    value = value.strip()
    if not value or len(value) > 200:
        raise InvalidArgument(f"{field} must be 1 to 200 characters")
    return value


def get_tenant(session: Session, tenant_id: str) -> Tenant:
    tenant = session.get(Tenant, tenant_id) if tenant_id else None
    if tenant is None:
        raise NotFound(f"tenant {tenant_id!r} not found")
    return tenant


def policy_of(session: Session, tenant_id: str) -> Policy:
    row = session.get(SpendPolicy, tenant_id)
    if row is None:
        return Policy()
    return Policy(row.per_payment_max, row.daily_budget)


def spent_since(session: Session, tenant_id: str, since_ms: int) -> int:
    total = session.execute(
        select(func.coalesce(func.sum(Payment.amount), 0)).where(
            Payment.tenant_id == tenant_id,
            Payment.created_ms >= since_ms,
            Payment.state.in_(SPENDING_STATES),
        )
    ).scalar_one()
    return int(total)


def spend_status(session: Session, tenant_id: str, now_ms: int) -> list[WindowSpend]:
    policy = policy_of(session, tenant_id)
    start, end = utc_day_bounds(now_ms)
    return [WindowSpend("day", policy.daily_budget, spent_since(session, tenant_id, start), start, end)]


class Admin:
    def __init__(self, db: Database, vault: Vault, clock: Clock = system_clock) -> None:
        self.db = db
        self.vault = vault
        self.clock = clock

    def create_tenant(self, name: str) -> Tenant:
        name = _name(name, "name")
        now = ms(self.clock)
        try:
            with self.db.transaction() as s:
                tenant = Tenant(id=str(uuid.uuid4()), name=name, state="active", created_ms=now)
                s.add(tenant)
                s.flush()
                audit.record(s, at_ms=now, actor=OPERATOR, action="tenant.create", tenant_id=tenant.id,
                             details={"name": name})
        except IntegrityError:
            raise AlreadyExists(f"a tenant named {name!r} already exists") from None
        return tenant

    def disable_tenant(self, tenant_id: str) -> Tenant:
        now = ms(self.clock)
        with self.db.transaction() as s:
            tenant = get_tenant(s, tenant_id)
            old = tenant.state
            tenant.state = "disabled"
            audit.record(s, at_ms=now, actor=OPERATOR, action="tenant.disable", tenant_id=tenant_id,
                         details={"old_state": old, "new_state": "disabled"})
        return tenant

    def list_tenants(self) -> list[Tenant]:
        with self.db.transaction() as s:
            return list(s.scalars(select(Tenant).order_by(Tenant.created_ms, Tenant.id)))

    def issue_token(self, tenant_id: str, description: str = "") -> tuple[str, str]:
        now = ms(self.clock)
        token_id, token, digest = auth.new_token()
        with self.db.transaction() as s:
            get_tenant(s, tenant_id)
            s.add(ApiToken(id=token_id, tenant_id=tenant_id, secret_hash=digest,
                           description=description[:200], created_ms=now))
            audit.record(s, at_ms=now, actor=OPERATOR, action="token.issue", tenant_id=tenant_id,
                         details={"token_id": token_id, "description": description[:200]})
        return token_id, token

    def revoke_token(self, token_id: str) -> None:
        now = ms(self.clock)
        with self.db.transaction() as s:
            row = s.get(ApiToken, token_id) if token_id else None
            if row is None:
                raise NotFound(f"token {token_id!r} not found")
            if row.revoked_ms is None:
                row.revoked_ms = now
            audit.record(s, at_ms=now, actor=OPERATOR, action="token.revoke", tenant_id=row.tenant_id,
                         details={"token_id": token_id})

    def create_wallet(self, tenant_id: str, label: str = "", private_key: str | None = None) -> Wallet:
        now = ms(self.clock)
        wallet_id = str(uuid.uuid4())
        imported = private_key is not None
        try:
            with self.db.transaction() as s:
                get_tenant(s, tenant_id)
                new = (self.vault.import_key(tenant_id, wallet_id, private_key) if private_key is not None
                       else self.vault.generate(tenant_id, wallet_id))
                wallet = Wallet(
                    id=wallet_id, tenant_id=tenant_id, label=label[:200], address=new.address, state="active",
                    kek_version=new.sealed.kek_version, wrapped_data_key=new.sealed.wrapped_data_key,
                    key_ciphertext=new.sealed.ciphertext, created_ms=now,
                )
                s.add(wallet)
                s.flush()
                audit.record(s, at_ms=now, actor=OPERATOR, action="wallet.import" if imported else "wallet.create",
                             tenant_id=tenant_id, wallet_id=wallet_id,
                             details={"address": new.address, "label": label[:200]})
        except IntegrityError:
            raise AlreadyExists("this tenant already has a wallet with that address") from None
        return wallet

    def list_wallets(self, tenant_id: str) -> list[Wallet]:
        with self.db.transaction() as s:
            get_tenant(s, tenant_id)
            return list(s.scalars(select(Wallet).where(Wallet.tenant_id == tenant_id).order_by(Wallet.created_ms)))

    def set_policy(self, tenant_id: str, policy: Policy) -> int:
        now = ms(self.clock)
        with self.db.transaction() as s:
            get_tenant(s, tenant_id)
            old = policy_of(s, tenant_id)
            row = s.get(SpendPolicy, tenant_id)
            if row is None:
                row = SpendPolicy(tenant_id=tenant_id, updated_ms=now)
                s.add(row)
            row.per_payment_max = policy.per_payment_max
            row.daily_budget = policy.daily_budget
            row.updated_ms = now
            audit.record(s, at_ms=now, actor=OPERATOR, action="policy.set", tenant_id=tenant_id,
                         details={"old": _policy_json(old), "new": _policy_json(policy)})
        return now

    def get_policy(self, tenant_id: str) -> tuple[Policy, int]:
        with self.db.transaction() as s:
            get_tenant(s, tenant_id)
            row = s.get(SpendPolicy, tenant_id)
            return policy_of(s, tenant_id), (row.updated_ms if row else 0)

    def spend(self, tenant_id: str) -> list[WindowSpend]:
        with self.db.transaction() as s:
            get_tenant(s, tenant_id)
            return spend_status(s, tenant_id, ms(self.clock))


def _policy_json(p: Policy) -> dict[str, str | None]:
    return {
        "per_payment_max": None if p.per_payment_max is None else str(p.per_payment_max),
        "daily_budget": None if p.daily_budget is None else str(p.daily_budget),
    }
