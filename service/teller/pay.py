"""``Pay``: Teller makes the request, pays a 402 within policy, retries once,
and streams the final response back.

The first response that is not a 402 is returned as it is, with no payment.
A 402 is read (bounded), signed through the same path as the Sign RPC (the
same batches, so limits, idempotency and audit are identical), and the request is sent
once more with the proof. A second 402 is a failure carrying the server's
reason: Teller never pays twice for one call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from teller import untrusted_json
from teller.auth import Caller
from teller.db.models import Payment
from teller.errors import FailedPrecondition, InvalidArgument
from teller.fetch import Fetcher
from teller.lifecycle import Lifecycle
from teller.mpp import receipt as mpp_receipt
from teller.payments import SignInput, SignResult, sign_input
from teller.x402 import receipt as x402_receipt

T = TypeVar("T")
Run = Callable[..., Awaitable[Any]]
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}


@dataclass(frozen=True, slots=True)
class PayInput:
    url: str
    method: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    sign: SignInput  # everything but the challenge, which comes from the server


@dataclass(frozen=True, slots=True)
class Head:
    status: int
    headers: list[tuple[str, str]]
    payment: Payment | None
    receipt: dict[str, Any] | None
    payment_header: str


def pay_input(*, url: str, method: str, headers: Sequence[tuple[str, str]], body: bytes, wallet_id: str,
              max_amount: str, idempotency_key: str, protocols: Sequence[str]) -> PayInput:
    m = (method or "GET").upper()
    if m not in _METHODS:
        raise InvalidArgument(f"method must be one of {', '.join(sorted(_METHODS))}, got {method[:20]!r}")
    if not url:
        raise InvalidArgument("url is required")
    if not wallet_id:
        raise InvalidArgument("wallet_id is required")
    base = sign_input(status=402, headers=(), body=b"", url=url, method=m, wallet_id=wallet_id,
                      max_amount=max_amount, idempotency_key=idempotency_key, protocols=protocols)
    return PayInput(url, m, tuple(headers), body, base)


def decode_receipt(status: int, headers: Sequence[tuple[str, str]], max_bytes: int) -> dict[str, Any] | None:
    for decode in (x402_receipt.decode, mpp_receipt.decode):
        try:
            outcome = decode(status, headers, b"", max_bytes)
        except InvalidArgument:
            continue
        if isinstance(outcome.raw, dict):
            return outcome.raw
    return None


class Payer:
    def __init__(self, sign: Callable[[Caller, SignInput], Awaitable[SignResult]], lifecycle: Lifecycle,
                 fetcher: Fetcher, run: Run, max_challenge_bytes: int) -> None:
        self.sign = sign  # Sign's own path: the same batches, limits, idempotency and audit
        self.lifecycle = lifecycle
        self.fetcher = fetcher
        self.run = run  # runs blocking database work off the event loop
        self.max_challenge_bytes = max_challenge_bytes

    async def pay(self, caller: Caller, req: PayInput) -> AsyncIterator[Head | bytes]:
        """Yields the head of the final response, then its body in chunks."""
        async with self.fetcher.open(req.method, req.url, req.headers, req.body) as first:
            if first.status != 402:
                yield Head(first.status, first.headers, None, None, "")
                async for chunk in first.stream():
                    yield chunk
                return
            challenge_body = await first.read(self.max_challenge_bytes)
            final_url, challenge_headers = first.url, tuple(first.headers)
        from dataclasses import replace

        signed = await self.sign(caller, replace(
            req.sign, status=402, headers=challenge_headers, body=challenge_body, url=final_url))
        retry_headers = [(k, v) for k, v in req.headers if k.lower() != signed.header_name.lower()]
        retry_headers.append((signed.header_name, signed.header_value))
        async with self.fetcher.open(req.method, final_url, retry_headers, req.body) as second:
            if second.status in (402, 403):
                body = await second.read(self.max_challenge_bytes)
                payment = await self.run(self.lifecycle.record_outcome, signed.payment_id, caller.tenant_id,
                                         second.status, tuple(second.headers), body, caller.actor,
                                         self.max_challenge_bytes)
                reason = payment.state_reason or _problem(body) or f"HTTP {second.status}"
                raise FailedPrecondition(
                    f"paid (payment {signed.payment_id}), but the server answered {second.status} again: {reason}",
                    reason="payment_refused", metadata={"payment_id": signed.payment_id,
                                                        "server_reason": reason[:200]})
            payment = await self.run(self.lifecycle.record_outcome, signed.payment_id, caller.tenant_id,
                                     second.status, tuple(second.headers), b"", caller.actor,
                                     self.max_challenge_bytes)
            yield Head(second.status, second.headers, payment,
                       decode_receipt(second.status, second.headers, self.max_challenge_bytes), signed.header_name)
            async for chunk in second.stream():
                yield chunk


def _problem(body: bytes) -> str:
    try:
        doc = untrusted_json.loads(body, "response body", max_bytes=len(body))  # read within max_challenge_bytes
    except InvalidArgument:
        return ""
    if isinstance(doc, dict):
        for key in ("error", "detail", "title"):
            if isinstance(doc.get(key), str):
                return str(doc[key])[:200]
    return ""


__all__ = ["Head", "PayInput", "Payer", "decode_receipt", "pay_input"]
