"""What a payer accepts from a metered MPP session stream (mppx's ``sse: true``
transport): the rules for its in-band ``payment-need-voucher`` requests, pure.

mppx's server charges one tick per ``message`` event; when the vouchers it
holds do not cover the next tick it sends ``payment-need-voucher`` (``channelId``,
``requiredCumulative``, ``acceptedCumulative``, ``deposit``) once and waits until a
voucher for at least ``requiredCumulative`` arrives (POSTed to the stream's URL);
it ends with ``payment-receipt`` (``dist/tempo/session/server/Transports.js``,
``Sse.js``). A server can ask for anything, so each request is held to:

- the channel the call's own credential named (no other channel of the wallet's);
- a total above every total asked for (or paid) before in the call: a repeated
  or smaller request is a server going round in circles, not a new tick;
- at most ``MAX_REQUESTS_WITHOUT_DATA`` requests in a row with no ``message``
  between them;
- the caller's ``max_stream_amount`` over the call (the store checks the
  increment under the channel's lock; the policy and deposit bound it too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from teller import untrusted_json
from teller.errors import FailedPrecondition, InvalidArgument
from teller.mpp import session as mpp_session
from teller.mpp import sse

#: mppx asks once per tick it cannot cover, and emits the tick before asking again;
#: a generator that charges by hand may ask a few times per message, not endlessly.
MAX_REQUESTS_WITHOUT_DATA = 8


@dataclass(slots=True)
class Meter:
    """One Pay call's metered stream, as its events pass."""

    channel_id: bytes  # the channel the call's credential opened or paid on
    last_total: int  # the total of the voucher that paid the request
    cap: int | None  # max_stream_amount
    max_event_bytes: int
    paid: int = 0  # what this call's stream vouchers added
    vouchers: int = 0
    receipt: mpp_session.SessionReceipt | None = None
    _in_a_row: int = field(default=0)

    def on_event(self, event: sse.Event) -> mpp_session.NeedVoucher | None:
        """The voucher request ``event`` makes, or None; an error when it is one no
        payer should answer."""
        if event.type == sse.MESSAGE:
            self._in_a_row = 0
            return None
        if event.type not in (sse.NEED_VOUCHER, sse.RECEIPT):
            return None
        if event.oversized:
            raise FailedPrecondition(f"the stream's {event.type} event is larger than {self.max_event_bytes} bytes",
                                     reason="stream_event_too_large")
        if event.type == sse.RECEIPT:
            # The server's account of the stream: informative (the caller gets its bytes
            # too); a malformed one costs nothing, so it does not end the stream.
            try:
                doc = untrusted_json.loads(event.data, "payment-receipt", max_bytes=self.max_event_bytes)
                self.receipt = mpp_session.receipt_from_json(doc, "payment-receipt") if isinstance(doc, dict) else None
            except InvalidArgument:
                self.receipt = None
            return None
        try:
            need = mpp_session.parse_need_voucher(event.data, self.max_event_bytes)
        except InvalidArgument as exc:  # the server's word, not the caller's request: not INVALID_ARGUMENT
            raise FailedPrecondition(f"the stream's {exc.message}", reason="stream_event_invalid") from None
        if need.channel_id != self.channel_id:
            raise FailedPrecondition(
                f"the stream asked for a voucher on channel 0x{need.channel_id.hex()}, not on 0x{self.channel_id.hex()}, "
                "the channel this call paid on", reason="stream_channel_mismatch")
        if need.required_cumulative <= self.last_total:
            raise FailedPrecondition(
                f"the stream asked for a voucher for {need.required_cumulative} in total, not above the "
                f"{self.last_total} already asked for or paid in this call", reason="stream_voucher_not_increasing")
        self._in_a_row += 1
        if self._in_a_row > MAX_REQUESTS_WITHOUT_DATA:
            raise FailedPrecondition(f"the stream asked for {self._in_a_row} vouchers in a row without sending any "
                                     "data between them", reason="stream_voucher_loop")
        self.last_total = need.required_cumulative
        return need

    def signed(self, increment: int) -> None:
        self.paid += increment
        self.vouchers += 1


__all__ = ["MAX_REQUESTS_WITHOUT_DATA", "Meter"]
