"""JSON from outside Teller, read with Teller's own bounds.

Every document a caller or a paid server hands Teller (x402 bodies and
headers, MPP requests, opaque values and receipts, problem details, policy
documents) goes through ``loads``. Its bounds are checked on the text before
any parser recurses into it, so they hold whatever the interpreter's recursion
limit is: py_ecc raises that limit to 100,000 when it is imported, and the C
JSON parser then recurses until the stack runs out (SIGSEGV) instead of raising
RecursionError.

Bounds: size in bytes, nesting depth and number of values (on the text),
length of a number (as the parser hands it over, before conversion: Python
refuses integers past 4,300 digits with a ValueError no JSON caller expects).
The parsed strings may hold neither a lone surrogate (no UTF-8 encoding exists:
orjson, PostgreSQL and every encoder refuse it later) nor NUL (PostgreSQL text
cannot hold it); nor may the document use NaN or Infinity (or numbers that
overflow to it), which are not JSON. Every refusal is an ``InvalidArgument``
naming the document.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from teller.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Bounds:
    max_bytes: int = 1024 * 1024
    #: Nesting depth of arrays and objects. The deepest document a protocol
    #: defines (an x402 v2 challenge with an extension's JSON schema) is ~10.
    max_depth: int = 64
    #: Values (scalars, arrays and objects, keys not counted) in one document.
    max_values: int = 20_000
    #: Characters in one number: a uint256 has 78 digits.
    max_number_chars: int = 100


DEFAULT = Bounds()

# A JSON string as its grammar delimits it (escapes are checked by the parser);
# one left unterminated runs to the end of the text. So every character is
# looked at once: were an unterminated string not to match, each quote after it
# would start another scan to the end (quadratic: a 256 KiB `"\"\"\"...` takes hours).
_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
# Escapes that may decode to a character the checks below refuse: a surrogate or NUL.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F]|0000)")


def loads(data: bytes | str, what: str, bounds: Bounds = DEFAULT, *, max_bytes: int | None = None) -> Any:
    """The document in ``data``; ``what`` names it in every refusal. ``max_bytes``
    replaces the size bound where the caller holds the operator's own limit
    (``max_challenge_bytes``)."""
    limit = bounds.max_bytes if max_bytes is None else max_bytes
    if len(data) > limit:
        raise InvalidArgument(f"{what} is larger than {limit} bytes")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{what} is not valid UTF-8") from None
    else:
        text = data
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidArgument(f"{what} holds a lone surrogate") from None
    _check_shape(text, what, bounds)
    try:
        doc = _decoder(bounds.max_number_chars).decode(text)
    except _Refused as exc:
        raise InvalidArgument(f"{what} {exc}") from None
    except ValueError as exc:  # JSONDecodeError
        raise InvalidArgument(f"{what} does not decode to JSON: {exc}") from None
    if "\\u" in text and _SUSPECT_ESCAPE.search(text):
        _check_strings(doc, what)
    return doc


class _Refused(ValueError):
    """A number or constant the decoder's hooks refuse (the message completes "<what> ...")."""


@functools.cache
def _decoder(max_number_chars: int) -> json.JSONDecoder:
    """json's decoder with hooks for what it would otherwise accept: a number is
    refused by its length before ``int`` or ``float`` sees it (the C scanner hands
    over the token; only then is it converted), NaN and Infinity are refused, and
    so is a float that overflows to infinity (no encoder, nor PostgreSQL's jsonb,
    writes one back)."""

    def number(text: str) -> None:
        if len(text) > max_number_chars:
            raise _Refused(f"has a number longer than {max_number_chars} characters")

    def parse_int(text: str) -> int:
        number(text)
        return int(text)

    def parse_float(text: str) -> float:
        number(text)
        value = float(text)
        if not math.isfinite(value):
            raise _Refused(f"has a number out of range: {text[:40]}")
        return value

    def parse_constant(name: str) -> Any:
        raise _Refused(f"uses {name}, which is not a JSON number")

    return json.JSONDecoder(parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant)


def _check_shape(text: str, what: str, bounds: Bounds) -> None:
    """Depth and values, from the text alone and without recursion."""
    opens = text.count("[") + text.count("{")
    # Cheap upper bounds first (brackets and commas inside strings count too):
    # a document within them needs no closer look, and most documents are.
    if opens <= bounds.max_depth and opens + text.count(",") + 1 <= bounds.max_values:
        return
    # The structure alone: every string emptied. From a string left unterminated
    # on, nothing is structure: the parser stops there.
    bare = _STRING.sub('""', text)
    depth = 0
    for i, m in enumerate(_BRACKET.finditer(bare)):
        if m.group() in "[{":
            depth += 1
            if depth > bounds.max_depth:
                raise InvalidArgument(f"{what} is nested more than {bounds.max_depth} deep")
        else:
            depth -= 1
            if depth < 0:
                break  # a closing bracket with nothing open: the parser stops here, recursing no further
        if i > 2 * bounds.max_values:
            # At least half of these opened something (depth never went below 0), so
            # there are more values than allowed: refused just below. This keeps the
            # loop short on a wide document.
            break
    # A value is the root or follows a comma or an opening bracket.
    if bare.count("[") + bare.count("{") + bare.count(",") + 1 > bounds.max_values:
        raise InvalidArgument(f"{what} has more than {bounds.max_values} values")


def _check_strings(doc: Any, what: str) -> None:
    """Refuse a lone surrogate or NUL in any key or string (the depth is already bounded)."""
    stack = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            _check_string(value, what)
        elif isinstance(value, dict):
            for k, v in value.items():
                _check_string(k, what)
                stack.append(v)
        elif isinstance(value, list):
            stack.extend(value)


def _check_string(s: str, what: str) -> None:
    if "\x00" in s:
        raise InvalidArgument(f"{what} holds a NUL character in a string")
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"{what} holds a lone surrogate (\\ud800-\\udfff) in a string") from None


__all__ = ["DEFAULT", "Bounds", "loads"]
