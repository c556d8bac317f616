"""The reason a server gave for refusing a payment, wherever it put it. Pure.

Servers disagree on the place: an x402 v2 server puts it in the
``PAYMENT-REQUIRED`` header's ``error`` (the TypeScript middleware sends ``{}``
as the body), an x402 v1 server in the body's ``error``, a settlement failure in
``PAYMENT-RESPONSE``'s ``errorReason``, and an MPP server in RFC 9457 problem
details (``detail``, else ``title``). The first one found is the reason; a
document that does not parse is skipped, never an error.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from teller import untrusted_json
from teller.errors import InvalidArgument
from teller.outcome import text

#: Headers and bodies larger than this are not read for a reason.
MAX_BYTES = 64 * 1024


def _b64_json(value: str) -> Any:
    if len(value) > MAX_BYTES:
        return None
    raw = value.strip()
    try:
        # Bounded like every document a server sends: a 64 KiB one can nest deep
        # enough to overflow the C stack under a raised recursion limit.
        return untrusted_json.loads(base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_"
                                                     if "-" in raw or "_" in raw else None),
                                    "refusal header", max_bytes=MAX_BYTES)
    except (binascii.Error, ValueError, InvalidArgument):
        return None


def _body_json(body: bytes) -> Any:
    if not body or len(body) > MAX_BYTES:
        return None
    try:
        return untrusted_json.loads(body, "refusal body", max_bytes=MAX_BYTES)
    except InvalidArgument:
        return None


def reason(headers: Sequence[tuple[str, str]], body: bytes) -> str:
    """The server's own words, at most ``teller.outcome.MAX_REASON`` characters; "" when it gave none."""
    found: dict[str, str] = {}
    for key, value in headers:
        found.setdefault(key.lower(), value)
    docs: list[tuple[Any, tuple[str, ...]]] = []
    if "payment-required" in found:
        docs.append((_b64_json(found["payment-required"]), ("error",)))
    for name in ("payment-response", "x-payment-response"):
        if name in found:
            docs.append((_b64_json(found[name]), ("errorReason",)))
    docs.append((_body_json(body), ("error", "errorReason", "detail", "title")))
    for doc, keys in docs:
        if isinstance(doc, dict):
            for key in keys:
                said = text(doc.get(key))
                if said.strip():
                    return said
    return ""


__all__ = ["reason"]
