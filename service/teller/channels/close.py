"""Closing a channel cooperatively: the final voucher, sent to the server.

The payer cannot close a TIP-1034 channel on its own terms before the grace
period of a forced close; a cooperative close is the server's (payee's or
operator's) ``close`` transaction with the final voucher, which pays the payee
that voucher's total and refunds the rest of the deposit to the payer at once.
So Teller stops signing vouchers on the channel (``closing``), asks the
session's URL for a fresh challenge, and sends the final voucher as a ``close``
credential, as mppx's client does. The chain has the last word: the
reconciler follows the escrow's ``ChannelClosed`` event, marks the channel
closed and stops counting the refund against the budget.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from teller import offers as offers_mod
from teller import refusal
from teller.callers import Caller
from teller.channels.store import Channels, SignedVoucher
from teller.errors import FailedPrecondition, TellerError, Unavailable
from teller.fetch import Fetcher
from teller.mpp import session as mpp_session
from teller.mpp.session import Session
from teller.schemes.mpp_session import TEMPO_SESSION

Run = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Closed:
    """What the server answered to the close."""

    channel: str
    cumulative: int  # the final voucher's total: what the payee is paid
    status: int
    receipt: dict[str, Any] | None  # the server's session receipt (its ``txHash`` is the close transaction)


def _session_for(final: SignedVoucher, headers: list[tuple[str, str]], body: bytes, max_bytes: int,
                 now: datetime) -> Session:
    """The challenge of ``final``'s channel among a 402's offers."""
    collected = offers_mod.collect(headers, body, networks={}, max_bytes=max_bytes, now=now)
    for offer in collected.offers:
        if offer.scheme is not TEMPO_SESSION:
            continue
        session: Session = offer.terms
        req = session.request
        if (offer.network, req.recipient, req.currency) == (final.network, final.payee, final.token):
            return session
    raise FailedPrecondition(f"the server offered no session challenge for channel {final.channel} (payee "
                             f"{final.payee}, token {final.token} on {final.network}) to close it with",
                             reason="no_session_challenge")


def _credential(session: Session, final: SignedVoucher) -> str:
    descriptor = mpp_session.parse_descriptor(json.loads(final.descriptor), "stored channel")
    payload = mpp_session.close_payload(descriptor, bytes.fromhex(final.channel_id[2:]), final.cumulative,
                                        bytes.fromhex(final.signature[2:]))
    return mpp_session.credential(session.challenge, session.request, payload, final.payer)


class Closer:
    def __init__(self, channels: Channels, fetcher: Fetcher, run: Run, *, max_challenge_bytes: int,
                 clock: Callable[[], float]) -> None:
        self.channels = channels
        self.fetcher = fetcher
        self.run = run
        self.max_bytes = max_challenge_bytes
        self.clock = clock

    async def close(self, caller: Caller, channel: str, url: str) -> Closed:
        final: SignedVoucher = await self.run(
            functools.partial(self.channels.begin_close, caller.tenant_id, channel, actor=caller.actor))
        try:
            status, headers, _ = await self._exchange(url, final)
        except (FailedPrecondition, Unavailable) as exc:
            if exc.metadata.get("answered") == "yes":
                # The server refused it: the channel is open again, and says why.
                await self.run(functools.partial(self.channels.cancel_close, caller.tenant_id, channel,
                                                 exc.message, actor=caller.actor))
            raise
        receipt = None
        value = next((v for k, v in headers if k.lower() == "payment-receipt"), None)
        if value is not None:
            try:
                r = mpp_session.parse_receipt(value, self.max_bytes)
            except TellerError:
                pass  # the close was taken; its receipt is unreadable: the chain will tell
            else:
                receipt = {"challengeId": r.challenge_id, "channelId": "0x" + r.channel_id.hex(),
                           "acceptedCumulative": str(r.accepted_cumulative), "spent": str(r.spent),
                           "txHash": None if r.tx_hash is None else "0x" + r.tx_hash.hex()}
        return Closed(channel, final.cumulative, status, receipt)

    async def _exchange(self, url: str, final: SignedVoucher) -> tuple[int, list[tuple[str, str]], bytes]:
        """GET the session's URL for a challenge, then POST the close credential
        (once more with the fresh challenge of a 402, as mppx's client does)."""
        async with self.fetcher.open("GET", url, (), b"") as first:
            body = await first.read(self.max_bytes)
            if first.status != 402:
                raise FailedPrecondition(f"{url} answered {first.status}, not 402: no session challenge to close "
                                         "the channel with", reason="no_session_challenge")
            headers = list(first.headers)
        for attempt in range(2):
            now = datetime.fromtimestamp(self.clock(), UTC)
            session = _session_for(final, headers, body, self.max_bytes, now)
            auth = [(session.challenge.header, _credential(session, final))]
            async with self.fetcher.open("POST", url, auth, b"") as answer:
                body = await answer.read(self.max_bytes)
                headers = list(answer.headers)
                if 200 <= answer.status < 300:
                    return answer.status, headers, body
                if answer.status == 402 and attempt == 0:
                    continue
                why = refusal.reason(headers, body) or f"HTTP {answer.status}"
                raise FailedPrecondition(f"the server refused to close channel {final.channel}: {why}",
                                         reason="close_refused", metadata={"answered": "yes",
                                                                           "server_reason": why[:200]})
        raise AssertionError("unreachable")


__all__ = ["Closed", "Closer"]
