"""The audit chain's hashed text (pure): orjson's fast path writes exactly
what json writes (the chain against a database: tests/integration/test_audit_chain.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from teller.audit.chain import FIELDS, canonical, details_text

_VALUES = st.one_of(st.text(), st.integers(min_value=-(2**70), max_value=2**70), st.booleans(), st.none(),
                    st.floats(allow_nan=False), st.lists(st.text(), max_size=3))


def _json_canonical(doc):
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@settings(max_examples=400, deadline=None)
@example({"0": "\x7f"})  # DEL: json escapes it when ensure_ascii, orjson does not
@example({"k": "\x00\x1f\n\"\\é\u2028"})
@given(st.one_of(st.dictionaries(st.text(), st.one_of(st.text(), st.integers()), max_size=8),  # the quick path
                 st.dictionaries(st.text(max_size=8).filter(str.isascii), st.text().filter(str.isascii), max_size=8),
                 st.dictionaries(st.text(), _VALUES, max_size=8)))
def test_canonical_and_details_text_are_json_byte_for_byte(doc):
    """Every stored hash was computed over json's output: the quick path must
    give the same bytes for any document, or step aside (control characters,
    non-ASCII, lone surrogates, huge integers, floats, nesting, bools)."""
    try:
        expected = _json_canonical(doc)
    except UnicodeEncodeError:  # a lone surrogate: neither path can encode it
        with pytest.raises(UnicodeEncodeError):
            canonical(doc)
    else:
        assert canonical(doc) == expected
    assert details_text(doc) == json.dumps(doc, sort_keys=True, separators=(",", ":"))


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({k: st.one_of(st.text(), st.integers(min_value=0, max_value=2**63))
                              for k in FIELDS}))
def test_an_event_hashes_as_before(event):
    """A flat event (what Teller writes): the quick path is taken and agrees."""
    try:
        expected = _json_canonical(event)
    except UnicodeEncodeError:
        return
    assert canonical(event) == expected
