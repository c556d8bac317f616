"""Reading MPP ``Payment`` challenges out of a 402's ``WWW-Authenticate`` headers.

RFC 9110 allows several headers and several comma-separated challenges per
header, each with auth-params (``token=token`` or ``token="quoted"``) or a
token68. Teller reads every challenge, keeps those of the ``Payment`` scheme in
the order offered, ignores parameters it does not know, and names the
parameter at fault when a ``Payment`` challenge is malformed.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from teller import untrusted_json
from teller.errors import InvalidArgument

SCHEME = "payment"
MAX_CHALLENGES = 32
#: Parameters in one challenge (a Payment challenge defines ten; unknown ones are ignored).
MAX_PARAMS = 64
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_METHOD = re.compile(r"[a-z0-9][a-z0-9:_-]{0,63}")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
REQUIRED = ("id", "realm", "method", "intent", "request")


@dataclass(frozen=True, slots=True)
class MppChallenge:
    index: int  # position among the Payment challenges offered
    id: str
    realm: str
    method: str
    intent: str
    request_b64: str  # echoed verbatim in the credential
    request: Mapping[str, Any]
    expires: str | None
    expires_at: datetime | None
    digest: str | None
    opaque: str | None  # echoed verbatim
    description: str | None
    header: str  # where the credential goes: "Authorization" unless the challenge asks otherwise

    def echo(self) -> dict[str, str]:
        """The challenge as a credential echoes it: the server recomputes its binding from these."""
        out = {"id": self.id, "realm": self.realm, "method": self.method, "intent": self.intent,
               "request": self.request_b64}
        for key, value in (("expires", self.expires), ("digest", self.digest), ("opaque", self.opaque),
                           ("description", self.description)):
            if value is not None:
                out[key] = value
        if self.header.lower() != "authorization":
            out["header"] = self.header
        return out


#: A run of tchars, of a quoted string's plain characters (no quote, no
#: backslash, no control character but tab), and of blanks (and commas).
#: Matched as runs rather than read a character at a time: a challenge's
#: ``request`` parameter is a quoted base64 document of several hundred
#: characters on every MPP Sign.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")
#: A quoted string's content: plain runs and backslash escapes (a backslash
#: takes the next character as it is), read in one match, unescaped in one split.
_QUOTED_CONTENT = re.compile(r'(?:[^"\\\x00-\x08\x0a-\x1f]++|\\.)*+', re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_BLANKS = re.compile(r"[ \t]*")
_BLANKS_AND_COMMAS = re.compile(r"[ \t,]*")


class _Reader:
    """A cursor over one header value, following RFC 9110's challenge grammar."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def run(self, pattern: re.Pattern[str]) -> str:
        """The run of ``pattern`` at the cursor (perhaps empty), stepped over."""
        m = pattern.match(self.s, self.i)
        assert m is not None  # the patterns match the empty string
        self.i = m.end()
        return m.group()

    def skip(self, pattern: re.Pattern[str] = _BLANKS) -> None:
        self.run(pattern)

    def at_end(self) -> bool:
        return self.i >= len(self.s)

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def token(self) -> str:
        return self.run(_TOKEN)

    def quoted(self, name: str) -> str:
        """The quoted string at the cursor, unescaped; a bare control character or
        no closing quote is refused. Linear in its length (one match, one split)."""
        s = self.s
        assert s[self.i] == '"'
        m = _QUOTED_CONTENT.match(s, self.i + 1)
        assert m is not None  # the pattern matches the empty string
        end = m.end()
        if end < len(s) and s[end] == '"':
            self.i = end + 1
            content = m.group()
            # split() keeps each escaped character (the group) between the runs around it.
            return "".join(_ESCAPE.split(content)) if "\\" in content else content
        if end < len(s) and not (end == len(s) - 1 and s[end] == "\\"):
            raise InvalidArgument(f"WWW-Authenticate: parameter {name!r} contains a control character")
        raise InvalidArgument(f"WWW-Authenticate: parameter {name!r} has an unterminated quoted string")

    def next_after_blanks(self, pos: int) -> str:
        """The character after any blanks from ``pos`` ("" at the end), without copying the rest."""
        at = _BLANKS.match(self.s, pos)
        assert at is not None
        return self.s[at.end():at.end() + 1]


def _split(value: str) -> list[tuple[str, dict[str, str]]]:
    """(scheme, params) for every challenge in one header value. Duplicate
    parameter names in a challenge are refused."""
    r = _Reader(value)
    out: list[tuple[str, dict[str, str]]] = []
    while True:
        r.skip(_BLANKS_AND_COMMAS)
        if r.at_end():
            return out
        scheme = r.token()
        if not scheme:
            raise InvalidArgument(f"WWW-Authenticate: expected an auth scheme at offset {r.i}, "
                                  f"found {value[r.i:r.i + 20]!r}")
        params: dict[str, str] = {}
        out.append((scheme, params))
        # Counted as each starts, whatever its form: a header of endless
        # challenges is refused early rather than read to its end.
        if len(out) > MAX_CHALLENGES:
            raise InvalidArgument(f"WWW-Authenticate: more than {MAX_CHALLENGES} challenges")
        r.skip()
        if not _is_param_start(r):
            # token68 form (e.g. `Basic dXNlcg==`), or a challenge without parameters.
            m = _TOKEN68.match(value, r.i)
            if m and r.next_after_blanks(m.end()) in ("", ","):
                r.i = m.end()
            continue
        while True:
            r.skip()
            save = r.i
            name = r.token()
            if not name:
                break
            r.skip()
            if r.peek() != "=":
                r.i = save  # a bare token: the next challenge's scheme
                break
            r.i += 1
            r.skip()
            key = name.lower()
            if r.peek() == '"':
                val = r.quoted(key)
            else:
                val = r.token()
                if not val:
                    raise InvalidArgument(f"WWW-Authenticate: parameter {key!r} has no value")
            if key in params:
                raise InvalidArgument(f"WWW-Authenticate: parameter {key!r} appears twice in one challenge")
            if len(params) >= MAX_PARAMS:
                raise InvalidArgument(f"WWW-Authenticate: a challenge with more than {MAX_PARAMS} parameters")
            params[key] = val
            r.skip()
            if r.peek() == ",":
                r.i += 1
                continue
            if not r.at_end():
                # Another challenge starts without a comma only after a comma; anything else is garbage.
                raise InvalidArgument(f"WWW-Authenticate: unexpected {value[r.i:r.i + 20]!r} after parameter "
                                      f"{key!r}")
            break


def _is_param_start(r: _Reader) -> bool:
    """A `name=value` pair starts here (as opposed to token68 padding `abc=`)."""
    save = r.i
    name = r.token()
    r.skip()
    is_param = bool(name) and r.peek() == "=" and r.next_after_blanks(r.i + 1) not in ("", ",", "=")
    r.i = save
    return is_param


def b64url_json(text: str, what: str) -> Any:
    if not re.fullmatch(r"[A-Za-z0-9_\-]*={0,2}", text):
        raise InvalidArgument(f"{what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{what} is not base64url") from None
    # The header's own length was checked against the operator's limit; its decoded form is shorter.
    return untrusted_json.loads(raw, what, max_bytes=len(raw))


def _expires(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"Payment challenge: expires {text[:40]!r} is not an RFC 3339 timestamp") from None
    if at.tzinfo is None:
        raise InvalidArgument(f"Payment challenge: expires {text[:40]!r} has no time zone")
    return at


def _challenge(index: int, params: Mapping[str, str]) -> MppChallenge:
    for key in REQUIRED:
        if not params.get(key):
            raise InvalidArgument(f"Payment challenge: parameter {key!r} is missing")
    method = params["method"]
    if not _METHOD.fullmatch(method):
        raise InvalidArgument(f"Payment challenge: method {method[:40]!r} is not a payment method id")
    request = b64url_json(params["request"], "Payment challenge: request")
    if not isinstance(request, dict):
        raise InvalidArgument("Payment challenge: request must decode to a JSON object")
    if "opaque" in params:
        b64url_json(params["opaque"], "Payment challenge: opaque")
    header = params.get("header") or "Authorization"
    if not _HEADER_NAME.fullmatch(header):
        raise InvalidArgument(f"Payment challenge: header {header[:40]!r} is not an HTTP header name")
    expires = params.get("expires")
    return MppChallenge(
        index=index, id=params["id"], realm=params["realm"], method=method, intent=params["intent"],
        request_b64=params["request"], request=request, expires=expires,
        expires_at=_expires(expires) if expires else None, digest=params.get("digest"),
        opaque=params.get("opaque"), description=params.get("description"), header=header,
    )


def parse(headers: Sequence[tuple[str, str]], max_bytes: int) -> tuple[MppChallenge, ...]:
    """Every ``Payment`` challenge in the response, in the order offered."""
    found: list[MppChallenge] = []
    for name, value in headers:
        if name.lower() != "www-authenticate":
            continue
        if len(value) > max_bytes:
            raise InvalidArgument(f"WWW-Authenticate header is larger than {max_bytes} bytes")
        for scheme, params in _split(value):
            if scheme.lower() == SCHEME:
                found.append(_challenge(len(found), params))
                if len(found) > MAX_CHALLENGES:
                    raise InvalidArgument(f"more than {MAX_CHALLENGES} Payment challenges")
    return tuple(found)


__all__ = ["MppChallenge", "b64url_json", "parse"]
