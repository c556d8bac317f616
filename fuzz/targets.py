"""Fuzz targets: one per parser of untrusted input.

Each target takes raw bytes (the fuzzer's input) and feeds them to a parser the
way the outside world can: the first byte picks the entry (a header, its
base64 form, a body, ...), the rest is the payload. A target may raise only
``TellerError`` (a refusal naming the field); anything else is a finding.

Pure functions, no atheris: ``fuzz/run.py`` drives them under atheris, and
tests/drills/test_fuzz.py replays the committed corpus through them.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable

import h11
import httpx

from teller import untrusted_json
from teller.audit import events as audit
from teller.errors import FailedPrecondition
from teller.fetch import TELLER_SETS
from teller.mpp import challenge as mpp_challenge
from teller.mpp import channel_events, metered, sse
from teller.mpp import receipt as mpp_receipt
from teller.mpp import session as mpp_session
from teller.mpp.charge import parse_request
from teller.pay import pay_input
from teller.sign.call import sign_input
from teller.spend.parse import parse, to_document
from teller.x402 import challenge as x402_challenge
from teller.x402 import receipt as x402_receipt

MAX = 256 * 1024  # the default max_challenge_bytes


def _split(data: bytes) -> tuple[int, bytes, str]:
    """(mode, payload bytes, payload as the text a gRPC string field could hold)."""
    mode = data[0] if data else 0
    rest = data[1:]
    # gRPC strings are valid UTF-8: what cannot be decoded could not arrive as text.
    return mode, rest, rest.decode("utf-8", "replace")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def x402_challenge_target(data: bytes) -> None:
    """x402: PAYMENT-REQUIRED as sent (text), as base64 of the fuzzed JSON, or a v1 body."""
    mode, raw, text = _split(data)
    if mode % 3 == 0:
        x402_challenge.parse([("PAYMENT-REQUIRED", text)], b"", MAX)
    elif mode % 3 == 1:
        x402_challenge.parse([("payment-required", base64.b64encode(raw).decode())], b"", MAX)
    else:
        x402_challenge.parse([], raw, MAX)


def _mpp_header(request: str, opaque: str | None = None, intent: str = "charge") -> str:
    extra = f', opaque="{opaque}"' if opaque is not None else ""
    return (f'Payment id="fz", realm="fuzz.example", method="tempo", intent="{intent}", '
            f'expires="2030-01-01T00:00:00Z", request="{request}"{extra}')


def mpp_challenge_target(data: bytes) -> None:
    """MPP: the WWW-Authenticate value as sent, or a valid header around a fuzzed request/opaque."""
    mode, raw, text = _split(data)
    if mode % 3 == 0:
        mpp_challenge.parse([("WWW-Authenticate", text)], MAX)
    elif mode % 3 == 1:
        mpp_challenge.parse([("WWW-Authenticate", _mpp_header(_b64url(raw)))], MAX)
    else:
        mpp_challenge.parse([("WWW-Authenticate", _mpp_header(_b64url(b"{}"), _b64url(raw)))], MAX)


def mpp_charge_request_target(data: bytes) -> None:
    """MPP charge request: the fuzzed JSON as a tempo or an evm charge's request."""
    mode, raw, _ = _split(data)
    header = _mpp_header(_b64url(raw))
    if mode % 2:
        header = header.replace('method="tempo"', 'method="evm"')
    for ch in mpp_challenge.parse([("WWW-Authenticate", header)], MAX):
        parse_request(ch)


def mpp_session_target(data: bytes) -> None:
    """MPP tempo session (teller.mpp.session): the fuzzed JSON as a session
    challenge's request, a Payment-Receipt header (base64url of it, or as sent),
    an SSE/WebSocket receipt's data, a payment-need-voucher event's data, or a
    channel descriptor."""
    mode, raw, text = _split(data)
    which = mode % 6
    if which == 0:
        for ch in mpp_challenge.parse([("WWW-Authenticate", _mpp_header(_b64url(raw), intent="session"))], MAX):
            mpp_session.parse_request(ch)
    elif which == 1:
        mpp_session.parse_receipt(_b64url(raw), MAX)
    elif which == 2:
        mpp_session.parse_receipt(text, MAX)
    elif which == 3:
        doc = untrusted_json.loads(raw, "payment-receipt event", max_bytes=MAX)
        if isinstance(doc, dict):
            mpp_session.receipt_from_json(doc, "payment-receipt event")
    elif which == 4:
        mpp_session.parse_need_voucher(raw if mode & 8 else text, MAX)
    else:
        mpp_session.parse_descriptor(untrusted_json.loads(raw, "credential", max_bytes=MAX), "credential")


def metered_stream_target(data: bytes) -> None:
    """A metered session stream's bytes (teller.mpp.sse, teller.mpp.metered): the
    first byte picks where the stream is cut into chunks; every event the bounded
    reader finds goes through the payer's rules. Whatever is cut wherever, the
    reader finds the same events, and none holds more than its bound."""
    mode, raw, _ = _split(data)
    bound = 256
    step = 1 + mode % 17
    whole = sse.SseReader(bound).feed(raw)
    cut = sse.SseReader(bound)
    pieces = [e for i in range(0, len(raw), step) for e in cut.feed(raw[i:i + step])]
    assert pieces == whole, "the events depend on where the bytes were split"
    meter = metered.Meter(bytes(32), 0, None, bound)
    for event in whole:
        assert len(event.data) <= bound, "an event's data past the reader's bound was kept"
        with contextlib.suppress(FailedPrecondition):
            meter.on_event(event)


def channel_events_target(data: bytes) -> None:
    """An escrow log as a chain's node returns it (teller.mpp.channel_events): the
    first byte picks the first topic (one of the four events, or none of them)
    and how many topics follow it; the rest is those topics' 32-byte words, then
    the log's data. Whatever decodes stays within its ABI types."""
    mode, raw, _ = _split(data)
    kinds = channel_events.TOPICS
    which, count = mode % (len(kinds) + 1), (mode >> 3) % 6
    first = [kinds[which]] if which < len(kinds) else [raw[:32]]
    words = [raw[32 * i:32 * (i + 1)] for i in range(count)]
    event = channel_events.decode(address="0x5FbDB2315678afecb367f032d93F642f64180aa3", topics=first + words,
                                  data=raw[32 * count:], tx_hash=b"\x22" * 32, block=7, log_index=3)
    if event is not None:
        assert 0 <= event.log.position < 2**63, "a position outside a signed 64-bit column"
        amounts = [getattr(event, f) for f in event.__slots__ if f != "log"]  # type: ignore[attr-defined]
        assert all(0 <= a < 2**256 for a in amounts), f"amounts outside uint256: {amounts}"


def receipts_target(data: bytes) -> None:
    """What a paid server answers: x402 PAYMENT-RESPONSE / X-PAYMENT-RESPONSE, MPP
    Payment-Receipt, or a problem-details / 402 body."""
    mode, raw, text = _split(data)
    status = (200, 201, 402, 403, 500)[(mode >> 3) % 5]
    which = mode % 6
    if which == 0:
        x402_receipt.decode(status, [("PAYMENT-RESPONSE", base64.b64encode(raw).decode())], b"", MAX)
    elif which == 1:
        x402_receipt.decode(status, [("X-PAYMENT-RESPONSE", text)], b"", MAX)
    elif which == 2:
        x402_receipt.decode(status, [], raw, MAX)
    elif which == 3:
        mpp_receipt.decode(status, [("Payment-Receipt", _b64url(raw))], b"", MAX)
    elif which == 4:
        mpp_receipt.decode(status, [("Payment-Receipt", text)], b"", MAX)
    else:
        mpp_receipt.decode(status, [], raw, MAX)


def policy_document_target(data: bytes) -> None:
    """A policy document as SetPolicy receives it (text); a valid one must
    survive its own canonical form."""
    mode, _, text = _split(data)
    wallet = bool(mode % 2)
    rules = parse(text, wallet=wallet)
    document = to_document(rules, wallet=wallet)
    again = parse(json.dumps(document), wallet=wallet)
    assert to_document(again, wallet=wallet) == document, "canonical policy form is not stable"


def _caller_headers(raw: bytes) -> list[tuple[str, str]]:
    """Pay's ``headers`` from the payload: headers separated by 0xfe, name and value
    by 0xff. Neither byte occurs in UTF-8, so every character a gRPC string can
    hold (CR, LF, NUL, colons, non-ASCII) can be in a name or a value."""
    headers = []
    for item in raw.split(b"\xfe") if raw else ():
        name, _, value = item.partition(b"\xff")
        headers.append((name.decode("utf-8", "replace"), value.decode("utf-8", "replace")))
    return headers


def _sent_as_is(headers: tuple[tuple[str, str], ...]) -> None:
    """What Pay accepts from a caller, its HTTP client (httpx, over h11) writes as it
    is: no header refused there (an error that is not the caller's) and none split
    or joined on the wire."""
    sent = [(k, v) for k, v in headers if k.lower() not in TELLER_SETS]  # as the fetcher sends them
    request = httpx.Request("GET", "http://a.example/", headers=[*sent, ("Host", "a.example")])
    wire = h11.Connection(h11.CLIENT).send(
        h11.Request(method="GET", target="/", headers=request.headers.raw))
    assert wire is not None
    lines = wire.split(b"\r\n")
    assert lines[0] == b"GET / HTTP/1.1" and lines[-2:] == [b"", b""], wire[:200]
    written = [line for line in lines[1:-2] if not line.lower().startswith(b"host:")]
    assert written == [f"{k}: {v}".encode("ascii") for k, v in sent], "headers changed on the wire"


def caller_fields_target(data: bytes) -> None:
    """A caller's scalar fields: page tokens, max_amount, Sign and Pay inputs, and
    Pay's headers (a list, or one value), which when accepted must reach the wire as they are."""
    mode, raw, text = _split(data)
    which = mode % 6
    if which == 0:
        audit.page_cursor(text, "page_token")
    elif which == 1:
        sign_input(status=402, headers=(), body=b"", url="http://a.example/", method="GET", wallet_id="w",
                   max_amount=text, idempotency_key="", protocols=())
    elif which == 2:
        sign_input(status=402, headers=(), body=b"", url=text, method=text, wallet_id=text, max_amount="",
                   idempotency_key=text, protocols=tuple(text.split(",")))
    elif which == 3:
        pay_input(url=text, method=text, headers=(), body=b"", wallet_id=text or "w", max_amount="",
                  idempotency_key="", protocols=())
    else:
        headers = _caller_headers(raw) if which == 4 else [("X-Fuzz", text)]
        accepted = pay_input(url="http://a.example/", method="GET", headers=headers, body=b"", wallet_id="w",
                             max_amount="", idempotency_key="", protocols=())
        _sent_as_is(accepted.headers)


def untrusted_json_target(data: bytes) -> None:
    """The bounded loader itself, against json: whatever it accepts, json reads the same."""
    mode, raw, text = _split(data)
    doc = untrusted_json.loads(raw if mode % 2 else text, "doc")
    assert doc == json.loads(raw if mode % 2 else text), "bounded loader and json disagree"


TARGETS: dict[str, Callable[[bytes], None]] = {
    "x402_challenge": x402_challenge_target,
    "mpp_challenge": mpp_challenge_target,
    "mpp_charge_request": mpp_charge_request_target,
    "mpp_session": mpp_session_target,
    "channel_events": channel_events_target,
    "metered_stream": metered_stream_target,
    "receipts": receipts_target,
    "policy_document": policy_document_target,
    "caller_fields": caller_fields_target,
    "untrusted_json": untrusted_json_target,
}
