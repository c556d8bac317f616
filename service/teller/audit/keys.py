"""Teller's audit signing key: an Ed25519 key made at first use, sealed under
the KEK exactly as wallet keys are (``teller.vault.envelope``), and used only to
sign the chain heads of audit exports.

Rotation (``teller audit rotate-key``) retires the current key and makes a new
one; retired keys are kept, so ``teller audit public-key --all`` still lists the
keys older exports were signed with. A KEK rotation re-wraps nothing here:
each sealed key names its KEK version, which must stay in the KEK file until
the key is retired.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from teller.audit import events as audit
from teller.audit.export import key_id, public_bytes
from teller.db import Database
from teller.db.models import AuditKey
from teller.vault.envelope import SealedKey, open_sealed, seal
from teller.vault.kek import KekProvider


@dataclass(frozen=True, slots=True)
class PublicKey:
    id: str
    public_key: str  # hex
    created_ms: int
    retired_ms: int | None


def _aad(kid: str, public_hex: str) -> bytes:
    return f"teller.audit-key.v1|{kid}|{public_hex}".encode()


def _current(db: Database) -> AuditKey | None:
    with db.transaction() as s:
        return s.scalars(select(AuditKey).where(AuditKey.retired_ms.is_(None))
                         .order_by(AuditKey.created_ms.desc(), AuditKey.id).limit(1)).first()


def _make(db: Database, kek: KekProvider, now_ms: int, *, retire_current: bool) -> AuditKey:
    key = Ed25519PrivateKey.generate()
    pub = public_bytes(key).hex()
    kid = key_id(bytes.fromhex(pub))
    sealed = seal(key.private_bytes_raw(), _aad(kid, pub), kek)
    row = AuditKey(id=kid, public_key=pub, kek_version=sealed.kek_version, wrapped_data_key=sealed.wrapped_data_key,
                   key_ciphertext=sealed.ciphertext, created_ms=now_ms)
    with db.transaction() as s:
        retired = []
        for old in s.scalars(select(AuditKey).where(AuditKey.retired_ms.is_(None))):
            if not retire_current:
                return old  # another process made one first
            old.retired_ms = now_ms
            retired.append(old.id)
        s.add(row)
        audit.record(s, at_ms=now_ms, actor="operator", action="audit_key.create",
                     details={"key_id": kid, "public_key": pub, "retired": retired})
    return row


def signing_key(db: Database, kek: KekProvider, now_ms: int) -> Ed25519PrivateKey:
    """The current key, made (and recorded in the audit log) on first use."""
    row = _current(db) or _make(db, kek, now_ms, retire_current=False)
    sealed = SealedKey(row.kek_version, row.wrapped_data_key, row.key_ciphertext)
    return Ed25519PrivateKey.from_private_bytes(open_sealed(sealed, _aad(row.id, row.public_key), kek))


def rotate(db: Database, kek: KekProvider, now_ms: int) -> PublicKey:
    row = _make(db, kek, now_ms, retire_current=True)
    return PublicKey(row.id, row.public_key, row.created_ms, row.retired_ms)


def public_keys(db: Database) -> list[PublicKey]:
    """Every key, newest first; the current one has no ``retired_ms``."""
    with db.transaction() as s:
        rows = s.scalars(select(AuditKey).order_by(AuditKey.created_ms.desc(), AuditKey.id))
        return [PublicKey(r.id, r.public_key, r.created_ms, r.retired_ms) for r in rows]


__all__ = ["PublicKey", "public_keys", "rotate", "signing_key"]
