"""The bounded SSE reader and the metered-stream rules (teller.mpp.sse, teller.mpp.metered): pure."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teller.errors import FailedPrecondition
from teller.mpp import metered, sse

pytestmark = pytest.mark.unit

CH = bytes(range(32))


def _events(chunks: list[bytes], bound: int = 1024) -> list[sse.Event]:
    reader = sse.SseReader(bound)
    return [e for c in chunks for e in reader.feed(c)]


def test_events_as_the_spec_reads_them():
    body = (b": comment\n\nevent: payment-need-voucher\ndata: {\"a\":1}\n\n"
            b"data:two\r\ndata: lines\r\n\r\nevent: x\rdata: cr\r\r")
    assert _events([body]) == [sse.Event("payment-need-voucher", '{"a":1}'), sse.Event("message", "two\nlines"),
                               sse.Event("x", "cr")]


@given(st.lists(st.integers(min_value=0, max_value=120), max_size=8))
def test_the_same_events_wherever_the_bytes_are_split(cuts):
    body = (b"event: message\r\ndata: token 1\r\n\r\nevent: payment-need-voucher\ndata: {}\n\n"
            b"event: message\rdata: x\r\rdata: " + b"y" * 40 + b"\n\n")
    points = sorted({min(c, len(body)) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    assert _events(chunks, 64) == _events([body], 64)
    # An empty read between any two (a transport may hand one on) changes nothing: a CR
    # at the end of one chunk still pairs with the LF that starts the next.
    assert _events([x for c in chunks for x in (c, b"")], 64) == _events([body], 64)


def test_an_event_past_the_bound_is_reported_oversized_not_kept():
    big = b"event: payment-need-voucher\ndata: " + b"1" * 100 + b"\n\n"
    assert _events([big[:50], big[50:]], 64) == [sse.Event("payment-need-voucher", "", oversized=True)]
    many = b"event: message\n" + b"data: 12345678\n" * 20 + b"\n"
    assert _events([many], 64) == [sse.Event("message", "", oversized=True)]


def test_content_type():
    assert sse.is_event_stream([("Content-Type", "text/event-stream; charset=utf-8")])
    assert not sse.is_event_stream([("content-type", "application/json")])
    assert not sse.is_event_stream([])


def _need(total: int, channel: bytes = CH) -> sse.Event:
    doc = {"channelId": "0x" + channel.hex(), "requiredCumulative": str(total), "acceptedCumulative": "0",
           "deposit": "1000"}
    return sse.Event(sse.NEED_VOUCHER, json.dumps(doc))


def test_the_meter_takes_increasing_requests_on_its_channel_only():
    m = metered.Meter(CH, 100, None, 4096)
    assert m.on_event(sse.Event("message", "t")) is None
    assert m.on_event(_need(200)).required_cumulative == 200
    for bad, reason in ((_need(200), "stream_voucher_not_increasing"), (_need(150), "stream_voucher_not_increasing"),
                        (_need(300, bytes(32)), "stream_channel_mismatch"),
                        (sse.Event(sse.NEED_VOUCHER, "[]"), "stream_event_invalid"),
                        (sse.Event(sse.NEED_VOUCHER, "", oversized=True), "stream_event_too_large")):
        with pytest.raises(FailedPrecondition) as e:
            m.on_event(bad)
        assert e.value.reason == reason


def test_the_meter_stops_requests_that_bring_no_data():
    m = metered.Meter(CH, 0, None, 4096)
    for n in range(1, metered.MAX_REQUESTS_WITHOUT_DATA + 1):
        m.on_event(_need(n))
    with pytest.raises(FailedPrecondition, match="in a row") as e:
        m.on_event(_need(100))
    assert e.value.reason == "stream_voucher_loop"
    m = metered.Meter(CH, 0, None, 4096)
    for n in range(1, 50):  # a message between each: an ordinary stream
        m.on_event(sse.Event("message", "t"))
        m.on_event(_need(n))


def test_an_empty_read_between_cr_and_lf_ends_one_line_not_two():
    assert _events([b"event: payment-need-voucher\r", b"", b"\ndata: {}\n\n"]) == [
        sse.Event("payment-need-voucher", "{}")]
