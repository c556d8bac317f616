"""The escrow's channel events decoded from raw logs (encoded here with eth-abi, the
topics hashed from the signatures as the contract declares them), hostile logs
refused by name, and the rule for what a closed channel's open payment counts."""

from __future__ import annotations

import logging
import os

import pytest
from eth_abi import encode
from eth_utils import keccak, to_checksum_address
from hypothesis import given
from hypothesis import strategies as st

from teller.chain import _channel_event
from teller.channels.rules import counted_after_close
from teller.errors import InvalidArgument
from teller.mpp import channel_events as ce
from teller.mpp.channel_events import (
    ChannelClosed,
    CloseRequestCancelled,
    CloseRequested,
    MalformedEvent,
    Settled,
    decode,
)

ESCROW = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
PAYER = to_checksum_address("0x" + "ab" * 20)
PAYEE = to_checksum_address("0x" + "cd" * 20)
CHANNEL = bytes.fromhex("11" * 32)
TX = bytes.fromhex("22" * 32)
# As contracts/TestChannelEscrow.sol (TIP-1034 v2) declares them.
SIGNATURES = {
    "Settled": "Settled(bytes32,address,address,uint96,uint96,uint96)",
    "CloseRequested": "CloseRequested(bytes32,address,address,uint256)",
    "CloseRequestCancelled": "CloseRequestCancelled(bytes32,address,address)",
    "ChannelClosed": "ChannelClosed(bytes32,address,address,uint96,uint96)",
    "TopUp": "TopUp(bytes32,address,address,uint96,uint96)",
}
DATA_TYPES = {"Settled": ["uint96"] * 3, "CloseRequested": ["uint256"], "CloseRequestCancelled": [],
              "ChannelClosed": ["uint96"] * 2, "TopUp": ["uint96"] * 2}


def _topic(name: str) -> bytes:
    return keccak(text=SIGNATURES[name])


def _log(name: str, *values: int, channel: bytes = CHANNEL, payer: str = PAYER, payee: str = PAYEE,
         block: int = 7, log_index: int = 3, **over):
    fields = {"address": ESCROW,
              "topics": [_topic(name), channel, encode(["address"], [payer]), encode(["address"], [payee])],
              "data": encode(DATA_TYPES[name], list(values)), "tx_hash": TX, "block": block, "log_index": log_index}
    fields.update(over)
    return fields


def test_the_topics_are_the_event_signatures():
    assert {ce.SETTLED_TOPIC, ce.CLOSE_REQUESTED_TOPIC, ce.CLOSE_REQUEST_CANCELLED_TOPIC,
            ce.CHANNEL_CLOSED_TOPIC, ce.TOP_UP_TOPIC} == {_topic(n) for n in SIGNATURES} == set(ce.TOPICS)


def test_each_event_decodes_with_where_it_was():
    closed = decode(**_log("ChannelClosed", 150, 50))
    assert closed == ChannelClosed(ce.EventLog(ESCROW, "0x" + "11" * 32, PAYER, PAYEE, "0x" + "22" * 32, 7, 3),
                                   settled_to_payee=150, refunded_to_payer=50)
    assert decode(**_log("Settled", 100, 40, 100)) == Settled(closed.log, 100, 40, 100)
    assert decode(**_log("CloseRequested", 1_800_000_900)) == CloseRequested(closed.log, 1_800_000_900)
    assert decode(**_log("CloseRequestCancelled")) == CloseRequestCancelled(closed.log)
    assert decode(**_log("TopUp", 500, 1_500)) == ce.TopUp(closed.log, additional_deposit=500, new_deposit=1_500)


@given(st.sampled_from(sorted(SIGNATURES)), st.binary(min_size=32, max_size=32),
       st.lists(st.integers(0, 2**96 - 1), min_size=3, max_size=3),
       st.integers(0, ce.MAX_BLOCK), st.integers(0, ce.MAX_LOG_INDEX))
def test_what_eth_abi_encodes_decodes_back(name, channel, amounts, block, log_index):
    values = amounts[:len(DATA_TYPES[name])]
    event = decode(**_log(name, *values, channel=channel, block=block, log_index=log_index))
    assert event is not None and type(event).__name__ == name
    assert (event.log.channel_id, event.log.block, event.log.log_index) == ("0x" + channel.hex(), block, log_index)
    assert [getattr(event, f) for f in event.__slots__ if f != "log"] == values


def test_positions_order_logs_by_block_then_index():
    a, b, c = (decode(**_log("Settled", 1, 1, 1, block=blk, log_index=i)) for blk, i in
               ((5, ce.MAX_LOG_INDEX), (6, 0), (6, 1)))
    assert a.log.position < b.log.position < c.log.position
    assert decode(**_log("Settled", 1, 1, 1, block=ce.MAX_BLOCK, log_index=ce.MAX_LOG_INDEX)).log.position < 2**63


@pytest.mark.parametrize("topics", [[], [b"\x00" * 32], [keccak(text="Transfer(address,address,uint256)")],
                                    ["0x" + _topic("ChannelClosed").hex()], [None], [42]])
def test_a_log_of_no_event_of_ours_is_none(topics):
    assert decode(**_log("ChannelClosed", 1, 1, topics=topics)) is None


@pytest.mark.parametrize(("over", "message"), [
    ({"topics": [_topic("ChannelClosed"), CHANNEL, encode(["address"], [PAYER])]}, "2 topics after the first"),
    ({"topics": [_topic("ChannelClosed"), CHANNEL, encode(["address"], [PAYER]), encode(["address"], [PAYEE]),
                 CHANNEL]}, "4 topics after the first"),
    ({"data": encode(["uint96"], [1])}, "carries 64 bytes of data, the log has 32"),
    ({"data": encode(["uint96"] * 3, [1, 2, 3])}, "the log has 96"),
    ({"data": b""}, "the log has 0"),
    ({"data": "0x" + "00" * 64}, "data is not bytes"),
    ({"data": encode(["uint256", "uint96"], [2**96, 1])}, "data word 0 is 79228162514264337593543950336, above uint96"),
    ({"topics": [_topic("ChannelClosed"), CHANNEL[:31], encode(["address"], [PAYER]),
                 encode(["address"], [PAYEE])]}, "channelId is 31 bytes, not 32"),
    ({"topics": [_topic("ChannelClosed"), CHANNEL, b"\x01" * 32, encode(["address"], [PAYEE])]},
     "payer is not an address: its top 12 bytes are not zero"),
    ({"topics": [_topic("ChannelClosed"), CHANNEL, encode(["address"], [PAYER]), 5]}, "payee is not bytes"),
    ({"tx_hash": b"\x22" * 31}, "transaction hash is 31 bytes"),
    ({"address": "0xnot-an-address"}, "log address is not a valid EVM address"),
    ({"address": ESCROW.lower()[:-1] + "A"}, "log address fails its EIP-55 checksum"),
    ({"block": -1}, "block number -1 is out of range"),
    ({"block": ce.MAX_BLOCK + 1}, "block number"),
    ({"block": True}, "block number True"),
    ({"block": "7"}, "block number '7'"),
    ({"log_index": ce.MAX_LOG_INDEX + 1}, "log index"),
    ({"log_index": None}, "log index None"),
])
def test_a_log_that_claims_an_event_but_does_not_fit_it_is_refused_by_name(over, message):
    with pytest.raises(MalformedEvent, match=message.replace("(", r"\(")) as refused:
        decode(**_log("ChannelClosed", 1, 1, **over))
    assert "ChannelClosed" in str(refused.value) or "address" in message


def test_the_chain_reader_takes_raw_json_logs_and_skips_malformed_ones(caplog):
    raw = {"address": ESCROW, "topics": ["0x" + _topic("ChannelClosed").hex(), "0x" + CHANNEL.hex(),
                                         "0x" + encode(["address"], [PAYER]).hex(),
                                         "0x" + encode(["address"], [PAYEE]).hex()],
           "data": "0x" + encode(["uint96", "uint96"], [9, 1]).hex(), "transactionHash": "0x" + TX.hex(),
           "blockNumber": 12, "logIndex": 0}
    event = _channel_event(raw)
    assert isinstance(event, ChannelClosed) and (event.settled_to_payee, event.refunded_to_payer) == (9, 1)
    with caplog.at_level(logging.WARNING, logger="teller.chain"):
        assert _channel_event({**raw, "data": raw["data"][:-2]}) is None
        assert _channel_event({**raw, "data": "0xzz"}) is None
        assert _channel_event({**raw, "blockNumber": None}) is None
    assert caplog.text.count("malformed escrow event") == 3
    assert _channel_event({**raw, "topics": []}) is None


# -- what a closed channel's open payment counts ----------------------------------------------------------------


def _counted(amount_common: int, fee_common: int, deposit: int, refunded: int) -> int:
    return counted_after_close(amount_common=amount_common, fee_common=fee_common, deposit=deposit, refunded=refunded)


def test_the_refunded_part_stops_counting_and_the_fee_stays():
    # 200,000 deposited, 10,000 fee; 150,000 came back: 50,000 + the fee count.
    assert _counted(210_000, 10_000, 200_000, 150_000) == 60_000
    assert _counted(210_000, 10_000, 200_000, 0) == 210_000
    assert _counted(210_000, 10_000, 200_000, 200_000) == 10_000
    # A refund above the deposit (a top-up Teller did not make) refunds the deposit, no more.
    assert _counted(210_000, 10_000, 200_000, 10**12) == 10_000
    assert _counted(210_000, 10_000, 200_000, -5) == 210_000


def test_a_part_unit_is_rounded_towards_counting_more():
    # 3 common units for a deposit of 7: 1 of 7 spent is 3/7 of a unit, counted as 1.
    assert _counted(3, 0, 7, 6) == 1
    # 1 unit refunded of 7 is 3/7 of a unit back: nothing stops counting.
    assert _counted(3, 0, 7, 1) == 3


@given(deposit=st.integers(1, 2**63 - 1), scale=st.integers(0, 10**6), fee=st.integers(0, 10**12),
       refunded=st.integers(0, 2**63 - 1))
def test_teller_never_counts_less_than_the_chain_shows_spent(deposit, scale, fee, refunded):
    refunded = min(refunded, deposit)
    deposit_common = -(-deposit * scale // 1000)  # a conversion rounded up, as Sign's
    after = _counted(deposit_common + fee, fee, deposit, refunded)
    kept = after - fee
    # kept / deposit_common >= spent / deposit, and less than one common unit more.
    assert kept * deposit >= deposit_common * (deposit - refunded)
    assert (kept - 1) * deposit < deposit_common * (deposit - refunded) or kept == 0
    assert fee <= after <= deposit_common + fee
    assert _counted(deposit_common + fee, fee, deposit, min(refunded + 1, deposit)) <= after


@pytest.mark.parametrize(("args", "message"), [((10, 0, 0, 0), "deposit must be positive"),
                                              ((10, 11, 5, 0), "cannot hold a fee of 11"),
                                              ((10, 0, -1, 0), "deposit must be between")])
def test_what_cannot_be_a_payment_is_refused(args, message):
    with pytest.raises(InvalidArgument, match=message):
        _counted(*args)


def test_random_hashes_are_not_mistaken_for_events():
    for _ in range(200):
        assert decode(**_log("ChannelClosed", 1, 1, topics=[os.urandom(32), CHANNEL, CHANNEL, CHANNEL])) is None
