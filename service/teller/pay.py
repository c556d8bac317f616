"""``Pay``: Teller makes the request, pays a 402 within policy, retries once,
and streams the final response back.

The first response that is not a 402 is returned as it is, with no payment.
A 402 is read (bounded), signed through the same path as the Sign RPC (the
same batches, so limits, idempotency and audit are identical), and the request is sent
once more with the proof. A second 402 is a failure carrying the server's
reason: Teller never pays twice for one call.

One deadline (``pay_deadline_seconds``) covers everything until the final
response's headers; the body then streams with the read timeout between
chunks. Once the proof has left, every error names the payment (message and
``payment_id`` in its metadata) and the payment says what happened (see
``teller.lifecycle``). A retry with the idempotency key of a settled payment is
answered from what Teller kept, never paid or sent again.

A metered MPP session stream (an event stream paid with a session credential)
is relayed byte for byte while each ``payment-need-voucher`` event it carries
gets the next voucher, POSTed as mppx's client does (``_body``; the rules are
``teller.mpp.metered``, the cap the caller's ``max_stream_amount``). A voucher
past the channel's deposit waits for a top-up, made as Sign makes one.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from teller import lifecycle as lc
from teller import refusal as refusal_mod
from teller.callers import Caller
from teller.channels import top_up as top_up_mod
from teller.db.models import Payment
from teller.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    TellerError,
    Unavailable,
)
from teller.fetch import HOP_BY_HOP, Fetcher, Response
from teller.lifecycle import Lifecycle
from teller.mpp import metered, sse
from teller.mpp.challenge import b64url_json
from teller.schemes import REGISTRY, Offer
from teller.schemes.base import SchemeId
from teller.sign.call import Call, SignResult, sign_input
from teller.sign.service import TOP_UP_ROUNDS
from teller.signing import SignInput
from teller.states import PaymentState

T = TypeVar("T")
Run = Callable[..., Awaitable[Any]]
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
#: RFC 9110 field-name (a token) and field-value (visible ASCII, space and tab; no CR, LF or NUL).
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[\t\x20-\x7e]*")
MAX_HEADERS, MAX_HEADER_BYTES = 100, 64 * 1024
#: Notes written after their call was cancelled: held so they are not collected unfinished.
_NOTES: set[asyncio.Task[None]] = set()


@dataclass(frozen=True, slots=True)
class PayInput:
    url: str
    method: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    sign: SignInput  # everything but the challenge, which comes from the server
    #: The most a metered stream's in-band voucher requests may add in this call (None: no cap of its own).
    max_stream_amount: int | None = None
    #: The MPP session offer the request was paid under, read as it was signed (its challenge
    #: may expire during a long stream): what a metered stream's vouchers answer.
    session: Offer | None = None


@dataclass(frozen=True, slots=True)
class PayHead:
    """The first message of a Pay stream (the proto's ``PayHead``): the paid
    response's status and headers, and the payment made for it; the body follows."""

    status: int
    headers: list[tuple[str, str]]
    payment: Payment | None
    receipt: dict[str, Any] | None
    payment_header: str
    #: A retry of a settled payment: nothing was paid or sent; status/headers/body are what
    #: Teller kept of the paid response (status 0 when it kept none).
    already_paid: bool = False


def caller_headers(headers: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The caller's headers, refused (naming the header) when they could not be
    sent as they are: a bad name or value would be rejected, or worse, split
    into two headers, by the HTTP layer; hop-by-hop ones belong to Teller's connection."""
    if len(headers) > MAX_HEADERS:
        raise InvalidArgument(f"headers: at most {MAX_HEADERS} headers, got {len(headers)}")
    if sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES:
        raise InvalidArgument(f"headers: more than {MAX_HEADER_BYTES} bytes in all")
    for name, value in headers:
        if not _NAME.fullmatch(name):
            raise InvalidArgument(f"headers: {name[:60]!r} is not a valid header name (an RFC 9110 token)")
        if not _VALUE.fullmatch(value):
            raise InvalidArgument(f"headers: the value of {name} must be visible ASCII, spaces and tabs "
                                  "(no CR, LF or other control characters, no non-ASCII)")
        if value != value.strip(" \t"):
            # RFC 9110 field-value: whitespace around it is not part of it; the HTTP
            # layer refuses to send it (which would read as the server being unreachable).
            raise InvalidArgument(f"headers: the value of {name} must not begin or end with a space or tab")
        if name.lower() in HOP_BY_HOP:
            raise InvalidArgument(f"headers: {name} is a hop-by-hop header; Teller sets it for its own connection")
    return tuple(headers)


def pay_input(*, url: str, method: str, headers: Sequence[tuple[str, str]], body: bytes, wallet_id: str,
              max_amount: str, idempotency_key: str, protocols: Sequence[str],
              max_stream_amount: str = "") -> PayInput:
    m = (method or "GET").upper()
    if m not in _METHODS:
        raise InvalidArgument(f"method must be one of {', '.join(sorted(_METHODS))}, got {method[:20]!r}")
    if not url:
        raise InvalidArgument("url is required")
    if not wallet_id:
        raise InvalidArgument("wallet_id is required")
    checked = caller_headers(headers)
    base = sign_input(status=402, headers=(), body=b"", url=url, method=m, wallet_id=wallet_id,
                      max_amount=max_amount, idempotency_key=idempotency_key, protocols=protocols)
    stream_cap = None
    if max_stream_amount:
        if not (max_stream_amount.isascii() and max_stream_amount.isdigit()) or len(max_stream_amount) > 78:
            raise InvalidArgument("max_stream_amount must be an integer string of atomic units (at most 78 digits), "
                                  f"got {max_stream_amount[:40]!r}")
        stream_cap = int(max_stream_amount)
    return PayInput(url, m, checked, body, base, stream_cap)


class StreamVouchers(Protocol):
    """What Pay needs of the Sign service to pay a metered stream (``Payments``)."""

    def session_offer(self, req: SignInput) -> Offer | None: ...

    def stream_voucher(self, caller: Caller, offer: Offer, req: SignInput, channel_id: str, total: int,
                       stream_cap: int | None, stream_paid: int) -> tuple[str, str, int] | Call: ...

    @staticmethod
    def top_up_gave_out(call: Call) -> TellerError: ...

    def top_up_in_flight(self, payment_id: str) -> bool: ...

    top_up_wait_s: float


def _paid_channel(signed: SignResult) -> tuple[bytes, int] | None:
    """The channel and total of the session credential Teller sent (its own, so
    well-formed): the channel a metered stream may ask vouchers on."""
    try:
        payload = b64url_json(signed.header_value.split(" ", 1)[1], "credential")["payload"]
        return bytes.fromhex(payload["channelId"][2:]), int(payload["cumulativeAmount"])
    except (InvalidArgument, IndexError, KeyError, TypeError, ValueError):
        return None


#: Each protocol's receipt decoder (x402, then MPP).
_RECEIPT_DECODERS = REGISTRY.receipt_decoders()


def decode_receipt(status: int, headers: Sequence[tuple[str, str]], max_bytes: int) -> dict[str, Any] | None:
    for decode in _RECEIPT_DECODERS:
        try:
            outcome = decode(status, headers, b"", max_bytes)
        except InvalidArgument:
            continue
        if isinstance(outcome.raw, dict):
            return outcome.raw
    return None


def _with_proof(headers: Sequence[tuple[str, str]], signed: SignResult) -> list[tuple[str, str]]:
    """The caller's headers for the paid retry, with every header the proof comes
    with (MPP's Idempotency-Key too) replacing the caller's own."""
    sent = [(signed.header_name, signed.header_value), *signed.headers]
    names = {k.lower() for k, _ in sent}
    return [*((k, v) for k, v in headers if k.lower() not in names), *sent]


def _naming(err: TellerError, payment_id: str) -> TellerError:
    """``err`` as the caller sees it once a proof has left: naming the payment."""
    if err.metadata.get("payment_id") != payment_id:
        err.metadata["payment_id"] = payment_id
        err.message = f"payment {payment_id}: {err.message}"
        err.args = (err.message,)
    return err


class Payer:
    def __init__(self, sign: Callable[[Caller, SignInput], Awaitable[SignResult]], lifecycle: Lifecycle,
                 fetcher: Fetcher, run: Run, max_challenge_bytes: int, deadline_s: float = 60.0,
                 keep_bytes: int = 0, vouchers: StreamVouchers | None = None,
                 top_up: Callable[[Call], Awaitable[None]] | None = None) -> None:
        self.sign = sign  # Sign's own path: the same batches, limits, idempotency and audit
        self.lifecycle = lifecycle
        self.fetcher = fetcher
        self.run = run  # runs blocking database work off the event loop
        self.max_challenge_bytes = max_challenge_bytes
        self.deadline_s = deadline_s
        self.keep_bytes = keep_bytes
        self.vouchers = vouchers  # pays a metered stream's in-band voucher requests; None: relayed only
        self.top_up = top_up  # Sign's top-up step: a stream's voucher past the deposit waits for it

    def _late(self, what: str) -> Unavailable:
        return Unavailable(f"{what} took longer than the call's deadline of {self.deadline_s:g} s "
                           "(pay_deadline_seconds)", reason="deadline_exceeded")

    async def pay(self, caller: Caller, req: PayInput) -> AsyncIterator[PayHead | bytes]:
        """Yields the head of the final response, then its body in chunks."""
        deadline = asyncio.get_running_loop().time() + self.deadline_s
        key = req.sign.idempotency_key
        if key:
            earlier = await self.run(self.lifecycle.by_idempotency_key, caller.tenant_id, key)
            if (earlier is not None and earlier.state == PaymentState.SETTLED and earlier.wallet_id == req.sign.wallet_id
                    and earlier.resource_url == req.url):
                async for part in self._already_paid(earlier):
                    yield part
                return
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.timeout_at(deadline):
                    first = await stack.enter_async_context(
                        self.fetcher.open(req.method, req.url, req.headers, req.body))
                    challenge_body = await first.read(self.max_challenge_bytes) if first.status == 402 else b""
            except TimeoutError:
                raise self._late(f"{req.url} (until its response's headers and any 402 body)") from None
            if first.status != 402:
                yield PayHead(first.status, first.headers, None, None, "")
                async for chunk in first.stream():
                    yield chunk
                return
            final_url, challenge_headers = first.url, tuple(first.headers)
        sign_req = replace(req.sign, status=402, headers=challenge_headers, body=challenge_body, url=final_url)
        signed = await self.sign(caller, sign_req)
        if self.vouchers is not None and signed.scheme == SchemeId.TEMPO_SESSION:
            req = replace(req, sign=sign_req, session=self.vouchers.session_offer(sign_req))  # pure: no I/O
        if not signed.payment_id:
            # An MPP session voucher: no payment of its own to look up or record (its
            # channel's open is one; the voucher is recorded on the channel).
            async for part in self._voucher_paid(caller, req, signed, final_url, deadline):
                yield part
            return
        if key:
            # The key's payment may have been settled by the time this call signed.
            current = await self.run(self.lifecycle.get, signed.payment_id, caller.tenant_id)
            if current.state == PaymentState.SETTLED:
                async for part in self._already_paid(current):
                    yield part
                return
            if current.state in (PaymentState.EXPIRED, PaymentState.VOIDED):
                raise FailedPrecondition(
                    f"payment {current.id} for idempotency_key {key!r} is {current.state} "
                    f"({current.state_reason or 'no reason given'}): its proof can no longer pay",
                    reason="payment_" + current.state, metadata={"payment_id": current.id})
        if asyncio.get_running_loop().time() >= deadline:
            if not key:  # a reused key's proof may have left in an earlier call: then "not sent" would be false
                await self._note(signed, caller, lc.NOT_SENT, "the call's deadline passed while signing")
            raise _naming(self._late("signing"), signed.payment_id)
        async for part in self._paid(caller, req, signed, final_url, deadline):
            yield part

    async def _paid(self, caller: Caller, req: PayInput, signed: SignResult, url: str,
                    deadline: float) -> AsyncIterator[PayHead | bytes]:
        """The retry with the proof. From here on the server may hold a valid proof:
        every error names the payment, and a payment left ``signed`` says why."""
        recorded = False
        try:
            async with contextlib.AsyncExitStack() as stack:
                second, refusal = await self._send_paid(stack, req, signed, url, deadline)
                try:
                    payment = await self.run(self.lifecycle.record_outcome, signed.payment_id, caller.tenant_id,
                                             second.status, tuple(second.headers), refusal or b"", caller.actor,
                                             self.max_challenge_bytes)
                except InvalidArgument as exc:
                    # The server's receipt is malformed: its word is not recorded, but the
                    # response it answered with is still the one the caller paid for.
                    await self._note(signed, caller, lc.RECEIPT_UNREADABLE, exc.message)
                    payment = await self.run(self.lifecycle.get, signed.payment_id, caller.tenant_id)
                recorded = True
                if refusal is not None:
                    reason = (payment.state_reason if payment.state != PaymentState.SIGNED else "") or refusal_mod.reason(
                        second.headers, refusal) or f"HTTP {second.status}"
                    raise FailedPrecondition(
                        f"paid (payment {signed.payment_id}), but the server answered {second.status} again: "
                        f"{reason}", reason="payment_refused",
                        metadata={"payment_id": signed.payment_id, "server_reason": reason[:200]})
                yield PayHead(second.status, second.headers, payment,
                           decode_receipt(second.status, second.headers, self.max_challenge_bytes),
                           signed.header_name)
                async for chunk in self._keeping(second, signed.payment_id,
                                                 self._body(caller, req, signed, second, url)):
                    yield chunk
        except asyncio.CancelledError:
            # The caller went away (or its own deadline passed) while the server held the proof.
            if not recorded:
                task = asyncio.get_running_loop().create_task(self._note(
                    signed, caller, lc.ANSWER_LOST, "the caller cancelled, or its deadline passed, before the answer"))
                _NOTES.add(task)
                task.add_done_callback(_NOTES.discard)
            raise
        except TellerError as err:
            if not recorded:
                why = (lc.REDIRECT_REFUSED if isinstance(err, PermissionDenied) and "redirected_from" in err.metadata
                       else lc.ANSWER_LOST)
                await self._note(signed, caller, why, err.message)
            elif err.reason != "payment_refused" and "stream_voucher" not in err.metadata:
                await self._note(signed, caller, lc.ANSWER_LOST, f"body cut off: {err.message}")
            raise _naming(err, signed.payment_id) from None

    async def _send_paid(self, stack: contextlib.AsyncExitStack, req: PayInput, signed: SignResult, url: str,
                         deadline: float) -> tuple[Response, bytes | None]:
        """The paid retry, sent: its response (held open on ``stack``) and, for a
        402 or 403, the refusal's body."""
        try:
            async with asyncio.timeout_at(deadline):
                second = await stack.enter_async_context(
                    self.fetcher.open(req.method, url, _with_proof(req.headers, signed), req.body))
                refusal = await second.read(self.max_challenge_bytes) if second.status in (402, 403) else None
        except TimeoutError:
            raise self._late(f"the paid request to {url}") from None
        return second, refusal

    async def _voucher_paid(self, caller: Caller, req: PayInput, signed: SignResult, url: str,
                            deadline: float) -> AsyncIterator[PayHead | bytes]:
        """The retry with a session voucher: the server's answer, streamed."""
        async with contextlib.AsyncExitStack() as stack:
            second, refusal = await self._send_paid(stack, req, signed, url, deadline)
            if refusal is not None:
                reason = refusal_mod.reason(second.headers, refusal) or f"HTTP {second.status}"
                raise FailedPrecondition(f"the server answered a session voucher with {second.status}: {reason}",
                                         reason="payment_refused", metadata={"server_reason": reason[:200]})
            yield PayHead(second.status, second.headers, None,
                          decode_receipt(second.status, second.headers, self.max_challenge_bytes), signed.header_name)
            async for chunk in self._body(caller, req, signed, second, url):
                yield chunk

    # -- metered streams (MPP sessions) ------------------------------------------------------------------------

    async def _body(self, caller: Caller, req: PayInput, signed: SignResult, response: Response,
                    url: str) -> AsyncIterator[bytes]:
        """The paid body, relayed byte for byte as it arrives. When it is a metered
        session stream (``text/event-stream`` paid with a session credential), its
        ``payment-need-voucher`` events are answered as they pass: the next voucher
        is signed and POSTed to ``url``, as mppx's client does, while the stream
        waits for it. The payment events go on to the caller like every other byte."""
        offer, paid = req.session, None
        if offer is not None and response.status < 300 and sse.is_event_stream(response.headers):
            paid = _paid_channel(signed)
        if offer is None or paid is None:
            async for chunk in response.stream():
                yield chunk
            return
        meter = metered.Meter(paid[0], paid[1], req.max_stream_amount, self.max_challenge_bytes)
        reader = sse.SseReader(self.max_challenge_bytes)
        async for chunk in response.stream():
            yield chunk
            for event in reader.feed(chunk):
                try:
                    need = meter.on_event(event)
                    if need is not None:
                        await self._stream_voucher(caller, req, offer, meter, need.required_cumulative, url)
                except TellerError as err:
                    err.metadata["stream_voucher"] = str(meter.vouchers + 1)
                    err.metadata.setdefault("stream_paid", str(meter.paid))
                    raise

    async def _stream_voucher(self, caller: Caller, req: PayInput, offer: Offer, meter: metered.Meter, total: int,
                              url: str) -> None:
        """Sign the voucher for ``total`` and POST it (bodiless, ``Authorization``
        only, as mppx's client does). A 402 answer with a fresh challenge (the
        first one expired during the stream) gets the same voucher once more,
        wrapped in the new challenge: nothing new is signed for it."""
        assert self.vouchers is not None
        channel = "0x" + meter.channel_id.hex()
        name, value, increment = await self._voucher_in_room(caller, req, offer, meter, channel, total)
        meter.signed(increment)
        status, headers, body = await self._post_voucher(url, name, value)
        if status == 402:
            fresh = await self.run(self.vouchers.session_offer, replace(req.sign, headers=tuple(headers), body=body))
            if fresh is not None:
                name, value, again = await self._voucher_in_room(caller, req, fresh, meter, channel, total)
                meter.signed(again)  # zero: the channel already reached ``total``
                status, headers, body = await self._post_voucher(url, name, value)
        if not 200 <= status < 300:
            reason = refusal_mod.reason(headers, body) or f"HTTP {status}"
            raise FailedPrecondition(f"the server answered the stream's voucher for {total} with {status}: {reason}",
                                     reason="payment_refused", metadata={"server_reason": reason[:200]})

    async def _voucher_in_room(self, caller: Caller, req: PayInput, offer: Offer, meter: metered.Meter,
                               channel: str, total: int) -> tuple[str, str, int]:
        """The voucher for ``total`` (header name, value, increment). When the channel's
        deposit does not reach it (and the caps and the policy allow it), the
        channel is topped up first, through the Sign path's own step (the same
        batch, reservation, audit, policy and ``max_channel_deposit``; one top-up
        however many callers ask), as mppx's client tops up before it answers: its
        size is Teller's to decide from its own records, never the event's
        ``deposit``. A top-up adds deposit, not a voucher: it does not count
        against ``max_stream_amount``, which the voucher is judged by before it. A
        total that needs the deposit of a top-up still on its way to the server
        (another call's) waits for it to arrive, as a Sign call's voucher does."""
        assert self.vouchers is not None and self.top_up is not None
        vouchers = self.vouchers

        async def ask() -> tuple[str, str, int] | Call:
            return await self.run(vouchers.stream_voucher, caller, offer, req.sign, channel, total, meter.cap,
                                  meter.paid)

        async def in_flight(payment_id: str) -> bool:
            return await self.run(vouchers.top_up_in_flight, payment_id)

        rounds = 0
        while True:
            got = await top_up_mod.waiting(ask, in_flight, vouchers.top_up_wait_s)
            if not isinstance(got, Call):
                return got
            if rounds == TOP_UP_ROUNDS:  # each time, other callers used the room before this voucher
                raise self.vouchers.top_up_gave_out(got)
            await self.top_up(got)
            rounds += 1

    async def _post_voucher(self, url: str, name: str, value: str) -> tuple[int, list[tuple[str, str]], bytes]:
        try:
            async with asyncio.timeout(self.deadline_s):
                async with self.fetcher.open("POST", url, [(name, value)], b"") as answer:
                    return answer.status, answer.headers, await answer.read(self.max_challenge_bytes)
        except TimeoutError:
            raise self._late(f"the stream's voucher POST to {url}") from None

    async def _keeping(self, response: Response, payment_id: str, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The paid body, kept as it passes when the operator asked for it and it fits."""
        kept: bytearray | None = bytearray() if self.keep_bytes > 0 and response.status < 400 else None
        async for chunk in body:
            if kept is not None:
                kept += chunk
                if len(kept) > self.keep_bytes:
                    kept = None
            yield chunk
        if kept is not None:
            await self.run(self.lifecycle.keep_response, payment_id, response.status, response.headers, bytes(kept))

    async def _already_paid(self, payment: Payment) -> AsyncIterator[PayHead | bytes]:
        kept = await self.run(self.lifecycle.kept_response, payment.id)
        status, headers, body = kept if kept is not None else (0, [], b"")
        yield PayHead(status, list(headers), payment, None, payment.header_name, already_paid=True)
        if body:
            yield body

    async def _note(self, signed: SignResult, caller: Caller, why: str, detail: str) -> None:
        with contextlib.suppress(TellerError):  # the caller's error matters more than this note
            await self.run(self.lifecycle.note_unanswered, signed.payment_id, caller.tenant_id, why, detail,
                           caller.actor)


__all__ = ["PayHead", "PayInput", "Payer", "StreamVouchers", "caller_headers", "decode_receipt", "pay_input"]
