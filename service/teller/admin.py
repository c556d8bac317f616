"""Operator actions on tenants, tokens, wallets and policies. Each one writes
its audit row in the same transaction as the change it records."""

from __future__ import annotations

import json
import uuid
from typing import Any, NoReturn

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from teller import auth
from teller.audit import events as audit
from teller.clock import Clock, ms, system_clock
from teller.db import Database
from teller.db.models import ApiToken, SpendPolicy, Tenant, Wallet, WalletAddress
from teller.errors import AlreadyExists, InvalidArgument, NotFound
from teller.spend.parse import parse, to_document
from teller.spend.rules import DEFAULT
from teller.spend.store import WindowReport, report
from teller.vault import Vault

OPERATOR = "operator"


def _name(value: str, field: str) -> str:
    value = value.strip()
    if not value or len(value) > 200:
        raise InvalidArgument(f"{field} must be 1 to 200 characters")
    return value


class _HeldElsewhere(Exception):
    def __init__(self, tenant_id: str) -> None:
        super().__init__(tenant_id)
        self.tenant_id = tenant_id


def get_tenant(session: Session, tenant_id: str) -> Tenant:
    tenant = session.get(Tenant, tenant_id) if tenant_id else None
    if tenant is None:
        raise NotFound(f"tenant {tenant_id!r} not found")
    return tenant


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
                audit.record(s, at_ms=now, actor=auth.operator_actor(), action="tenant.create", tenant_id=tenant.id,
                             details={"name": name})
        except IntegrityError:
            raise AlreadyExists(f"a tenant named {name!r} already exists") from None
        return tenant

    def disable_tenant(self, tenant_id: str) -> Tenant:
        return self._set_tenant_state(tenant_id, "disabled", "tenant.disable")

    def enable_tenant(self, tenant_id: str) -> Tenant:
        return self._set_tenant_state(tenant_id, "active", "tenant.enable")

    def _set_tenant_state(self, tenant_id: str, state: str, action: str) -> Tenant:
        now = ms(self.clock)
        with self.db.transaction() as s:
            tenant = get_tenant(s, tenant_id)
            old = tenant.state
            tenant.state = state
            audit.record(s, at_ms=now, actor=auth.operator_actor(), action=action, tenant_id=tenant_id,
                         details={"old_state": old, "new_state": state})
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
            audit.record(s, at_ms=now, actor=auth.operator_actor(), action="token.issue", tenant_id=tenant_id,
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
            audit.record(s, at_ms=now, actor=auth.operator_actor(), action="token.revoke", tenant_id=row.tenant_id,
                         details={"token_id": token_id})

    def list_tokens(self, tenant_id: str) -> list[ApiToken]:
        with self.db.transaction() as s:
            get_tenant(s, tenant_id)
            return list(s.scalars(select(ApiToken).where(ApiToken.tenant_id == tenant_id)
                                  .order_by(ApiToken.created_ms, ApiToken.id)))

    def rotate_token(self, token_id: str) -> tuple[str, str]:
        """Revoke a token and issue its successor in one transaction, so there is
        never a moment with both or neither (callers switch to the new one)."""
        now = ms(self.clock)
        new_id, token, digest = auth.new_token()
        with self.db.transaction() as s:
            row = s.get(ApiToken, token_id) if token_id else None
            if row is None:
                raise NotFound(f"token {token_id!r} not found")
            if row.revoked_ms is not None:
                raise InvalidArgument(f"token_id {token_id!r} is already revoked: issue a new one instead")
            get_tenant(s, row.tenant_id)
            row.revoked_ms = now
            s.add(ApiToken(id=new_id, tenant_id=row.tenant_id, secret_hash=digest, description=row.description,
                           created_ms=now))
            audit.record(s, at_ms=now, actor=auth.operator_actor(), action="token.rotate", tenant_id=row.tenant_id,
                         details={"old_token_id": token_id, "new_token_id": new_id})
        return new_id, token

    def create_wallet(self, tenant_id: str, label: str = "", private_key: str | None = None) -> Wallet:
        now = ms(self.clock)
        wallet_id = str(uuid.uuid4())
        imported = private_key is not None
        new = (self.vault.import_key(tenant_id, wallet_id, private_key) if private_key is not None
               else self.vault.generate(tenant_id, wallet_id))
        try:
            with self.db.transaction() as s:
                get_tenant(s, tenant_id)
                holder = s.get(WalletAddress, new.address)
                if holder is not None and holder.tenant_id != tenant_id:
                    raise _HeldElsewhere(holder.tenant_id)
                wallet = Wallet(
                    id=wallet_id, tenant_id=tenant_id, label=label[:200], address=new.address, state="active",
                    kek_version=new.sealed.kek_version, wrapped_data_key=new.sealed.wrapped_data_key,
                    key_ciphertext=new.sealed.ciphertext, created_ms=now,
                )
                s.add(wallet)
                s.flush()
                s.add(WalletAddress(address=new.address, tenant_id=tenant_id, wallet_id=wallet_id))
                s.flush()
                audit.record(s, at_ms=now, actor=auth.operator_actor(), action="wallet.import" if imported else "wallet.create",
                             tenant_id=tenant_id, wallet_id=wallet_id,
                             details={"address": new.address, "label": label[:200]})
        except _HeldElsewhere as held:
            self._refuse_shared(tenant_id, new.address, held.tenant_id, now)
        except IntegrityError:
            # A race with another import of the same key: whoever committed first holds it.
            with self.db.transaction() as s:
                holder = s.get(WalletAddress, new.address)
                other = holder.tenant_id if holder is not None and holder.tenant_id != tenant_id else None
            if other is not None:
                self._refuse_shared(tenant_id, new.address, other, now)
            raise AlreadyExists("this tenant already has a wallet with that address") from None
        return wallet

    def _refuse_shared(self, tenant_id: str, address: str, holder: str, now: int) -> NoReturn:
        """One key in two tenants would be two budgets over one wallet: refused, and
        the attempt is audited in the importing tenant's chain (nothing else is written)."""
        with self.db.transaction() as s:
            audit.record(s, at_ms=now, actor=auth.operator_actor(), action="wallet.import", outcome="denied",
                         reason="address_held_by_another_tenant", tenant_id=tenant_id,
                         details={"address": address, "held_by_tenant": holder})
        raise AlreadyExists(f"wallet address {address} already belongs to another tenant: a key can be held by one "
                            "tenant only (two tenants would be two budgets over one wallet)",
                            reason="address_held_by_another_tenant")

    def list_wallets(self, tenant_id: str) -> list[Wallet]:
        with self.db.transaction() as s:
            get_tenant(s, tenant_id)
            return list(s.scalars(select(Wallet).where(Wallet.tenant_id == tenant_id).order_by(Wallet.created_ms)))

    def disable_wallet(self, tenant_id: str, wallet_id: str) -> Wallet:
        now = ms(self.clock)
        if not wallet_id:
            raise InvalidArgument("wallet_id is required")
        with self.db.transaction() as s:
            wallet = self._scope(s, tenant_id, wallet_id)
            assert wallet is not None
            old = wallet.state
            wallet.state = "disabled"
            audit.record(s, at_ms=now, actor=auth.operator_actor(), action="wallet.disable", tenant_id=tenant_id,
                         wallet_id=wallet_id, details={"old_state": old, "new_state": "disabled"})
        return wallet

    def _scope(self, s: Session, tenant_id: str, wallet_id: str) -> Wallet | None:
        get_tenant(s, tenant_id)
        if not wallet_id:
            return None
        wallet = s.get(Wallet, wallet_id)
        if wallet is None or wallet.tenant_id != tenant_id:
            raise NotFound(f"wallet {wallet_id!r} not found for tenant {tenant_id!r}")
        return wallet

    def set_policy(self, tenant_id: str, document: str | dict[str, Any], wallet_id: str = "") -> tuple[str, int]:
        """Validate and store a policy document; returns (canonical document, updated_ms)."""
        rules = parse(document, wallet=bool(wallet_id))
        canonical = json.dumps(to_document(rules, wallet=bool(wallet_id)), sort_keys=True)
        now = ms(self.clock)
        with self.db.transaction() as s:
            self._scope(s, tenant_id, wallet_id)
            row = s.get(SpendPolicy, (tenant_id, wallet_id))
            old = json.loads(row.document) if row is not None else None
            if row is None:
                s.add(SpendPolicy(tenant_id=tenant_id, wallet_id=wallet_id, document=canonical, updated_ms=now))
            else:
                row.document, row.updated_ms = canonical, now
            audit.record(s, at_ms=now, actor=auth.operator_actor(), action="policy.set", tenant_id=tenant_id, wallet_id=wallet_id,
                         details={"old": old, "new": json.loads(canonical)})
        return canonical, now

    def get_policy(self, tenant_id: str, wallet_id: str = "") -> tuple[str, int]:
        """The stored document (canonical JSON) and when it was set; the default when none is stored."""
        with self.db.transaction() as s:
            self._scope(s, tenant_id, wallet_id)
            row = s.get(SpendPolicy, (tenant_id, wallet_id))
            if row is None:
                return json.dumps(to_document(DEFAULT, wallet=bool(wallet_id)), sort_keys=True), 0
            return row.document, row.updated_ms

    def set_frozen(self, tenant_id: str, frozen: bool, wallet_id: str = "", reason: str = "") -> None:
        """Freeze or unfreeze a tenant or a wallet. Every replica reads the flag in
        its Sign transaction, under the tenant lock, so it applies to the next call."""
        now = ms(self.clock)
        with self.db.transaction() as s:
            wallet = self._scope(s, tenant_id, wallet_id)
            target: Tenant | Wallet = wallet if wallet is not None else get_tenant(s, tenant_id)
            old = bool(target.frozen)
            target.frozen = frozen
            # An unfreeze clears the reason: what is shown is why it is frozen now.
            target.frozen_reason = reason[:500] if frozen else ""
            audit.record(s, at_ms=now, actor=auth.operator_actor(), action="wallet.freeze" if wallet else "tenant.freeze",
                         tenant_id=tenant_id, wallet_id=wallet_id,
                         details={"old": old, "new": frozen, "reason": reason[:500]})

    def spend(self, tenant_id: str, wallet_id: str = "") -> list[WindowReport]:
        with self.db.transaction() as s:
            self._scope(s, tenant_id, wallet_id)
            wallets = [wallet_id] if wallet_id else list(
                s.scalars(select(Wallet.id).where(Wallet.tenant_id == tenant_id).order_by(Wallet.created_ms)))
            return report(s, tenant_id, wallets, ms(self.clock))
