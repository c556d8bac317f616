"""Handing a channel's top-up to the server, before the voucher that needs it.

A top-up is management, not a purchase: mppx's server answers a ``topUp``
credential with 204 and its receipt once it has broadcast the transaction and
read the raised deposit back from the chain, and never serves the resource
for it. So, as mppx's client does, Teller POSTs the top-up credential to the
session's URL itself, then answers the caller's challenge with the next
voucher, which the raised deposit now covers.

Until the server has taken it (a 2xx answer, recorded as ``delivered_ms``;
or its transaction mined), no voucher uses the deposit it adds: the server
would refuse it. A caller whose voucher needs that deposit waits for the
delivery (``waiting``, ``waiting_sync``), polling the database, so a top-up
delivered by another worker counts too; after ``wait_s`` it is answered
``Unavailable`` ``top_up_in_flight``, nothing signed.

If the server does not take it, the top-up's reservation stays held until
its transaction can no longer be mined; then the reconciler releases it and
lowers the channel's deposit again (``Channels.top_up_failed``). Meanwhile a
retry under the key of the call that made it hands the same credential to the
server again (``own`` in ``waiting``): nothing new is signed or reserved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from teller import refusal
from teller.channels.store import TOP_UP_IN_FLIGHT
from teller.errors import FailedPrecondition, Unavailable
from teller.fetch import Fetcher

T = TypeVar("T")

#: How long a voucher waits for another call's top-up to reach the server: the
#: server broadcasts it and reads the raised deposit back first (about a block).
WAIT_S = 5.0
#: How often the waiting caller reads whether the top-up is delivered.
POLL_S = 0.05


def awaited(exc: Unavailable) -> str | None:
    """The top-up payment a voucher's refusal waits for, if it is ``top_up_in_flight``."""
    return exc.metadata.get("top_up_payment") if exc.reason == TOP_UP_IN_FLIGHT else None


async def waiting(ask: Callable[[], Awaitable[T]], in_flight: Callable[[str], Awaitable[bool]],
                  wait_s: float = WAIT_S, own: Callable[[str], Awaitable[bool]] | None = None) -> T:
    """``ask`` for a voucher; while it is refused for a top-up still on its way,
    wait until ``in_flight(payment_id)`` says it arrived (or ``wait_s`` passed)
    and ask again. The last refusal is raised when the wait runs out. A top-up
    the caller made itself on an earlier attempt (its delivery failed) is handed
    over again by ``own(payment_id)`` (True: it was the caller's, and the server
    took it), once, instead of waited for: nobody else would deliver it."""
    deadline: float | None = None
    handed = False
    while True:
        try:
            return await ask()
        except Unavailable as exc:
            payment_id = awaited(exc)
            if payment_id is not None and own is not None and not handed:
                handed = True
                if await own(payment_id):
                    continue
            now = time.monotonic()
            deadline = now + wait_s if deadline is None else deadline
            if payment_id is None or now >= deadline:
                raise
            while time.monotonic() < deadline and await in_flight(payment_id):
                await asyncio.sleep(POLL_S)


def waiting_sync(ask: Callable[[], T], in_flight: Callable[[str], bool], wait_s: float = WAIT_S,
                 own: Callable[[str], bool] | None = None) -> T:
    """``waiting`` for a caller without an event loop."""
    deadline: float | None = None
    handed = False
    while True:
        try:
            return ask()
        except Unavailable as exc:
            payment_id = awaited(exc)
            if payment_id is not None and own is not None and not handed:
                handed = True
                if own(payment_id):
                    continue
            now = time.monotonic()
            deadline = now + wait_s if deadline is None else deadline
            if payment_id is None or now >= deadline:
                raise
            while time.monotonic() < deadline and in_flight(payment_id):
                time.sleep(POLL_S)


async def deliver(fetcher: Fetcher, url: str, header_name: str, header_value: str, max_bytes: int) -> None:
    """POST the top-up credential to ``url``; a refusal names the server's reason."""
    async with fetcher.open("POST", url, [(header_name, header_value)], b"") as answer:
        body = await answer.read(max_bytes)
        if 200 <= answer.status < 300:
            return
        why = refusal.reason(list(answer.headers), body) or f"HTTP {answer.status}"
    raise FailedPrecondition(f"the server did not take the channel's top-up: {why}", reason="top_up_refused",
                             metadata={"server_reason": why[:200]})


__all__ = ["POLL_S", "WAIT_S", "awaited", "deliver", "waiting", "waiting_sync"]
