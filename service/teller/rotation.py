"""KEK rotation: re-wrap every wallet's data key under the current KEK, online.

The private key's ciphertext and its data key stay as they are; only the data
key's wrapping changes. Each wallet is re-wrapped in its own short transaction
under a row lock, so workers keep signing throughout: they hold both KEKs
while the job runs and open either version. Once ``status`` shows no wallet on
the old version, the old KEK can be removed from every worker's configuration.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sqlalchemy import func, select

from teller.audit import events as audit
from teller.clock import Clock, ms, system_clock
from teller.db import Database
from teller.db.models import Wallet
from teller.errors import ConfigError
from teller.vault.envelope import SealedKey, associated_data
from teller.vault.kek import KekProvider


@dataclass(frozen=True, slots=True)
class RewrapResult:
    rewrapped: int
    already_current: int
    current_version: str


def rewrap_key(sealed: SealedKey, aad: bytes, kek: KekProvider) -> SealedKey:
    data_key = kek.unwrap(sealed.kek_version, sealed.wrapped_data_key, aad)
    version, wrapped = kek.wrap(data_key, aad)
    return SealedKey(version, wrapped, sealed.ciphertext)


def status(db: Database) -> dict[str, int]:
    """Wallets per KEK version."""
    with db.transaction() as s:
        return {v: int(n) for v, n in s.execute(select(Wallet.kek_version, func.count()).group_by(Wallet.kek_version))}


def rewrap_all(db: Database, kek: KekProvider, clock: Clock = system_clock, batch: int = 100) -> RewrapResult:
    current = kek.current_version
    known = getattr(kek, "versions", None)
    if known is not None:
        # Checked before the first wallet: a job that stops half-way for want of
        # an old KEK says so up front instead of failing on some wallet.
        missing = {v: n for v, n in status(db).items() if v not in known}
        if missing:
            raise ConfigError(
                "KEK version(s) " + ", ".join(f"{v!r} ({n} wallet(s))" for v, n in sorted(missing.items()))
                + " still protect wallets but are not configured: keep the old KEK in the KEK file, after "
                "the new one, until `teller keys status` shows no wallet on it")
    done: Counter[str] = Counter()
    after = ""
    while True:
        with db.transaction() as s:
            ids = list(s.scalars(select(Wallet.id).where(Wallet.id > after).order_by(Wallet.id).limit(batch)))
        if not ids:
            return RewrapResult(done["rewrapped"], done["current"], current)
        for wallet_id in ids:
            with db.transaction() as s:
                # NO KEY UPDATE: Sign's payment inserts take KEY SHARE on the wallet (the
                # foreign key) while holding the audit head this job wants next.
                w = s.execute(select(Wallet).where(Wallet.id == wallet_id).with_for_update(key_share=True)
                              ).scalar_one()
                if w.kek_version == current:
                    done["current"] += 1
                    continue
                old = w.kek_version
                new = rewrap_key(SealedKey(w.kek_version, w.wrapped_data_key, w.key_ciphertext),
                                 associated_data(w.tenant_id, w.id, w.address), kek)
                w.kek_version, w.wrapped_data_key = new.kek_version, new.wrapped_data_key
                audit.record(s, at_ms=ms(clock), actor="operator", action="wallet.rewrap", tenant_id=w.tenant_id,
                             wallet_id=w.id, details={"from_kek": old, "to_kek": new.kek_version})
                done["rewrapped"] += 1
        after = ids[-1]


__all__ = ["RewrapResult", "rewrap_all", "rewrap_key", "status"]
