"""MPP ``tempo`` method, ``session`` intent (TIP-1034 v2 payment channels): the
challenge's request, read into canonical values, and the credential payloads
a payer answers with (open, top-up, voucher, close).

A building block, not yet a scheme: nothing registers it in
``teller.schemes``, so Sign's behaviour is unchanged until the next step wires
it in (channel state in the database, spend reserved for deposits, the vault
signing vouchers under the channel's lock). Pure: a parsed challenge in;
dataclasses and JSON-ready payloads out. The channel itself (descriptor, id,
voucher typed data, escrow calls) is ``teller.mpp.channel``.

What the request carries is what mppx 0.11's session server sends
(``dist/tempo/Methods.js``, the ``session`` schema's output; its client reads
it in ``dist/tempo/session/client/CredentialState.js``)::

    {amount, currency, recipient, unitType, suggestedDeposit?, description?, externalId?,
     methodDetails: {chainId?, escrowContract?, channelId?, minVoucherDelta?, feePayer?,
                     feeToken?, operator?, sessionProtocol: "v2", sessionSnapshot?}}

Amounts are base-unit decimal strings (the server already applied its
``decimals``); ``amount`` is the price of one ``unitType``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from teller import untrusted_json, values
from teller.errors import FailedPrecondition, InvalidArgument
from teller.mpp import charge as mpp_charge
from teller.mpp.challenge import MppChallenge, b64url_json
from teller.mpp.channel import (
    ESCROW_PRECOMPILE,
    MAX_UINT96,
    ZERO_ADDRESS,
    ChannelDescriptor,
    OpenedChannel,
)

METHOD = "tempo"
INTENT = "session"
#: mppx's client answers only challenges that name TIP-1034 v2 (``isTip1034SessionChallenge``);
#: v1 is the legacy contract with another descriptor, id and voucher domain.
SESSION_PROTOCOL = "v2"
#: Tempo mainnet: the chain a request without ``chainId`` means (as for charges).
DEFAULT_CHAIN_ID = 4217
MAX_UNIT_TYPE = 64
_UNIT_TYPE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")  # printable ASCII, no edge blanks
_HASH = re.compile(r"0x[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """The server's view of an existing channel (``methodDetails.sessionSnapshot``):
    a hint for resuming it, never trusted over Teller's own channel state."""

    channel_id: bytes
    descriptor: ChannelDescriptor
    deposit: int
    accepted_cumulative: int  # the highest voucher the server holds
    required_cumulative: int  # what the next voucher must reach for this request
    spent: int


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """A tempo session request: the fields Teller acts on, canonical."""

    amount: int  # base units per unit of ``unit_type``; > 0
    unit_type: str
    currency: str  # the TIP-20 token the channel holds
    recipient: str  # the channel's payee
    chain_id: int
    escrow: str  # the escrow the challenge names (the precompile unless it says otherwise)
    operator: str  # zero: none
    suggested_deposit: int | None
    min_voucher_delta: int
    channel_id: bytes | None  # an existing channel the server expects vouchers on
    fee_payer: bool
    fee_token: str | None
    snapshot: SessionSnapshot | None

    @property
    def network(self) -> str:
        return f"eip155:{self.chain_id}"

    @property
    def custom_escrow(self) -> bool:
        """The escrow is not Tempo's precompile: a contract the server chose, which
        would hold the deposit (the policy must allow it by address)."""
        return self.escrow.lower() != ESCROW_PRECOMPILE.lower()


@dataclass(frozen=True, slots=True)
class Session:
    """A session challenge and its request, as parsed."""

    challenge: MppChallenge
    request: SessionRequest


def _amount(value: Any, where: str, name: str, *, allow_zero: bool = True) -> int:
    # Session amounts are uint96 on chain (the escrow's Voucher type).
    return mpp_charge.amount_field(value, where, name, allow_zero=allow_zero, maximum=MAX_UINT96,
                                   what="uint96 amount")


def _hash(value: Any, where: str, name: str) -> bytes:
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise mpp_charge.field_error(where, name, f"must be 0x and 64 hex digits, got {repr(value)[:80]}")
    return bytes.fromhex(value[2:])


def _object(value: Any, where: str, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise mpp_charge.field_error(where, name, "must be an object")
    return value


def parse_descriptor(value: Any, where: str, name: str = "descriptor") -> ChannelDescriptor:
    """A channel descriptor as JSON carries it (a snapshot's, a credential's)."""
    d = _object(value, where, name)
    return ChannelDescriptor(
        payer=mpp_charge.address_field(d.get("payer"), where, f"{name}.payer"),
        payee=mpp_charge.address_field(d.get("payee"), where, f"{name}.payee"),
        operator=mpp_charge.address_field(d.get("operator"), where, f"{name}.operator"),
        token=mpp_charge.address_field(d.get("token"), where, f"{name}.token"),
        salt=_hash(d.get("salt"), where, f"{name}.salt"),
        authorized_signer=mpp_charge.address_field(d.get("authorizedSigner"), where, f"{name}.authorizedSigner"),
        expiring_nonce_hash=_hash(d.get("expiringNonceHash"), where, f"{name}.expiringNonceHash"),
    )


def _snapshot(value: Any, where: str) -> SessionSnapshot:
    name = "methodDetails.sessionSnapshot"
    s = _object(value, where, name)
    return SessionSnapshot(
        channel_id=_hash(s.get("channelId"), where, f"{name}.channelId"),
        descriptor=parse_descriptor(s.get("descriptor"), where, f"{name}.descriptor"),
        deposit=_amount(s.get("deposit"), where, f"{name}.deposit"),
        accepted_cumulative=_amount(s.get("acceptedCumulative"), where, f"{name}.acceptedCumulative"),
        required_cumulative=_amount(s.get("requiredCumulative"), where, f"{name}.requiredCumulative"),
        spent=_amount(s.get("spent"), where, f"{name}.spent"),
    )


def parse_request(ch: MppChallenge) -> SessionRequest:
    """The ``request`` of a tempo session challenge; errors name the field."""
    where = f"Payment challenge {ch.id[:40]!r} request"
    if ch.method != METHOD or ch.intent != INTENT:
        raise InvalidArgument(f"Payment challenge {ch.id[:40]!r}: not a tempo session ({ch.method}/{ch.intent})")
    r = ch.request
    details = _object(r.get("methodDetails"), where, "methodDetails")
    protocol = details.get("sessionProtocol")
    if protocol != SESSION_PROTOCOL:
        raise mpp_charge.field_error(where, "methodDetails.sessionProtocol",
                     f"must be {SESSION_PROTOCOL!r} (TIP-1034 v2, the only session protocol Teller speaks), "
                     f"got {repr(protocol)[:40]}")
    chain_id = details.get("chainId", DEFAULT_CHAIN_ID)
    if isinstance(chain_id, bool) or not isinstance(chain_id, int):  # a JSON number, as the spec says
        raise mpp_charge.field_error(where, "methodDetails.chainId", f"must be a positive integer, got {str(chain_id)[:40]!r}")
    try:
        chain_id = values.chain_id(chain_id, f"{where}.methodDetails.chainId")
    except values.NotCanonical as exc:
        raise InvalidArgument(str(exc)) from None
    unit_type = r.get("unitType")
    if not isinstance(unit_type, str) or len(unit_type) > MAX_UNIT_TYPE or not _UNIT_TYPE.fullmatch(unit_type):
        raise mpp_charge.field_error(where, "unitType", f"must be printable ASCII of 1 to {MAX_UNIT_TYPE} characters")
    # mppx's client takes escrowContract, else escrow: the same order here, so both pick one contract.
    if "escrowContract" in details:
        escrow = mpp_charge.address_field(details["escrowContract"], where, "methodDetails.escrowContract")
    elif "escrow" in details:
        escrow = mpp_charge.address_field(details["escrow"], where, "methodDetails.escrow")
    else:
        escrow = ESCROW_PRECOMPILE
    fee_payer = details.get("feePayer", False)
    if not isinstance(fee_payer, bool):
        raise mpp_charge.field_error(where, "methodDetails.feePayer", "must be true or false")
    suggested = r.get("suggestedDeposit")
    delta = details.get("minVoucherDelta")
    channel = details.get("channelId")
    fee_token = details.get("feeToken")
    operator = details.get("operator")
    snapshot = details.get("sessionSnapshot")
    return SessionRequest(
        amount=_amount(r.get("amount"), where, "amount", allow_zero=False),
        unit_type=unit_type,
        currency=mpp_charge.address_field(r.get("currency"), where, "currency"),
        recipient=mpp_charge.address_field(r.get("recipient"), where, "recipient"),
        chain_id=chain_id,
        escrow=escrow,
        operator=ZERO_ADDRESS if operator is None else mpp_charge.address_field(operator, where, "methodDetails.operator"),
        suggested_deposit=None if suggested is None else _amount(suggested, where, "suggestedDeposit"),
        min_voucher_delta=0 if delta is None else _amount(delta, where, "methodDetails.minVoucherDelta"),
        channel_id=None if channel is None else _hash(channel, where, "methodDetails.channelId"),
        fee_payer=fee_payer,
        fee_token=None if fee_token is None else mpp_charge.address_field(fee_token, where, "methodDetails.feeToken"),
        snapshot=None if snapshot is None else _snapshot(snapshot, where),
    )


def opening_deposit(req: SessionRequest, cap: int) -> int:
    """The deposit of a new channel: the server's suggestion when it is above one
    unit's price, else that price; never above ``cap`` (the policy's per-channel
    limit). A cap below one unit cannot open a channel the server accepts."""
    if cap < req.amount:
        raise FailedPrecondition(f"a session unit costs {req.amount}, more than the deposit cap {cap}",
                                 reason="deposit_cap")
    wanted = req.suggested_deposit if req.suggested_deposit is not None else req.amount
    return min(max(wanted, req.amount), cap)


# -- credential payloads ----------------------------------------------------------
# The ``payload`` of an ``Authorization: Payment`` credential, one shape per
# action (mppx's ``session`` method schema): amounts as decimal strings,
# hashes, signatures and transactions as 0x-hex, the descriptor always included.


def _hex(raw: bytes) -> str:
    return "0x" + raw.hex()


def open_payload(opened: OpenedChannel, signed_tx: bytes, cumulative_amount: int, signature: bytes) -> dict[str, Any]:
    """The open: the signed open transaction (the server broadcasts it) and the
    first voucher, for at least one unit, signed over the channel it opens."""
    return {"action": "open", "type": "transaction", "channelId": _hex(opened.channel_id),
            "transaction": _hex(signed_tx), "signature": _hex(signature),
            "descriptor": opened.descriptor.to_json(), "cumulativeAmount": str(cumulative_amount),
            "authorizedSigner": opened.descriptor.authorized_signer}


def top_up_payload(descriptor: ChannelDescriptor, channel: bytes, signed_tx: bytes,
                   additional_deposit: int) -> dict[str, Any]:
    """A top-up: the signed ``topUp`` transaction, broadcast by the server."""
    return {"action": "topUp", "type": "transaction", "channelId": _hex(channel), "transaction": _hex(signed_tx),
            "descriptor": descriptor.to_json(), "additionalDeposit": str(additional_deposit)}


def voucher_payload(descriptor: ChannelDescriptor, channel: bytes, cumulative_amount: int,
                    signature: bytes) -> dict[str, Any]:
    """A voucher: the payer now owes ``cumulative_amount`` in total on the channel."""
    return {"action": "voucher", "channelId": _hex(channel), "descriptor": descriptor.to_json(),
            "cumulativeAmount": str(cumulative_amount), "signature": _hex(signature)}


def close_payload(descriptor: ChannelDescriptor, channel: bytes, cumulative_amount: int,
                  signature: bytes) -> dict[str, Any]:
    """A cooperative close: the final voucher; the server closes on chain and the
    rest of the deposit goes back to the payer."""
    return {"action": "close", "channelId": _hex(channel), "descriptor": descriptor.to_json(),
            "cumulativeAmount": str(cumulative_amount), "signature": _hex(signature)}


def credential(ch: MppChallenge, req: SessionRequest, payload: Mapping[str, Any], payer: str) -> str:
    """``Payment <base64url(JSON)>``: the challenge echoed, the payload, and the
    payer as ``did:pkh`` (mppx checks it is the channel's payer or signer)."""
    return mpp_charge.credential(ch, payload, mpp_charge.did_pkh(req.chain_id, payer))


# -- what the server says during a session ------------------------------------------
# Receipts come in the ``Payment-Receipt`` header (base64url JSON) of an HTTP
# answer, as the data of an SSE ``payment-receipt`` event, or in a WebSocket
# ``{"mpp": "payment-receipt", "data": ...}`` frame; a server that wants a
# larger voucher mid-stream sends ``payment-need-voucher`` the same two ways.


@dataclass(frozen=True, slots=True)
class SessionReceipt:
    """A server's acknowledgement of a session credential."""

    challenge_id: str
    channel_id: bytes
    accepted_cumulative: int  # the highest voucher it holds
    spent: int  # what it has charged against the channel so far
    units: int | None
    tx_hash: bytes | None  # the open, top-up or close transaction, when there was one


@dataclass(frozen=True, slots=True)
class NeedVoucher:
    """A server's request, mid-stream, for a voucher of at least ``required_cumulative``."""

    channel_id: bytes
    required_cumulative: int
    accepted_cumulative: int
    deposit: int


def _doc(value: str | bytes, what: str, max_bytes: int) -> Mapping[str, Any]:
    doc = untrusted_json.loads(value, what, max_bytes=max_bytes)
    if not isinstance(doc, Mapping):
        raise InvalidArgument(f"{what}: must be a JSON object")
    return doc


def receipt_from_json(doc: Mapping[str, Any], what: str) -> SessionReceipt:
    """A session receipt already read as JSON (an SSE event's or WebSocket frame's data)."""
    if (doc.get("method"), doc.get("intent"), doc.get("status")) != (METHOD, INTENT, "success"):
        raise InvalidArgument(f"{what}: not a successful tempo session receipt")
    challenge_id = doc.get("challengeId")
    if not isinstance(challenge_id, str) or not challenge_id:
        raise mpp_charge.field_error(what, "challengeId", "must be a non-empty string")
    units = doc.get("units")
    if units is not None and (isinstance(units, bool) or not isinstance(units, int) or not 0 <= units < 2**63):
        raise mpp_charge.field_error(what, "units", "must be a non-negative integer")
    tx_hash = doc.get("txHash")
    return SessionReceipt(
        challenge_id=challenge_id, channel_id=_hash(doc.get("channelId"), what, "channelId"),
        accepted_cumulative=_amount(doc.get("acceptedCumulative"), what, "acceptedCumulative"),
        spent=_amount(doc.get("spent"), what, "spent"), units=units,
        tx_hash=None if tx_hash is None else _hash(tx_hash, what, "txHash"),
    )


def parse_receipt(value: str, max_bytes: int) -> SessionReceipt:
    """A ``Payment-Receipt`` header value of a session answer."""
    if len(value) > max_bytes:
        raise InvalidArgument(f"Payment-Receipt header is larger than {max_bytes} bytes")
    doc = b64url_json(value.strip(), "Payment-Receipt header")
    if not isinstance(doc, Mapping):
        raise InvalidArgument("Payment-Receipt header: must be a JSON object")
    return receipt_from_json(doc, "Payment-Receipt header")


def parse_need_voucher(data: str | bytes, max_bytes: int) -> NeedVoucher:
    """The data of a ``payment-need-voucher`` SSE event (or WebSocket frame's ``data``, serialized)."""
    what = "payment-need-voucher"
    doc = _doc(data, what, max_bytes)
    return NeedVoucher(
        channel_id=_hash(doc.get("channelId"), what, "channelId"),
        required_cumulative=_amount(doc.get("requiredCumulative"), what, "requiredCumulative"),
        accepted_cumulative=_amount(doc.get("acceptedCumulative"), what, "acceptedCumulative"),
        deposit=_amount(doc.get("deposit"), what, "deposit"),
    )


__all__ = [
    "DEFAULT_CHAIN_ID", "INTENT", "METHOD", "SESSION_PROTOCOL", "NeedVoucher", "Session", "SessionReceipt",
    "SessionRequest", "SessionSnapshot", "close_payload", "credential", "open_payload", "opening_deposit",
    "parse_descriptor", "parse_need_voucher", "parse_receipt", "parse_request", "receipt_from_json",
    "top_up_payload", "voucher_payload",
]
