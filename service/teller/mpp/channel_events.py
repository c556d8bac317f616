"""The TIP-1034 v2 escrow's channel events, decoded from raw logs.

What the reconciler follows once a channel is open: the payee settling a
voucher (``Settled``), the payer asking for a forced close and withdrawing it
(``CloseRequested``, ``CloseRequestCancelled``), the payer's top-ups
(``TopUp``: confirms Teller's own), and the channel closing,
cooperatively or by ``withdraw`` (``ChannelClosed``, with what went to each
side). The open itself is followed through its transaction's receipt.

Pure: a log's address, topics and data in, a frozen event out. Logs come from
an RPC node, so nothing here trusts their shape: a log whose first topic is
one of these events but whose other topics or data do not fit the event's ABI
exactly is ``MalformedEvent``, never a guess. Every event names its channel in
``topics[1]``, the payer and payee in ``topics[2]`` and ``topics[3]``; the
other fields are static ABI words in ``data``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from teller import values
from teller.errors import Unavailable
from teller.keccak import keccak256

#: A log's index within its block, as positions count it (far above any real block's).
MAX_LOG_INDEX = 2**20 - 1
#: Blocks a position can name (positions are stored as signed 64-bit integers).
MAX_BLOCK = 2**42
_UINT96 = 2**96


def _topic(signature: str) -> bytes:
    return keccak256(signature.encode())


SETTLED_TOPIC = _topic("Settled(bytes32,address,address,uint96,uint96,uint96)")
CLOSE_REQUESTED_TOPIC = _topic("CloseRequested(bytes32,address,address,uint256)")
CLOSE_REQUEST_CANCELLED_TOPIC = _topic("CloseRequestCancelled(bytes32,address,address)")
CHANNEL_CLOSED_TOPIC = _topic("ChannelClosed(bytes32,address,address,uint96,uint96)")
TOP_UP_TOPIC = _topic("TopUp(bytes32,address,address,uint96,uint96)")


class MalformedEvent(Unavailable):
    """A log that claims to be an escrow event but does not fit its ABI: the
    chain's node answered with something no escrow emits."""

    reason = "malformed_chain_event"


@dataclass(frozen=True, slots=True)
class EventLog:
    """Where an event was emitted, and the channel it is about."""

    escrow: str  # checksummed
    channel_id: str  # 0x + 64 lower-case hex, as channels.channel_id
    payer: str  # checksummed
    payee: str  # checksummed
    tx_hash: str  # 0x + 64 lower-case hex
    block: int
    log_index: int

    @property
    def position(self) -> int:
        """The log's place on chain as one increasing number: events of one
        channel apply in this order, each once (``channels.last_event``)."""
        return self.block * (MAX_LOG_INDEX + 1) + self.log_index


@dataclass(frozen=True, slots=True)
class Settled:
    """The payee (or operator) took a voucher's amount: ``delta_paid`` more, ``new_settled`` in total."""

    log: EventLog
    cumulative_amount: int
    delta_paid: int
    new_settled: int


@dataclass(frozen=True, slots=True)
class CloseRequested:
    """The payer started a forced close; it may ``withdraw`` from ``grace_end`` (unix seconds)."""

    log: EventLog
    grace_end: int


@dataclass(frozen=True, slots=True)
class CloseRequestCancelled:
    """A pending close request was withdrawn (a top-up does this): the channel is live again."""

    log: EventLog


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The channel is gone: ``settled_to_payee`` paid out by the close itself (on
    top of what earlier ``Settled`` events paid), ``refunded_to_payer`` back to
    the payer. A ``withdraw`` after the grace period pays the payee nothing."""

    log: EventLog
    settled_to_payee: int
    refunded_to_payer: int


@dataclass(frozen=True, slots=True)
class TopUp:
    """The payer added ``additional_deposit``; the channel now holds ``new_deposit``."""

    log: EventLog
    additional_deposit: int
    new_deposit: int


ChannelEvent = Settled | CloseRequested | CloseRequestCancelled | ChannelClosed | TopUp

#: Per event: its data's words (uint96 words are bounded to uint96).
_DATA_WORDS: dict[bytes, tuple[str, ...]] = {
    SETTLED_TOPIC: ("uint96", "uint96", "uint96"),
    CLOSE_REQUESTED_TOPIC: ("uint256",),
    CLOSE_REQUEST_CANCELLED_TOPIC: (),
    CHANNEL_CLOSED_TOPIC: ("uint96", "uint96"),
    TOP_UP_TOPIC: ("uint96", "uint96"),
}
TOPICS: tuple[bytes, ...] = tuple(_DATA_WORDS)
_NAMES = {SETTLED_TOPIC: "Settled", CLOSE_REQUESTED_TOPIC: "CloseRequested",
          CLOSE_REQUEST_CANCELLED_TOPIC: "CloseRequestCancelled", CHANNEL_CLOSED_TOPIC: "ChannelClosed",
          TOP_UP_TOPIC: "TopUp"}


def _bytes(value: object) -> bytes | None:
    # bytes(5) would be five zero bytes: only byte strings are taken as bytes.
    return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else None


def _word(value: object, what: str) -> bytes:
    raw = _bytes(value)
    if raw is None:
        raise MalformedEvent(f"{what} is not bytes")
    if len(raw) != 32:
        raise MalformedEvent(f"{what} is {len(raw)} bytes, not 32")
    return raw


def _hash(value: object, what: str) -> str:
    return "0x" + _word(value, what).hex()


def _address(value: object, what: str) -> str:
    word = _word(value, what)
    if any(word[:12]):
        raise MalformedEvent(f"{what} is not an address: its top 12 bytes are not zero")
    return values.address("0x" + word[12:].hex(), what)


def decode(*, address: str, topics: Sequence[bytes], data: bytes, tx_hash: bytes, block: int,
           log_index: int) -> ChannelEvent | None:
    """The escrow event a log holds; None when its first topic is none of the
    events above (another event of the escrow, or no event of ours)."""
    kind = _bytes(topics[0]) if topics else None
    if kind is None or kind not in _DATA_WORDS:
        return None
    name = _NAMES[kind]
    if len(topics) != 4:
        raise MalformedEvent(f"{name} has 3 indexed fields, the log has {len(topics) - 1} topics after the first")
    words = _DATA_WORDS[kind]
    raw = _bytes(data)
    if raw is None:
        raise MalformedEvent(f"{name}: the log's data is not bytes")
    if len(raw) != 32 * len(words):
        raise MalformedEvent(f"{name} carries {32 * len(words)} bytes of data, the log has {len(raw)}")
    if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block <= MAX_BLOCK:
        raise MalformedEvent(f"{name}: block number {block!r} is out of range")
    if isinstance(log_index, bool) or not isinstance(log_index, int) or not 0 <= log_index <= MAX_LOG_INDEX:
        raise MalformedEvent(f"{name}: log index {log_index!r} is out of range")
    try:
        escrow = values.address(address, "log address")
        log = EventLog(escrow=escrow, channel_id=_hash(topics[1], f"{name}.channelId"),
                       payer=_address(topics[2], f"{name}.payer"), payee=_address(topics[3], f"{name}.payee"),
                       tx_hash=_hash(tx_hash, f"{name} transaction hash"), block=block, log_index=log_index)
    except values.NotCanonical as exc:
        raise MalformedEvent(str(exc)) from None
    amounts = []
    for i, kind_of in enumerate(words):
        value = int.from_bytes(raw[32 * i:32 * (i + 1)], "big")
        if kind_of == "uint96" and value >= _UINT96:
            raise MalformedEvent(f"{name}: data word {i} is {value}, above uint96")
        amounts.append(value)
    if kind == SETTLED_TOPIC:
        return Settled(log, *amounts)
    if kind == CLOSE_REQUESTED_TOPIC:
        return CloseRequested(log, amounts[0])
    if kind == CLOSE_REQUEST_CANCELLED_TOPIC:
        return CloseRequestCancelled(log)
    if kind == TOP_UP_TOPIC:
        return TopUp(log, *amounts)
    return ChannelClosed(log, *amounts)


__all__ = [
    "CHANNEL_CLOSED_TOPIC",
    "CLOSE_REQUESTED_TOPIC",
    "CLOSE_REQUEST_CANCELLED_TOPIC",
    "SETTLED_TOPIC",
    "TOPICS",
    "TOP_UP_TOPIC",
    "ChannelClosed",
    "ChannelEvent",
    "CloseRequestCancelled",
    "CloseRequested",
    "EventLog",
    "MalformedEvent",
    "Settled",
    "TopUp",
    "decode",
]
