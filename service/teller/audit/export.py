"""Signed audit exports. Pure: a tenant verifies an export offline with this
module, ``teller.audit.chain`` and Teller's public key; no database, no server.

An export is JSON Lines: the tenant's events in chain order, then one trailer
line that signs the chain head they end at::

    {"type": "teller.audit.export", "v": 1, "tenant_id": ..., "seq": <head seq>,
     "hash": <head hash>, "events": <count>, "exported_at_ms": ..., "key_id": ...,
     "public_key": <hex>, "signature": <hex Ed25519 over the canonical trailer
     without "signature" and "public_key">}

The chain makes every event depend on all before it, so signing the head signs
them all: a rewritten event no longer leads to the signed hash, and a cut-off
export ends before the signed seq.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from teller.audit.chain import GENESIS, Problem, canonical, verify
from teller.errors import InvalidArgument

TRAILER_TYPE = "teller.audit.export"
VERSION = 1
_SIGNED = ("type", "v", "tenant_id", "seq", "hash", "events", "exported_at_ms", "key_id")


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def parse_public_key(text: str) -> bytes:
    """A public key as ``teller audit public-key`` prints it: 64 hex digits
    (``0x`` optional), or a PEM SubjectPublicKeyInfo."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            key = load_pem_public_key(text.encode())
        except ValueError as exc:
            raise InvalidArgument(f"public key: not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidArgument("public key: not an Ed25519 key")
        return key.public_bytes_raw()
    hex_text = text[2:] if text.lower().startswith("0x") else text
    try:
        raw = bytes.fromhex(hex_text)
    except ValueError:
        raise InvalidArgument("public key: expected 64 hex digits (or a PEM file)") from None
    if len(raw) != 32:
        raise InvalidArgument(f"public key: expected 32 bytes, got {len(raw)}")
    return raw


def trailer(key: Ed25519PrivateKey, *, tenant_id: str, head: tuple[int, str], events: int,
            exported_at_ms: int) -> dict[str, Any]:
    pub = public_bytes(key)
    doc: dict[str, Any] = {"type": TRAILER_TYPE, "v": VERSION, "tenant_id": tenant_id, "seq": head[0],
                           "hash": head[1], "events": events, "exported_at_ms": exported_at_ms,
                           "key_id": key_id(pub)}
    doc["public_key"] = pub.hex()
    doc["signature"] = key.sign(canonical({k: doc[k] for k in _SIGNED})).hex()
    return doc


def verify_export(lines: Iterable[str], public_key: bytes) -> tuple[list[Problem], dict[str, Any] | None]:
    """Problems found in an export (none: it is exactly what Teller signed), and
    its trailer when there is one."""
    events: list[dict[str, Any]] = []
    problems: list[Problem] = []
    tail: dict[str, Any] | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            problems.append(Problem("", None, None, f"line {number} is not JSON"))
            continue
        if not isinstance(doc, dict):
            problems.append(Problem("", None, None, f"line {number} is not a JSON object"))
        elif tail is not None:
            problems.append(Problem("", None, None, f"line {number} comes after the signature line"))
        elif doc.get("type") == TRAILER_TYPE:
            tail = doc
        else:
            events.append(doc)
    if tail is None:
        problems.append(Problem("", None, None, "no signature line: the export is unsigned or cut off"))
        return problems, None
    chain = tail.get("tenant_id")
    problems.extend(_check_signature(tail, public_key))
    others = {e.get("tenant_id") for e in events} - {chain}
    if others:
        problems.append(Problem(str(chain), None, None, f"holds events of other chains: {sorted(map(str, others))}"))
    seq, digest = tail.get("seq"), tail.get("hash")
    if not isinstance(seq, int) or not isinstance(digest, str):
        problems.append(Problem(str(chain), None, None, "the signature line has no head seq/hash"))
        return problems, tail
    if tail.get("events") != len(events):
        problems.append(Problem(str(chain), None, None,
                                f"the signature covers {tail.get('events')} event(s); the export holds {len(events)}"))
    # The signed head stands in for the database's: a truncated tail or a
    # rewritten chain no longer ends at it.
    problems.extend(verify(events, {str(chain): (seq, digest)} if seq else None))
    if not seq and events:
        problems.append(Problem(str(chain), None, None, "the signed head is empty but the export holds events"))
    if seq == 0 and digest != GENESIS:
        problems.append(Problem(str(chain), None, None, "the signed head of an empty chain is not the genesis hash"))
    return problems, tail


def _check_signature(tail: Mapping[str, Any], public_key: bytes) -> list[Problem]:
    chain = str(tail.get("tenant_id"))
    if tail.get("v") != VERSION:
        return [Problem(chain, None, None, f"signature line version {tail.get('v')!r} is not {VERSION}")]
    if tail.get("key_id") != key_id(public_key):
        return [Problem(chain, None, None, f"signed by key {tail.get('key_id')!r}, not by the given public key "
                                           f"({key_id(public_key)})")]
    try:
        signature = bytes.fromhex(str(tail.get("signature", "")))
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, canonical({k: tail.get(k) for k in _SIGNED}))
    except (ValueError, InvalidSignature):
        return [Problem(chain, None, None, "the signature does not verify with the given public key")]
    return []


__all__ = ["TRAILER_TYPE", "key_id", "parse_public_key", "trailer", "verify_export"]
