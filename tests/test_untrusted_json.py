"""teller.untrusted_json: bounds checked on the text, whatever the interpreter's
recursion limit; and the same documents as json.loads within them."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teller import untrusted_json
from teller.errors import InvalidArgument, TellerError
from teller.mpp import challenge as mpp_challenge
from teller.rpc.interceptors import to_status
from teller.x402 import challenge as x402_challenge

loads = untrusted_json.loads


@pytest.fixture
def high_recursion_limit():
    # What py_ecc does at import: with it, json's C parser recurses until the
    # stack runs out on deep input. The bounds must not depend on this limit.
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    yield
    sys.setrecursionlimit(old)


@pytest.mark.parametrize("text, problem", [
    ("[" * 100_000, "nested more than 64 deep"),
    ("[" * 100_000 + "]" * 100_000, "nested more than 64 deep"),
    ("[" + "[]," * 30_000 + "[]]", "more than 20000 values"),
    # Deep only after 40,000 brackets of shallow blocks, where the depth scan stops
    # early: so many brackets are too many values.
    ("[" + ("[" * 63 + "]" * 63 + ",") * 320 + "[" * 70 + "]" * 71, "more than 20000 values"),
    # The same depth after fewer blocks is seen.
    ("[" + ("[" * 63 + "]" * 63 + ",") * 100 + "[" * 70 + "]" * 71, "nested more than 64 deep"),
    ("[" * 65 + "]" * 65, "nested more than 64 deep"),
    ('{"a":' * 65 + "1" + "}" * 65, "nested more than 64 deep"),
    ("[" * 200 + '"' + "]" * 200, "nested more than 64 deep"),  # unterminated string: still counted
    ("[" + ",".join(["0"] * 20_000) + "]", "more than 20000 values"),
    ('{"amount": ' + "1" * 5000 + "}", "number longer than 100 characters"),
    ("[" + "1" * 101 + "]", "number longer than 100 characters"),
    ("[1." + "0" * 5000 + "]", "number longer than 100 characters"),
    ('{"a": "' + "[" * 70 + '", "b": ' + "9" * 200 + "}", "number longer than 100 characters"),
    ('"\\ud800"', "lone surrogate"),
    ('{"\\udfff": 1}', "lone surrogate"),
    ('["ok", "\\ud83d"]', "lone surrogate"),
    ('"a\\u0000b"', "NUL"),
    ("NaN", "uses NaN, which is not a JSON number"),
    ("[-Infinity]", "uses -Infinity, which is not a JSON number"),
    ("[1e400]", "out of range"),
    ("{", "does not decode to JSON"),
])
def test_refused_with_the_document_named(high_recursion_limit, text, problem):
    with pytest.raises(InvalidArgument) as err:
        loads(text, "PAYMENT-REQUIRED header")
    assert err.value.message.startswith("PAYMENT-REQUIRED header ")
    assert problem in err.value.message


def test_bytes_must_be_utf8_and_within_size():
    with pytest.raises(InvalidArgument, match="doc is not valid UTF-8"):
        loads(b'"\xff"', "doc")
    with pytest.raises(InvalidArgument, match="doc is larger than 10 bytes"):
        loads(b"[" + b"0," * 10 + b"0]", "doc", untrusted_json.Bounds(max_bytes=10))
    with pytest.raises(InvalidArgument, match="lone surrogate"):
        loads('"\ud800"', "doc")  # a str holding one directly (a Python caller's)
    big = b'"' + b"a" * (2 * 1024 * 1024) + b'"'
    with pytest.raises(InvalidArgument, match="doc is larger than 1048576 bytes"):
        loads(big, "doc")
    # A caller holding the operator's own limit (max_challenge_bytes) sets it.
    assert len(loads(big, "doc", max_bytes=3 * 1024 * 1024)) == 2 * 1024 * 1024


@pytest.mark.parametrize("text", [
    "[" * 64 + "]" * 64,
    '["' + "[" * 10_000 + '"]',  # brackets inside strings are not structure
    '"\\\\ud800"',  # an escaped backslash, then text: no surrogate
    '"\\ud83d\\ude00"',  # a valid pair
    '["' + "1" * 5000 + '"]',  # digits in a string are text (amount parsers bound them)
    '{"a": "x,y,z", "b": [1.5e10, -0, true, false, null]}',
    "1" * 100,
])
def test_within_bounds_same_as_json(high_recursion_limit, text):
    assert loads(text, "doc") == json.loads(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**256), 2**256)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_round_trip_within_bounds(doc):
    text = json.dumps(doc)
    try:
        assert loads(text, "doc") == json.loads(text)
    except InvalidArgument as exc:
        # Only the refusals the bounds promise: a surrogate or NUL that st.text() drew.
        assert "lone surrogate" in exc.message or "NUL" in exc.message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_give_a_document_or_invalid_argument(data):
    try:
        loads(data, "doc")
    except InvalidArgument:
        pass


def test_parsers_refuse_deep_documents_by_name(high_recursion_limit):
    import base64

    deep = base64.b64encode(b"[" * 100_000).decode()
    with pytest.raises(InvalidArgument, match="PAYMENT-REQUIRED header is nested more than 64 deep"):
        x402_challenge.parse([("PAYMENT-REQUIRED", deep)], b"", 256 * 1024)
    with pytest.raises(InvalidArgument, match="402 body has a number longer"):
        x402_challenge.parse([], b'{"x402Version": ' + b"1" * 5000 + b"}", 256 * 1024)
    request = base64.urlsafe_b64encode(b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}").decode().rstrip("=")
    header = f'Payment id="a", realm="r", method="tempo", intent="charge", request="{request}"'
    with pytest.raises(InvalidArgument, match="Payment challenge: request is nested more than 64 deep"):
        mpp_challenge.parse([("WWW-Authenticate", header)], 256 * 1024)


def test_status_message_and_metadata_are_cut_to_fit_trailers():
    err = TellerError("wallet " + "a" * 70_000 + " not found", metadata={"wallet": "b" * 70_000})
    status = to_status(err)
    assert len(status.details) == 1000 and status.details.endswith("...")
    assert sum(len(k) + len(v) for k, v in status.trailing_metadata) < 8 * 1024


# -- linear time on hostile text ----------------------------------------------------
# A Sign parses on the event loop: a parser that is quadratic in its input stalls
# every call on the worker. Each of these is 256 KiB (the default
# max_challenge_bytes); a linear parser reads it in milliseconds.

SIZE = 256 * 1024


def _seconds(fn) -> float:
    import time

    started = time.perf_counter()
    try:
        fn()
    except TellerError:
        pass
    return time.perf_counter() - started


@pytest.mark.parametrize("text", [
    '"' + '\\"' * (SIZE // 2 - 1),  # unterminated: each escaped quote must not restart a scan
    "[" * 60 + '"' + '\\"' * (SIZE // 2 - 40),
    '["' + "\\\\" * (SIZE // 2 - 4) + '"]',
])
def test_loader_is_linear_on_hostile_strings(text):
    assert _seconds(lambda: loads(text, "doc")) < 0.5


@pytest.mark.parametrize("value", [
    ("Basic a, " * (SIZE // 9))[:SIZE],  # token68 challenges without end
    ("A, " * (SIZE // 3))[:SIZE],  # bare schemes
    ("Payment " + ", ".join(f"p{i}=1" for i in range(SIZE // 9)))[:SIZE],  # parameters without end
    'Payment id="' + "\\a" * (SIZE // 2 - 10) + '"',  # a quoted string of escapes
    'Payment id="' + "\\a" * (SIZE // 2 - 10),  # ... unterminated
])
def test_www_authenticate_reader_is_linear(value):
    assert _seconds(lambda: mpp_challenge.parse([("WWW-Authenticate", value)], SIZE)) < 0.5


@pytest.mark.parametrize("window", ["9" * 5000 + "d", "\u0661\u0662d", "1000000000s"])
def test_policy_window_digits_are_bounded_before_int(window):
    from teller.spend.parse import parse

    doc = json.dumps({"budgets": [{"name": "b", "limit": "1", "kind": "rolling", "window": window}]})
    with pytest.raises(InvalidArgument, match=r"policy.budgets\[0\].window: .* is not a duration"):
        parse(doc)
