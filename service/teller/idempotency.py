"""What names one logical purchase, and how its key reaches the resource server.

A caller's idempotency key names one purchase: a retry of the same request
(after a timeout, a crash, a lost response) carries the same key and must not
pay twice, while two separate requests carry two keys and are two payments.

A retry often meets a fresh challenge: MPP servers mint a new challenge id and
expiry for every 402, and an x402 server may too. So a key is bound to the
*purchase* (wallet, URL, method, the caller's cap and the terms the server asks
for: network, asset, amount, payee), never to one challenge's id, expiry or
nonce. The same key for the same purchase is answered with the payment already
signed for it; a different purchase under the key is refused.

The key travels to the server so it can de-duplicate too: x402's
``payment-identifier`` extension (only when the server declares it) and MPP's
``Idempotency-Key`` request header. Both carry an identifier derived from the
tenant and the key, never the raw key: two tenants who pick the same key must
not share a server's cached answer, and x402 wants 16-128 characters of
``[A-Za-z0-9_-]`` whatever the caller chose.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from teller.offers import Collected

PAYMENT_IDENTIFIER = "payment-identifier"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def server_id(tenant_id: str, key: str) -> str:
    """The identifier the resource server sees for ``key``: stable across retries,
    distinct per tenant, 47 characters of ``[a-z0-9_]``."""
    return "teller_" + hashlib.sha256(f"{tenant_id}\x00{key}".encode()).hexdigest()[:40]


def purchase_hash(*, wallet_id: str, url: str, method: str, cap: int | None, collected: Collected) -> str:
    """What an idempotency key is bound to (see the module docstring)."""
    doc = {
        "wallet": wallet_id,
        "url": url,
        "method": method.upper(),
        "cap": cap,
        # Each offer without what changes from one 402 to the next (its scheme says what).
        "offers": [o.scheme.purchase_terms(o) for o in collected.offers],
        "resource": collected.x402.resource if collected.x402 is not None else None,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def with_payment_identifier(extensions: Mapping[str, Any] | None, payment_id: str | None) -> dict[str, Any] | None:
    """The extensions to echo in an x402 v2 payload: the server's own, plus our
    ``payment-identifier`` id when the server declared the extension (its spec:
    a client adds ``info.id`` only to a declared extension). A server that
    requires an id gets a fresh one when the caller gave no key."""
    if extensions is None:
        return None
    out = dict(extensions)
    declared = out.get(PAYMENT_IDENTIFIER)
    if not isinstance(declared, Mapping) or not isinstance(declared.get("info"), Mapping):
        return out
    info = dict(declared["info"])
    if payment_id is None:
        if info.get("required") is not True:
            return out
        payment_id = "teller_" + secrets.token_hex(20)
    info["id"] = payment_id
    out[PAYMENT_IDENTIFIER] = {**declared, "info": info}
    return out


def retry_headers(protocol: str, tenant_id: str, key: str | None) -> tuple[tuple[str, str], ...]:
    """Headers besides the proof to send on the paid retry."""
    if protocol == "mpp" and key:
        return ((IDEMPOTENCY_HEADER, server_id(tenant_id, key)),)
    return ()


__all__: Sequence[str] = ["IDEMPOTENCY_HEADER", "PAYMENT_IDENTIFIER", "purchase_hash", "retry_headers",
                          "server_id", "with_payment_identifier"]
