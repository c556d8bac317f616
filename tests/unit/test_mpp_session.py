"""MPP tempo sessions, the pure pieces (``teller.mpp.session``, ``teller.mpp.channel``):
the request read into canonical values within its bounds, refusals that name
the field, and the channel's invariants. Byte-for-byte agreement with mppx and
viem: tests/integration/test_mpp_session_vectors.py."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from eth_utils import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from teller import values
from teller.eip712 import TypedData
from teller.errors import FailedPrecondition, InvalidArgument
from teller.mpp import challenge as mc
from teller.mpp import channel as chn
from teller.mpp import session
from teller.schemes import REGISTRY

TOKEN = "0x20C0000000000000000000000000000000000000"
PAYEE = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
PAYER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
ESCROW = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def _b64(doc: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def _request(**over: Any) -> dict[str, Any]:
    details = {"escrowContract": ESCROW, "chainId": 31337, "sessionProtocol": "v2"}
    details.update(over.pop("methodDetails", {}))
    doc: dict[str, Any] = {"amount": "25", "currency": TOKEN, "recipient": PAYEE, "unitType": "token",
                           "suggestedDeposit": "10000", "methodDetails": details}
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not None}


def _challenge(doc: object, intent: str = "session") -> mc.MppChallenge:
    (ch,) = mc.parse([("WWW-Authenticate", f'Payment id="s1", realm="api.test", method="tempo", '
                                           f'intent="{intent}", request="{_b64(doc)}"')], 65536)
    return ch


def _descriptor(**over: Any) -> chn.ChannelDescriptor:
    fields: dict[str, Any] = {"payer": PAYER, "payee": PAYEE, "operator": chn.ZERO_ADDRESS, "token": TOKEN,
                              "salt": b"\x11" * 32, "authorized_signer": PAYER,
                              "expiring_nonce_hash": b"\x22" * 32}
    fields.update(over)
    return chn.ChannelDescriptor(**fields)


def test_a_mppx_shaped_request_reads_into_canonical_values():
    snapshot = {"channelId": "0x" + "AB" * 32, "descriptor": _descriptor().to_json(), "deposit": "10000",
                "acceptedCumulative": "50", "requiredCumulative": "75", "spent": "50", "units": 2}
    req = session.parse_request(_challenge(_request(methodDetails={
        "channelId": "0x" + "ab" * 32, "minVoucherDelta": "5", "operator": PAYEE.lower(), "feeToken": TOKEN,
        "sessionSnapshot": snapshot})))
    assert (req.amount, req.unit_type, req.suggested_deposit, req.min_voucher_delta) == (25, "token", 10000, 5)
    assert (req.currency, req.recipient, req.operator, req.escrow) == (TOKEN, PAYEE, PAYEE, ESCROW)
    assert req.chain_id == 31337 and req.network == "eip155:31337" and req.custom_escrow
    assert req.channel_id == bytes.fromhex("ab" * 32) and req.fee_token == TOKEN and not req.fee_payer
    assert req.snapshot is not None
    assert (req.snapshot.accepted_cumulative, req.snapshot.required_cumulative) == (50, 75)
    assert req.snapshot.descriptor == _descriptor()


def test_defaults_are_mppx_clients_defaults():
    doc = _request(suggestedDeposit=None, methodDetails={"escrowContract": None, "chainId": None})
    doc["methodDetails"] = {k: v for k, v in doc["methodDetails"].items() if v is not None}
    req = session.parse_request(_challenge(doc))
    assert req.escrow == chn.ESCROW_PRECOMPILE and not req.custom_escrow
    assert req.chain_id == session.DEFAULT_CHAIN_ID
    assert req.operator == chn.ZERO_ADDRESS and req.min_voucher_delta == 0
    assert req.suggested_deposit is None and req.channel_id is None and req.snapshot is None
    # mppx's client reads escrowContract first, then escrow.
    doc["methodDetails"]["escrow"] = ESCROW
    assert session.parse_request(_challenge(doc)).escrow == ESCROW


@pytest.mark.parametrize(("over", "field"), [
    ({"amount": "0"}, "request.amount: must be positive"),
    ({"amount": "01"}, "request.amount"),
    ({"amount": 25}, "request.amount"),
    ({"amount": "-1"}, "request.amount"),
    ({"amount": str(2**96)}, "request.amount"),
    ({"amount": None}, "request.amount"),
    ({"currency": "0x1234"}, "request.currency"),
    ({"recipient": "0x" + PAYEE[2:].swapcase()}, "request.recipient"),  # mixed case, wrong checksum
    ({"recipient": None}, "request.recipient"),
    ({"unitType": ""}, "request.unitType"),
    ({"unitType": " token"}, "request.unitType"),
    ({"unitType": "t" * 65}, "request.unitType"),
    ({"unitType": 7}, "request.unitType"),
    ({"suggestedDeposit": "1e6"}, "request.suggestedDeposit"),
    ({"methodDetails": {"sessionProtocol": "v1"}}, "request.methodDetails.sessionProtocol"),
    ({"methodDetails": {"sessionProtocol": None}}, "request.methodDetails.sessionProtocol"),
    ({"methodDetails": {"chainId": "31337"}}, "request.methodDetails.chainId"),
    ({"methodDetails": {"chainId": True}}, "request.methodDetails.chainId"),
    ({"methodDetails": {"chainId": 0}}, "request.methodDetails.chainId"),
    ({"methodDetails": {"escrowContract": "0xnothex"}}, "request.methodDetails.escrowContract"),
    ({"methodDetails": {"channelId": "0x" + "ab" * 31}}, "request.methodDetails.channelId"),
    ({"methodDetails": {"minVoucherDelta": "x"}}, "request.methodDetails.minVoucherDelta"),
    ({"methodDetails": {"feePayer": "yes"}}, "request.methodDetails.feePayer"),
    ({"methodDetails": {"feeToken": 1}}, "request.methodDetails.feeToken"),
    ({"methodDetails": {"operator": ""}}, "request.methodDetails.operator"),
    ({"methodDetails": {"sessionSnapshot": []}}, "request.methodDetails.sessionSnapshot"),
    ({"methodDetails": {"sessionSnapshot": {"channelId": "0x" + "00" * 32}}},
     "request.methodDetails.sessionSnapshot.descriptor"),
])
def test_malformed_requests_name_the_field(over, field):
    with pytest.raises(InvalidArgument, match=field.replace(".", r"\.")):
        session.parse_request(_challenge(_request(**over)))


def test_method_details_must_be_an_object_and_the_intent_a_session():
    doc = _request()
    doc["methodDetails"] = "v2"
    with pytest.raises(InvalidArgument, match=r"request\.methodDetails: must be an object"):
        session.parse_request(_challenge(doc))
    with pytest.raises(InvalidArgument, match="not a tempo session"):
        session.parse_request(_challenge(_request(), intent="charge"))


@given(st.integers(values.MAX_AMOUNT + 1, chn.MAX_UINT96))
def test_amounts_past_the_ledger_are_refused_as_out_of_range(amount):
    with pytest.raises(FailedPrecondition, match=r"request\.amount"):
        session.parse_request(_challenge(_request(amount=str(amount))))


@settings(max_examples=200, deadline=None)
@given(amount=st.integers(1, values.MAX_AMOUNT), suggested=st.integers(0, values.MAX_AMOUNT),
       chain_id=st.integers(1, values.MAX_CHAIN_ID), spelling=st.sampled_from([str.lower, str.upper, None]),
       unit=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64))
def test_spellings_of_one_request_are_one_request(amount, suggested, chain_id, spelling, unit):
    def spell(address: str) -> str:
        return address if spelling is None else "0x" + spelling(address[2:])
    doc = _request(amount=str(amount), suggestedDeposit=str(suggested), unitType=unit, currency=spell(TOKEN),
                   recipient=spell(PAYEE), methodDetails={"chainId": chain_id, "escrowContract": spell(ESCROW)})
    req = session.parse_request(_challenge(doc))
    assert (req.amount, req.suggested_deposit, req.chain_id, req.unit_type) == (amount, suggested, chain_id, unit)
    assert (req.currency, req.recipient, req.escrow) == (TOKEN, PAYEE, ESCROW)  # checksummed, whatever the case


# Strings the bounded loader reads (no NUL, no lone surrogate: it refuses those documents whole).
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=80)
_KEY = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | _TEXT,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEY, inner,
                                                                                  max_size=3), max_leaves=8)
_FIELDS = ["amount", "currency", "recipient", "unitType", "suggestedDeposit"]
_DETAILS = ["chainId", "escrowContract", "escrow", "channelId", "minVoucherDelta", "feePayer", "feeToken",
            "operator", "sessionProtocol", "sessionSnapshot"]


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(_FIELDS + [f"methodDetails.{d}" for d in _DETAILS]), value=_JSON)
def test_any_value_in_any_field_is_read_or_refused_naming_it(field, value):
    doc = _request()
    if field.startswith("methodDetails."):
        doc["methodDetails"][field.split(".", 1)[1]] = value
    else:
        doc[field] = value
    try:
        session.parse_request(_challenge(doc))
    except (InvalidArgument, FailedPrecondition) as exc:
        assert f"request.{field}" in str(exc)


def test_opening_deposit_follows_the_suggestion_within_the_cap():
    req = session.parse_request(_challenge(_request(amount="25", suggestedDeposit="10000")))
    assert session.opening_deposit(req, 10**9) == 10000
    assert session.opening_deposit(req, 500) == 500
    low = session.parse_request(_challenge(_request(amount="25", suggestedDeposit="3")))
    assert session.opening_deposit(low, 10**9) == 25  # never below one unit
    with pytest.raises(FailedPrecondition, match="deposit cap"):
        session.opening_deposit(req, 24)


@given(st.integers(1, 10**12), st.one_of(st.none(), st.integers(0, 10**12)), st.integers(0, 10**12))
def test_opening_deposit_is_between_one_unit_and_the_cap(amount, suggested, cap):
    doc = _request(amount=str(amount), suggestedDeposit=None if suggested is None else str(suggested))
    req = session.parse_request(_challenge(doc))
    if cap < amount:
        with pytest.raises(FailedPrecondition):
            session.opening_deposit(req, cap)
        return
    assert amount <= session.opening_deposit(req, cap) <= cap


# -- the channel -------------------------------------------------------------------

_BYTES32 = st.binary(min_size=32, max_size=32)
_ADDR = st.binary(min_size=20, max_size=20).map(lambda b: to_checksum_address(b))


@settings(max_examples=200, deadline=None)
@given(channel=_BYTES32, amount=st.integers(0, chn.MAX_UINT96), chain_id=st.integers(1, 2**64 - 1), escrow=_ADDR)
def test_the_voucher_digest_is_eip712_of_its_typed_data(channel, amount, chain_id, escrow):
    typed = chn.voucher_typed_data(channel, amount, escrow=escrow, chain_id=chain_id)
    general = TypedData(typed.domain, typed.types, typed.primary_type, typed.message)
    assert typed.digest() == general.digest()


def test_voucher_amounts_are_uint96():
    with pytest.raises(ValueError):
        chn.voucher_typed_data(b"\0" * 32, 2**96, escrow=ESCROW, chain_id=1)
    with pytest.raises(ValueError):
        chn.open_call(ESCROW, payee=PAYEE, operator=chn.ZERO_ADDRESS, token=TOKEN, deposit=2**96,
                      salt=b"\0" * 32, authorized_signer=PAYER)
    with pytest.raises(ValueError):
        chn.top_up_call(ESCROW, _descriptor(), -1)


@given(payer=_ADDR, payee=_ADDR, salt=_BYTES32, nonce_hash=_BYTES32, chain_id=st.integers(1, 2**64 - 1))
def test_a_channel_id_is_bound_to_every_field_its_escrow_and_its_chain(payer, payee, salt, nonce_hash, chain_id):
    d = _descriptor(payer=payer, payee=payee, salt=salt, expiring_nonce_hash=nonce_hash)
    cid = chn.channel_id(d, ESCROW, chain_id)
    assert chn.channel_id(d, chn.ESCROW_PRECOMPILE, chain_id) != cid
    assert chn.channel_id(d, ESCROW, chain_id % (2**64 - 1) + 1) != cid
    other_salt = bytes([salt[0] ^ 1]) + salt[1:]
    assert chn.channel_id(_descriptor(payer=payer, payee=payee, salt=other_salt, expiring_nonce_hash=nonce_hash),
                          ESCROW, chain_id) != cid


def test_descriptors_are_canonical_and_read_back_from_json():
    d = _descriptor(payer=PAYER.lower(), authorized_signer=chn.ZERO_ADDRESS)
    assert d.payer == PAYER and d.voucher_signer == PAYER  # zero delegates to the payer
    assert session.parse_descriptor(d.to_json(), "credential") == d
    assert len(d.abi()) == 7 * 32
    with pytest.raises(ValueError):
        _descriptor(salt=b"\0" * 31)
    with pytest.raises(InvalidArgument, match=r"credential\.descriptor\.salt"):
        session.parse_descriptor({**d.to_json(), "salt": "0x00"}, "credential")


def test_the_open_transaction_holds_one_open_call_and_names_its_channel():
    opened = chn.open_channel(payer=PAYER, payee=PAYEE, token=TOKEN, deposit=10_000, salt=b"\x33" * 32,
                              escrow=ESCROW, chain_id=31337, gas_limit=900_000, gas_price=20_000_000_000,
                              valid_before=1_800_000_000)
    (call,) = opened.tx.calls
    assert call.to == bytes.fromhex(ESCROW[2:]) and len(call.data) == 4 + 6 * 32
    assert opened.tx.fee_token == bytes.fromhex(TOKEN[2:])  # fees in the channel's token unless told
    d = opened.descriptor
    assert d.authorized_signer == PAYER and d.operator == chn.ZERO_ADDRESS
    assert d.expiring_nonce_hash == chn.expiring_nonce_hash(opened.tx, PAYER)
    assert opened.channel_id == chn.channel_id(d, ESCROW, 31337)
    # Another deadline is another transaction, so another channel.
    later = chn.open_channel(payer=PAYER, payee=PAYEE, token=TOKEN, deposit=10_000, salt=b"\x33" * 32,
                             escrow=ESCROW, chain_id=31337, gas_limit=900_000, gas_price=20_000_000_000,
                             valid_before=1_800_000_001)
    assert later.channel_id != opened.channel_id


def test_credential_payloads_have_mppx_shapes():
    opened = chn.open_channel(payer=PAYER, payee=PAYEE, token=TOKEN, deposit=10_000, salt=b"\x33" * 32,
                              escrow=ESCROW, chain_id=31337, gas_limit=900_000, gas_price=1,
                              valid_before=1_800_000_000)
    sig, raw, d, cid = b"\x01" * 65, b"\x76\x01", opened.descriptor, opened.channel_id
    assert set(session.open_payload(opened, raw, 25, sig)) == {
        "action", "type", "channelId", "transaction", "signature", "descriptor", "cumulativeAmount",
        "authorizedSigner"}
    assert set(session.top_up_payload(d, cid, raw, 5)) == {
        "action", "type", "channelId", "transaction", "descriptor", "additionalDeposit"}
    voucher = session.voucher_payload(d, cid, 50, sig)
    assert voucher == {"action": "voucher", "channelId": "0x" + cid.hex(), "descriptor": d.to_json(),
                       "cumulativeAmount": "50", "signature": "0x" + sig.hex()}
    assert session.close_payload(d, cid, 50, sig) == {**voucher, "action": "close"}
    ch = _challenge(_request())
    header = session.credential(ch, session.parse_request(ch), voucher, PAYER)
    assert header.startswith("Payment ")
    doc = json.loads(base64.urlsafe_b64decode(header[8:] + "=" * (-len(header[8:]) % 4)))
    assert doc["source"] == f"did:pkh:eip155:31337:{PAYER}" and doc["payload"] == voucher
    assert doc["challenge"]["intent"] == "session"


def test_sessions_are_a_registered_scheme_followed_by_their_open_transaction():
    from teller.schemes import Follow

    scheme = REGISTRY.mpp[("tempo", "session")]
    assert scheme.id == "tempo/session" and scheme.follow is Follow.TRANSACTION and not scheme.deterministic


def _receipt(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"method": "tempo", "intent": "session", "status": "success",
                           "timestamp": "2026-12-01T00:00:00Z", "reference": "0x" + "ab" * 32,
                           "challengeId": "s1", "channelId": "0x" + "ab" * 32, "acceptedCumulative": "75",
                           "spent": "50"}
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not None}


def test_session_receipts_read_or_name_the_field():
    r = session.parse_receipt(_b64(_receipt(units=3)), 4096)
    assert (r.challenge_id, r.channel_id, r.accepted_cumulative, r.spent, r.units, r.tx_hash) == (
        "s1", bytes.fromhex("ab" * 32), 75, 50, 3, None)
    for over, field in [({"spent": "-1"}, "spent"), ({"channelId": "0x12"}, "channelId"),
                        ({"units": -1}, "units"), ({"units": True}, "units"), ({"txHash": "0x"}, "txHash"),
                        ({"challengeId": ""}, "challengeId"), ({"intent": "charge"}, "not a successful")]:
        with pytest.raises(InvalidArgument, match=field):
            session.parse_receipt(_b64(_receipt(**over)), 4096)
    with pytest.raises(InvalidArgument, match="larger than"):
        session.parse_receipt(_b64(_receipt()), 16)


def test_voucher_requests_read_or_name_the_field():
    doc = {"channelId": "0x" + "cd" * 32, "requiredCumulative": "100", "acceptedCumulative": "75",
           "deposit": "10000"}
    assert session.parse_need_voucher(json.dumps(doc), 4096) == session.NeedVoucher(
        bytes.fromhex("cd" * 32), 100, 75, 10000)
    for key in doc:
        with pytest.raises(InvalidArgument, match=f"payment-need-voucher.{key}"):
            session.parse_need_voucher(json.dumps({**doc, key: 1}), 4096)
    with pytest.raises(InvalidArgument, match="JSON object"):
        session.parse_need_voucher("[]", 4096)


def test_a_session_offer_is_one_unit_held_at_its_deposit_and_one_purchase_whatever_the_server_knows():
    from datetime import UTC, datetime

    from teller.schemes.mpp_session import TEMPO_SESSION

    now = datetime(2026, 1, 1, tzinfo=UTC)
    offer = TEMPO_SESSION.offer(_challenge(_request()), now)
    assert not isinstance(offer, str)
    assert (offer.amount, offer.deposit, offer.moves, offer.pay_to) == (25, 10_000, 10_000, PAYEE)
    # A retry of an open that reached the server meets a challenge naming the channel: the same purchase.
    named = TEMPO_SESSION.offer(_challenge(_request(methodDetails={"channelId": "0x" + "ab" * 32})), now)
    assert not isinstance(named, str)
    assert TEMPO_SESSION.purchase_terms(named) == TEMPO_SESSION.purchase_terms(offer)
    dearer = TEMPO_SESSION.offer(_challenge(_request(amount="26")), now)
    assert not isinstance(dearer, str)
    assert TEMPO_SESSION.purchase_terms(dearer) != TEMPO_SESSION.purchase_terms(offer)


def test_a_forced_close_call_is_estimated_as_it_is():
    """requestClose and withdraw name the payer first: the gas estimate must not
    swap it for a fresh address (any other payer reverts), unlike a transfer's recipient."""
    from teller.mpp import gas as tempo_gas

    payer = to_checksum_address("0x" + "11" * 20)
    d = chn.ChannelDescriptor(payer=payer, payee=to_checksum_address("0x" + "22" * 20), operator=chn.ZERO_ADDRESS,
                              token=to_checksum_address("0x20c0000000000000000000000000000000000000"),
                              salt=b"\x01" * 32, authorized_signer=payer, expiring_nonce_hash=b"\x02" * 32)
    for call in (chn.request_close_call(chn.ESCROW_PRECOMPILE, d), chn.withdraw_call(chn.ESCROW_PRECOMPILE, d)):
        tx = chn.channel_transaction(call, chain_id=4217, fee_token=d.token, gas_limit=1, gas_price=1,
                                     valid_before=100, valid_after=40)
        ((actual, fresh),) = tempo_gas.requests(tx, payer, fresh=False).singles
        assert actual == fresh and actual["data"] == "0x" + call.data.hex()
        ((_, swapped),) = tempo_gas.requests(tx, payer).singles
        assert swapped["data"] != actual["data"]  # what a transfer's estimate does
