"""Who calls Sign, and the verdict on a presented token secret.

Pure (no database): the Sign plan judges a tenant token inside its batch from
the token row its driver read, so the check lives apart from ``teller.auth``,
which looks credentials up.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from teller.errors import Unauthenticated


@dataclass(frozen=True, slots=True)
class Caller:
    tenant_id: str
    token_id: str

    @property
    def actor(self) -> str:
        return f"token:{self.token_id}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_secret(stored_hash: str | None, revoked_ms: int | None, secret: str) -> None:
    """The token row's verdict on a presented secret (constant-time comparison)."""
    if stored_hash is None or not hmac.compare_digest(stored_hash, hash_secret(secret)):
        raise Unauthenticated("invalid token")
    if revoked_ms is not None:
        raise Unauthenticated("token revoked")
