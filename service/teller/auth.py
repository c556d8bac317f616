"""Caller authentication: tenant API tokens and operator credentials.

Tenant tokens look like ``tlr_<id>.<secret>``, named operator credentials
``tlo_<id>.<secret>``; only SHA-256 of the secret is stored. The secret has 256
bits of entropy, so a plain hash (no KDF) is safe here. The configured
``admin_token`` is the bootstrap operator.
"""

from __future__ import annotations

import contextvars
import hmac
import secrets
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from teller.callers import Caller, check_secret, hash_secret
from teller.db.models import ApiToken, Operator, Tenant
from teller.errors import PermissionDenied, Unauthenticated

if TYPE_CHECKING:
    from teller.db import Database

PREFIX = "tlr_"
OPERATOR_PREFIX = "tlo_"
#: The operator name of the configured ``admin_token``.
BOOTSTRAP = "bootstrap"

#: The operator of the AdminService call being served (set once its credential
#: is checked; the worker threads of the call see it too), for the audit log.
OPERATOR_NAME: contextvars.ContextVar[str] = contextvars.ContextVar("teller_operator", default="")


def new_token() -> tuple[str, str, str]:
    """(token id, bearer token, stored hash)."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{PREFIX}{token_id}.{secret}", hash_secret(secret)


def bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, cred = text.partition(" ")
            if scheme.lower() == "bearer" and cred.strip():
                return cred.strip()
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
    raise Unauthenticated("missing authorization metadata (Bearer token)")


def parse_token(token: str) -> tuple[str, str]:
    """(token id, secret) of a tenant token; the id is not secret."""
    if not token.startswith(PREFIX) or "." not in token:
        raise Unauthenticated("not a Teller tenant token")
    token_id, _, secret = token[len(PREFIX) :].partition(".")
    return token_id, secret


def authenticate_tenant(session: Session, token: str) -> Caller:
    token_id, secret = parse_token(token)
    row = session.execute(
        select(ApiToken.secret_hash, ApiToken.revoked_ms, Tenant.id, Tenant.state)
        .join(Tenant, Tenant.id == ApiToken.tenant_id)
        .where(ApiToken.id == token_id)
    ).first()
    check_secret(row.secret_hash if row is not None else None, row.revoked_ms if row is not None else None, secret)
    assert row is not None
    if row.state != "active":
        raise PermissionDenied("tenant is disabled", reason="tenant_disabled")
    return Caller(tenant_id=row.id, token_id=token_id)


def is_bootstrap(presented: str, configured: str) -> bool:
    return bool(configured) and hmac.compare_digest(hash_secret(presented), hash_secret(configured))


def new_operator_token() -> tuple[str, str, str]:
    """(operator id, credential, stored hash)."""
    op_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return op_id, f"{OPERATOR_PREFIX}{op_id}.{secret}", hash_secret(secret)


def authenticate_operator(db: Database, presented: str, configured: str) -> str:
    """The name of the operator a credential belongs to: ``bootstrap`` for the
    configured admin_token, else a named operator that is not revoked."""
    if is_bootstrap(presented, configured):
        return BOOTSTRAP
    if not presented.startswith(OPERATOR_PREFIX) or "." not in presented:
        raise Unauthenticated("invalid operator credential")
    op_id, _, secret = presented[len(OPERATOR_PREFIX):].partition(".")
    with db.read() as s:
        row = s.execute(select(Operator.secret_hash, Operator.revoked_ms, Operator.name)
                        .where(Operator.id == op_id)).first()
    if row is None or not hmac.compare_digest(row.secret_hash, hash_secret(secret)):
        raise Unauthenticated("invalid operator credential")
    if row.revoked_ms is not None:
        raise Unauthenticated("operator credential revoked")
    return str(row.name)


def operator_actor() -> str:
    """The audit actor of the current AdminService call: ``operator:<name>``."""
    name = OPERATOR_NAME.get()
    return f"operator:{name}" if name else "operator"


def certificate_name(auth_context: dict[str, list[bytes]] | None) -> str | None:
    """The subject CN of the peer's verified client certificate (mTLS), if any."""
    names = (auth_context or {}).get("x509_common_name") or []
    return names[0].decode(errors="replace") if names else None


def check_certificate(auth_context: dict[str, list[bytes]] | None, expected: str) -> None:
    """With mTLS, the client certificate must name the principal the credential
    belongs to: ``tenant:<tenant id>`` for tenant calls, ``operator`` for AdminService."""
    name = certificate_name(auth_context)
    if name is None:
        raise Unauthenticated("a client certificate is required")
    if name != expected:
        raise PermissionDenied(f"the client certificate is for {name!r}, but the credential is for {expected!r}",
                               reason="certificate_mismatch")
