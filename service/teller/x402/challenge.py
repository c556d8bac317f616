"""Reading an x402 challenge out of a 402 response.

Everything here is untrusted input: sizes are bounded before decoding and
every failure becomes an ``InvalidArgument`` naming the field at fault.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from x402.schemas import PaymentRequired
from x402.schemas.v1 import PaymentRequiredV1

from teller import untrusted_json
from teller.errors import InvalidArgument

PAYMENT_REQUIRED = "payment-required"
MAX_ACCEPTS = 64
#: PAYMENT-REQUIRED headers up to this size are remembered once parsed (below).
CACHED_HEADER_BYTES = 8 * 1024


@dataclass(frozen=True, slots=True)
class Requirement:
    """One entry of ``accepts`` (x402's PaymentRequirements): the fields Teller
    reads, plus the raw JSON to echo."""

    index: int
    version: int
    scheme: str
    network: str
    asset: str
    amount: str
    pay_to: str
    max_timeout_seconds: int
    extra: Mapping[str, Any]
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class X402Challenge:
    version: int
    accepts: tuple[Requirement, ...]
    resource: Mapping[str, Any] | None  # v2 `resource` object, echoed in the payload
    extensions: Mapping[str, Any] | None
    error: str | None


def header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    lname = name.lower()
    for key, value in headers:
        if key.lower() == lname:
            return value
    return None


def b64_json(value: str, field: str) -> Any:
    text = value.strip()
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if ("-" in text or "_" in text) else None, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{field} header is not valid base64") from None
    # The header's own length was checked against the operator's limit; its decoded form is shorter.
    return untrusted_json.loads(raw, f"{field} header", max_bytes=len(raw))


def _field_path(err: Mapping[str, Any]) -> str:
    path = ""
    for part in err.get("loc", ()):
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def _validate(model: Any, data: Any, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidArgument(f"x402 {where}: {_field_path(first)}: {first['msg']}") from None


def parse(headers: Sequence[tuple[str, str]], body: bytes, max_bytes: int) -> X402Challenge | None:
    """The x402 challenge in a 402, or None when the response carries none.

    A ``PAYMENT-REQUIRED`` header means v2; otherwise the JSON body's
    ``x402Version`` decides.
    """
    encoded = header(headers, PAYMENT_REQUIRED)
    if encoded is not None:
        if len(encoded) > max_bytes:
            raise InvalidArgument(f"PAYMENT-REQUIRED header is larger than {max_bytes} bytes")
        if len(encoded) <= CACHED_HEADER_BYTES:
            return _parse_header_cached(encoded)
        return _parse_header(encoded)
    if not body:
        return None
    if len(body) > max_bytes:
        raise InvalidArgument(f"402 body is larger than {max_bytes} bytes")
    stripped = body.lstrip()
    if not stripped.startswith(b"{"):
        return None
    doc = untrusted_json.loads(body, "402 body", max_bytes=max_bytes)
    if not isinstance(doc, dict) or "x402Version" not in doc:
        return None
    return _from_document(doc, "402 body")


def remembered(headers: Sequence[tuple[str, str]]) -> bool:
    """Whether ``parse`` returns the remembered challenge for these headers (a
    PAYMENT-REQUIRED small enough to keep): the same object for the same text."""
    encoded = header(headers, PAYMENT_REQUIRED)
    return encoded is not None and len(encoded) <= CACHED_HEADER_BYTES


def _parse_header(encoded: str) -> X402Challenge:
    return _from_document(b64_json(encoded, "PAYMENT-REQUIRED"), "PAYMENT-REQUIRED header")


# A paid API answers every call to one resource with the same PAYMENT-REQUIRED
# (x402 has no server nonce: the payer makes the nonce), so a service paying it
# over and over would decode and validate the same text each time. The last 256
# parsed headers are kept (at most 8 KiB each; a refused header is not kept).
# Safe to share: the challenge is frozen and everything downstream only reads or
# copies its dicts (tests check a Sign leaves the cached challenge unchanged).
_parse_header_cached = functools.lru_cache(maxsize=256)(_parse_header)


def _from_document(doc: Any, where: str) -> X402Challenge:
    if not isinstance(doc, dict):
        raise InvalidArgument(f"x402 {where}: must be a JSON object")
    version = doc.get("x402Version")
    if version not in (1, 2) or isinstance(version, bool):
        raise InvalidArgument(f"x402 {where}: x402Version must be 1 or 2, got {version!r}")
    accepts = doc.get("accepts")
    if not isinstance(accepts, list) or not accepts:
        raise InvalidArgument(f"x402 {where}: accepts must be a non-empty list")
    if len(accepts) > MAX_ACCEPTS:
        raise InvalidArgument(f"x402 {where}: accepts has {len(accepts)} entries, at most {MAX_ACCEPTS} are read")
    if version == 2:
        model = _validate(PaymentRequired, doc, where)
        accepts = tuple(
            Requirement(i, 2, r.scheme, r.network, r.asset, r.amount, r.pay_to, r.max_timeout_seconds, r.extra or {}, accepts[i])
            for i, r in enumerate(model.accepts)
        )
        resource = doc.get("resource") if isinstance(doc.get("resource"), dict) else None
        extensions = doc.get("extensions") if isinstance(doc.get("extensions"), dict) else None
        return X402Challenge(2, accepts, resource, extensions, model.error)
    model1 = _validate(PaymentRequiredV1, doc, where)
    accepts = tuple(
        Requirement(
            i, 1, r.scheme, r.network, r.asset, r.max_amount_required, r.pay_to,
            r.max_timeout_seconds, r.extra or {}, accepts[i],
        )
        for i, r in enumerate(model1.accepts)
    )
    return X402Challenge(1, accepts, None, None, model1.error)
