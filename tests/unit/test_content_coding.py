"""The pure pieces under Pay's hostile-server handling: bounded decoding of
content-codings, and the server's refusal reason wherever it was put."""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teller import content_coding, refusal
from teller.content_coding import STEP, CodingError, Decoder, codings


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


def _decode(names: list[str], data: bytes, chunk: int = 1000) -> list[bytes]:
    d = Decoder(names)
    out = [p for i in range(0, len(data), chunk) for p in d.feed(data[i:i + chunk])]
    return out + list(d.finish())


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=5000), st.sampled_from(["gzip", "deflate", "raw"]), st.integers(1, 700))
def test_decoding_round_trips_in_any_chunking(data, coding, chunk):
    encoded = {"gzip": gzip.compress, "deflate": zlib.compress, "raw": _raw_deflate}[coding](data)
    assert b"".join(_decode(["gzip" if coding == "gzip" else "deflate"], encoded, chunk)) == data


def test_stacked_codings_are_undone_outermost_first():
    data = b"weather " * 1000
    body = gzip.compress(zlib.compress(data))  # deflate applied first, then gzip
    names = codings([("Content-Encoding", "deflate, gzip")])
    assert names == ["gzip", "deflate"]
    assert b"".join(_decode(names, body)) == data


def test_every_gzip_member_is_read():
    assert b"".join(_decode(["gzip"], gzip.compress(b"one ") + gzip.compress(b"two"))) == b"one two"


def test_a_bomb_comes_out_in_bounded_pieces_and_lazily():
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # ~64 KiB for 64 MiB
    pieces = Decoder(["gzip"]).feed(bomb)
    # Only as much is inflated as is taken: the first 16 pieces, not 256 MiB.
    taken = list(itertools.islice(pieces, 16))
    assert all(0 < len(p) <= STEP for p in taken) and sum(map(len, taken)) == 16 * STEP


def test_what_is_decoded_and_what_is_not():
    assert codings([]) == [] and codings([("Content-Encoding", "identity")]) == []
    assert codings([("content-encoding", "x-gzip")]) == ["gzip"]
    assert codings([("Content-Encoding", "br")]) is None  # not asked for: passed on as sent
    with pytest.raises(CodingError, match="3 codings"):
        codings([("Content-Encoding", "gzip, gzip, gzip")])
    with pytest.raises(CodingError, match="not valid gzip"):
        _decode(["gzip"], b"plain text, not gzip")
    assert content_coding.decoded_headers([("Content-Encoding", "gzip"), ("Content-Length", "9"), ("X", "1")]) == [
        ("X", "1")]


def _b64(doc: object, urlsafe: bool = False) -> str:
    raw = json.dumps(doc).encode()
    return (base64.urlsafe_b64encode(raw).rstrip(b"=") if urlsafe else base64.b64encode(raw)).decode()


@pytest.mark.parametrize("headers, body, said", [
    ([("PAYMENT-REQUIRED", _b64({"x402Version": 2, "error": "insufficient_funds", "accepts": []}))], b"{}",
     "insufficient_funds"),
    ([("Payment-Response", _b64({"success": False, "errorReason": "invalid_payload"}, urlsafe=True))], b"",
     "invalid_payload"),
    ([], b'{"x402Version": 1, "error": "nonce already used", "accepts": []}', "nonce already used"),
    ([], b'{"type": "https://paymentauth.org/problems/payment-expired", "title": "Expired", "detail": "late"}',
     "late"),
    ([], b'{"title": "Payment expired"}', "Payment expired"),
    ([("PAYMENT-REQUIRED", "%%% not base64")], b"not json", ""),
    ([], b'{"error": 42}', ""),
    ([], b"x" * (refusal.MAX_BYTES + 1), ""),
])
def test_the_servers_reason_is_found_where_it_was_put(headers, body, said):
    assert refusal.reason(headers, body) == said


def test_a_reason_is_cut_to_its_limit():
    assert len(refusal.reason([], json.dumps({"error": "e" * 1000}).encode())) == 200
