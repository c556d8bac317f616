"""Canonical values: networks, chain ids, addresses, amounts and hosts.

Every value a payment decision depends on is read here, once, at the edge where
it enters (a challenge, a policy document, a URL), and the rest of Teller
compares only the canonical form. Two spellings of one thing must never be two
things to the policy and one thing to the signature: ``eip155:08453`` is not a
different chain from ``eip155:8453``, and ``127.1`` is not a different host from
``127.0.0.1``. Where a spelling is ambiguous or not the protocol's own form
(leading zeros, signs, non-ASCII digits, an address without ``0x`` or with a
wrong EIP-55 checksum) it is refused, naming the field; hosts are normalized
the way Teller's resolver reaches them.

Pure: no I/O, no grpc. Callers turn ``NotCanonical`` into their own error.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping

import idna
from eth_utils import to_checksum_address

UINT256_MAX = 2**256 - 1
#: Chain ids above this are refused. EIP-2294 bounds chain ids to 64 bits (every
#: chain in use is far below), a payment's network must fit its 64-character
#: column, and the bound keeps every decimal conversion short.
MAX_CHAIN_ID = 2**64 - 1
#: Largest amount Teller accounts for (the ledger's BIGINT). Larger requests are refused.
MAX_AMOUNT = 2**63 - 1
_UINT256_DIGITS = len(str(UINT256_MAX))  # 78: checked before int(), never the interpreter's limit
_DECIMAL = re.compile(r"0|[1-9][0-9]*")  # ASCII only: no signs, blanks, '_' or other scripts' digits
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_NAMESPACE = re.compile(r"[-a-z0-9]{3,8}")  # CAIP-2
_REFERENCE = re.compile(r"[-_a-zA-Z0-9]{1,32}")
_LABEL = re.compile(r"[a-z0-9_]([-a-z0-9_]{0,61}[a-z0-9_])?")
_HEX_PART = re.compile(r"0[xX][0-9a-fA-F]*")
_OCT_PART = re.compile(r"0[0-7]+")
_MAX_HOST = 253


class NotCanonical(ValueError):
    """A value that is not in its canonical form; ``field`` names where it came from."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


def _shown(value: object) -> str:
    return repr(value)[:80]


# --- numbers ------------------------------------------------------------------

def uint(text: object, field: str, *, maximum: int = UINT256_MAX, what: str = "integer") -> int:
    """A decimal string of ASCII digits without sign, blanks or leading zeros, at most ``maximum``."""
    if not isinstance(text, str):
        raise NotCanonical(field, f"must be a decimal string, got {_shown(text)}")
    if len(text) > _UINT256_DIGITS or not _DECIMAL.fullmatch(text):
        raise NotCanonical(field, f"must be an integer string ({what} in ASCII decimal digits, no sign, spaces or "
                                  f"leading zeros), got {_shown(text)}")
    value = int(text)
    if value > maximum:
        raise NotCanonical(field, f"is {text}, larger than {maximum}")
    return value


def amount(text: object, field: str) -> int:
    """A token amount in atomic units: a uint256 in canonical decimal."""
    return uint(text, field, what="uint256 amount")


def chain_id(value: object, field: str) -> int:
    """A chain id, from a JSON number or a decimal string: 1 to ``MAX_CHAIN_ID``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise NotCanonical(field, f"must be a chain id (a positive integer), got {_shown(value)}")
    if isinstance(value, int):
        number = value
    else:
        number = uint(value, field, maximum=UINT256_MAX, what="chain id")
    if not 0 < number <= MAX_CHAIN_ID:
        shown = str(number) if -UINT256_MAX <= number <= UINT256_MAX else "out of range"
        raise NotCanonical(field, f"is chain id {shown}, not between 1 and {MAX_CHAIN_ID}")
    return number


# --- networks -----------------------------------------------------------------

def network(text: object, field: str, names: Mapping[str, int] | None = None) -> str:
    """A CAIP-2 network id in canonical form: ``eip155:<chain id>`` with the id in
    canonical decimal; an x402 v1 name (``base``) from ``names`` maps to its
    chain's id. Other namespaces keep their (case-sensitive) reference."""
    if not isinstance(text, str):
        raise NotCanonical(field, f"must be a network id string, got {_shown(text)}")
    if ":" not in text:
        if names is not None and text in names:
            return f"eip155:{chain_id(names[text], field)}"
        raise NotCanonical(field, f"is not a CAIP-2 network id (e.g. eip155:8453): {_shown(text)}")
    namespace, _, reference = text.partition(":")
    if not _NAMESPACE.fullmatch(namespace) or not _REFERENCE.fullmatch(reference):
        raise NotCanonical(field, f"is not a CAIP-2 network id (e.g. eip155:8453): {_shown(text)}")
    if namespace == "eip155":
        return f"eip155:{chain_id(reference, field)}"
    return text


def eip155_chain(canonical_network: str) -> int | None:
    """The chain id of a canonical ``eip155:`` network, else None."""
    if canonical_network.startswith("eip155:"):
        return int(canonical_network[7:])
    return None


# --- addresses ----------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _checksum(lower: str) -> str:
    return str(to_checksum_address(lower))


def address(text: object, field: str) -> str:
    """An EVM address: ``0x`` and 40 hex digits; mixed case must be the EIP-55
    checksum. Returns the checksummed form (compare with ``.lower()``)."""
    if not isinstance(text, str) or not _ADDRESS.fullmatch(text):
        raise NotCanonical(field, f"is not a valid EVM address ('0x' and 40 hex digits): {_shown(text)}")
    checksummed = _checksum(text.lower())
    digits = text[2:]
    if digits != digits.lower() and digits != digits.upper() and text != checksummed:
        raise NotCanonical(field, f"fails its EIP-55 checksum: {_shown(text)} (expected {checksummed})")
    return checksummed


# --- hosts --------------------------------------------------------------------

def _ipv4_part(part: str) -> int | None:
    """One part of an inet_aton / WHATWG IPv4 spelling (decimal, 0x hex, 0 octal), else None."""
    if not part.isascii():
        return None
    if _HEX_PART.fullmatch(part):
        return int(part[2:] or "0", 16)
    if _OCT_PART.fullmatch(part):
        return int(part[1:], 8)
    if part.isdigit() and not (part.startswith("0") and len(part) > 1):  # '09' is no number to inet_aton
        return int(part)
    return None


def _ends_in_number(labels: list[str]) -> bool:
    last = labels[-1]
    return last.isascii() and (last.isdigit() or bool(_HEX_PART.fullmatch(last)))


def _ipv4(labels: list[str], field: str, original: str) -> str:
    """The dotted quad the system resolver reaches for ``127.1``, ``0x7f.0.0.1``,
    ``2130706433``, ``017700000001``... (inet_aton's and the URL standard's rules)."""
    parts = [_ipv4_part(label) for label in labels]
    if len(parts) > 4 or any(p is None for p in parts) or any(len(label) > 40 for label in labels):
        raise NotCanonical(field, f"is not a valid IPv4 address: {_shown(original)}")
    numbers = [p for p in parts if p is not None]
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise NotCanonical(field, f"is not a valid IPv4 address: {_shown(original)}")
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return str(ipaddress.IPv4Address(value))


def _ipv6(text: str, field: str, original: str) -> str:
    try:
        ip = ipaddress.IPv6Address(text)
    except ValueError:
        raise NotCanonical(field, f"is not a valid IPv6 address: {_shown(original)}") from None
    if ip.scope_id:
        raise NotCanonical(field, f"has an IPv6 zone id, which is not accepted: {_shown(original)}")
    # ::ffff:a.b.c.d reaches a.b.c.d: it is that host.
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else ip.compressed


def host(text: object, field: str) -> str:
    """A host as Teller's HTTP client reaches it: an IPv4 dotted quad, a
    compressed IPv6 address (no brackets; IPv4-mapped ones as IPv4), or a
    lower-case ASCII (IDNA A-label) name without a trailing dot. Unicode is
    mapped by UTS 46 (full-width letters, digits and dots included)."""
    if not isinstance(text, str) or not text:
        raise NotCanonical(field, f"must be a host name or address, got {_shown(text)}")
    if len(text) > 4 * _MAX_HOST:
        raise NotCanonical(field, f"is longer than {_MAX_HOST} characters")
    if text.startswith("[") and text.endswith("]"):
        return _ipv6(text[1:-1], field, text)
    value = text
    if not value.isascii():
        try:
            value = idna.uts46_remap(value, std3_rules=False, transitional=False)
        except (idna.IDNAError, UnicodeError, ValueError):
            raise NotCanonical(field, f"is not a valid internationalized host name: {_shown(text)}") from None
    if ":" in value:
        return _ipv6(value, field, text)
    value = value.lower()
    if value.endswith("."):
        value = value[:-1]
    labels = value.split(".")
    if _ends_in_number(labels):
        return _ipv4(labels, field, text)
    out: list[str] = []
    for label in labels:
        if not label.isascii():
            try:
                label = idna.encode(label, uts46=False).decode("ascii")
            except (idna.IDNAError, UnicodeError, ValueError):
                raise NotCanonical(field, f"is not a valid internationalized host name: {_shown(text)}") from None
        if not _LABEL.fullmatch(label):
            raise NotCanonical(field, f"is not a valid host name: {_shown(text)}")
        out.append(label)
    canonical = ".".join(out)
    if len(canonical) > _MAX_HOST:
        raise NotCanonical(field, f"is longer than {_MAX_HOST} characters")
    return canonical


def is_ip(canonical_host: str) -> bool:
    try:
        ipaddress.ip_address(canonical_host)
    except ValueError:
        return False
    return True


__all__ = ["MAX_CHAIN_ID", "UINT256_MAX", "NotCanonical", "address", "amount", "chain_id", "eip155_chain", "host",
           "is_ip", "network", "uint"]
