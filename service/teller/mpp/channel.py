"""TIP-1034 (v2) payment channels on Tempo: the channel descriptor and its id,
the EIP-712 voucher, and the escrow calls a payer makes (open, top-up, and
the forced-close pair ``requestClose`` / ``withdraw``).

Pure: descriptors and amounts in; ids, typed data, calls and unsigned
transactions out. The vault signs (``sign_typed_data`` for vouchers, the
transaction's ``signing_hash`` for open and top-up); nothing here does I/O.

Everything is as the escrow computes it (mppx 0.11's
``dist/tempo/session/precompile``): ``tests/integration/test_mpp_session_vectors.py``
holds the channel id, the voucher digest and signature, the calldata and the
expiring nonce hash to mppx's and viem's own values for random inputs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from teller import values
from teller.eip712 import TypedData
from teller.keccak import keccak256
from teller.mpp.tempo_tx import TempoCall, TempoTransaction

#: The TIP-20 channel escrow precompile on Tempo (mainnet and testnet).
ESCROW_PRECOMPILE = "0x4d50500000000000000000000000000000000000"
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
#: Channel amounts (deposit, cumulative voucher amounts) are uint96 in the escrow.
MAX_UINT96 = 2**96 - 1

VOUCHER_DOMAIN_NAME = "TIP20 Channel Reserve"
VOUCHER_DOMAIN_VERSION = "1"
VOUCHER_TYPES = {"Voucher": [{"name": "channelId", "type": "bytes32"},
                             {"name": "cumulativeAmount", "type": "uint96"}]}

_DOMAIN_TYPEHASH = keccak256(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
_VOUCHER_TYPEHASH = keccak256(b"Voucher(bytes32 channelId,uint96 cumulativeAmount)")
_NAME_HASH = keccak256(VOUCHER_DOMAIN_NAME.encode())
_VERSION_HASH = keccak256(VOUCHER_DOMAIN_VERSION.encode())

_OPEN = keccak256(b"open(address,address,address,uint96,bytes32,address)")[:4]
_DESCRIPTOR = "(address,address,address,address,bytes32,address,bytes32)"
_TOP_UP = keccak256(f"topUp({_DESCRIPTOR},uint96)".encode())[:4]
_REQUEST_CLOSE = keccak256(f"requestClose({_DESCRIPTOR})".encode())[:4]
_WITHDRAW = keccak256(f"withdraw({_DESCRIPTOR})".encode())[:4]


def _address_word(address: str) -> bytes:
    raw = bytes.fromhex(address[2:])
    if len(raw) != 20:
        raise ValueError(f"an address is 20 bytes, got {len(raw)}")
    return bytes(12) + raw


def _uint_word(value: int, *, maximum: int = 2**256 - 1) -> bytes:
    if not 0 <= value <= maximum:
        raise ValueError(f"{value} is outside 0..{maximum}")
    return value.to_bytes(32, "big")


def _bytes32(value: bytes, what: str) -> bytes:
    if len(value) != 32:
        raise ValueError(f"{what} is 32 bytes, got {len(value)}")
    return value


def _checksummed(address: str, what: str) -> str:
    # Descriptors are built from already-canonical values; a bad one here is a bug, not input.
    try:
        return values.address(address, what)
    except values.NotCanonical as exc:
        raise ValueError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class ChannelDescriptor:
    """A TIP-1034 v2 channel, as the escrow identifies it: the fields its id
    hashes and every later call (top-up, settle, close, withdraw) passes back.
    Addresses are checksummed; ``salt`` and ``expiring_nonce_hash`` 32 bytes."""

    payer: str
    payee: str
    operator: str  # may settle for the payee; zero for none
    token: str  # TIP-20
    salt: bytes  # makes two channels with the same parties two ids
    authorized_signer: str  # signs vouchers; zero delegates to the payer
    expiring_nonce_hash: bytes  # binds the channel to its open transaction

    def __post_init__(self) -> None:
        for name in ("payer", "payee", "operator", "token", "authorized_signer"):
            object.__setattr__(self, name, _checksummed(getattr(self, name), f"descriptor.{name}"))
        _bytes32(self.salt, "descriptor.salt")
        _bytes32(self.expiring_nonce_hash, "descriptor.expiringNonceHash")

    @property
    def voucher_signer(self) -> str:
        """Whose signature the escrow accepts on a voucher."""
        return self.payer if int(self.authorized_signer, 16) == 0 else self.authorized_signer

    def abi(self) -> bytes:
        """The descriptor as an ABI tuple of static types: seven words, in place."""
        return (_address_word(self.payer) + _address_word(self.payee) + _address_word(self.operator)
                + _address_word(self.token) + self.salt + _address_word(self.authorized_signer)
                + self.expiring_nonce_hash)

    def to_json(self) -> dict[str, str]:
        """The descriptor as session credentials carry it (hashes in lower-case hex)."""
        return {"payer": self.payer, "payee": self.payee, "operator": self.operator, "token": self.token,
                "salt": "0x" + self.salt.hex(), "authorizedSigner": self.authorized_signer,
                "expiringNonceHash": "0x" + self.expiring_nonce_hash.hex()}


def channel_id(descriptor: ChannelDescriptor, escrow: str, chain_id: int) -> bytes:
    """``keccak256(abi.encode(descriptor..., escrow, chainId))``: the escrow's own
    id, bound to one escrow on one chain so a voucher cannot be replayed elsewhere."""
    return keccak256(descriptor.abi() + _address_word(escrow) + _uint_word(chain_id))


@functools.lru_cache(maxsize=256)
def _domain_separator(escrow_lower: str, chain_id: int) -> bytes:
    return keccak256(_DOMAIN_TYPEHASH + _NAME_HASH + _VERSION_HASH + _uint_word(chain_id)
                     + _address_word(escrow_lower))


def voucher_typed_data(channel: bytes, cumulative_amount: int, *, escrow: str, chain_id: int) -> TypedData:
    """The EIP-712 ``Voucher(bytes32 channelId,uint96 cumulativeAmount)`` a payer
    signs to owe the payee ``cumulative_amount`` in total on ``channel``.

    A stream signs one per metered unit, so the digest is computed here on a
    direct path (the domain separator cached per escrow and chain); the unit
    tests hold it to eth-account's general encoder of the same typed data."""
    _bytes32(channel, "channelId")
    struct = keccak256(_VOUCHER_TYPEHASH + channel + _uint_word(cumulative_amount, maximum=MAX_UINT96))
    digest = keccak256(b"\x19\x01" + _domain_separator(escrow.lower(), chain_id) + struct)
    return TypedData(
        domain={"name": VOUCHER_DOMAIN_NAME, "version": VOUCHER_DOMAIN_VERSION, "chainId": chain_id,
                "verifyingContract": _checksummed(escrow, "escrow")},
        types=VOUCHER_TYPES, primary_type="Voucher",
        message={"channelId": "0x" + channel.hex(), "cumulativeAmount": cumulative_amount},
        precomputed=digest,
    )


# -- escrow calls ---------------------------------------------------------------


def open_call(escrow: str, *, payee: str, operator: str, token: str, deposit: int, salt: bytes,
              authorized_signer: str) -> TempoCall:
    """``open(payee, operator, token, uint96 deposit, salt, authorizedSigner)``.
    The precompile moves the deposit itself: no ``approve`` goes before it (and
    mppx refuses an open transaction with any other call)."""
    data = (_OPEN + _address_word(payee) + _address_word(operator) + _address_word(token)
            + _uint_word(deposit, maximum=MAX_UINT96) + _bytes32(salt, "salt") + _address_word(authorized_signer))
    return TempoCall(bytes.fromhex(escrow[2:]), data)


def top_up_call(escrow: str, descriptor: ChannelDescriptor, additional_deposit: int) -> TempoCall:
    """``topUp(descriptor, uint96 additionalDeposit)``; also cancels a pending close request."""
    data = _TOP_UP + descriptor.abi() + _uint_word(additional_deposit, maximum=MAX_UINT96)
    return TempoCall(bytes.fromhex(escrow[2:]), data)


def request_close_call(escrow: str, descriptor: ChannelDescriptor) -> TempoCall:
    """``requestClose(descriptor)``: the payer's forced close starts the grace period."""
    return TempoCall(bytes.fromhex(escrow[2:]), _REQUEST_CLOSE + descriptor.abi())


def withdraw_call(escrow: str, descriptor: ChannelDescriptor) -> TempoCall:
    """``withdraw(descriptor)``: after the grace period, the unsettled deposit back to the payer."""
    return TempoCall(bytes.fromhex(escrow[2:]), _WITHDRAW + descriptor.abi())


def channel_transaction(call: TempoCall, *, chain_id: int, fee_token: str, gas_limit: int, gas_price: int,
                        valid_before: int, valid_after: int = 0) -> TempoTransaction:
    """An unsigned 0x76 transaction holding exactly ``call`` (an expiring nonce,
    fees in ``fee_token``): the shape mppx verifies for open and top-up. Two
    top-ups of one amount signed in the same second would be one transaction:
    give each its own ``valid_after`` (mppx picks a random past second)."""
    return TempoTransaction(chain_id=chain_id, gas_limit=gas_limit, gas_price=gas_price, valid_before=valid_before,
                            fee_token=bytes.fromhex(fee_token[2:]), calls=(call,), valid_after=valid_after)


def expiring_nonce_hash(tx: TempoTransaction, sender: str) -> bytes:
    """``keccak256(encodeForSigning(tx) ++ sender)``: what the escrow records as the
    channel's ``expiringNonceHash`` when ``tx`` opens it. It depends on the whole
    unsigned transaction (gas and deadline included), so the channel id is known
    only once the open transaction is final, before it is signed."""
    return keccak256(tx.signing_payload() + bytes.fromhex(sender[2:]))


@dataclass(frozen=True, slots=True)
class OpenedChannel:
    """An open transaction (unsigned) and the channel it opens."""

    tx: TempoTransaction
    descriptor: ChannelDescriptor
    channel_id: bytes
    deposit: int


def open_channel(*, payer: str, payee: str, token: str, deposit: int, salt: bytes, escrow: str, chain_id: int,
                 gas_limit: int, gas_price: int, valid_before: int, operator: str = ZERO_ADDRESS,
                 authorized_signer: str | None = None, fee_token: str | None = None) -> OpenedChannel:
    """The open transaction of a new channel from ``payer`` to ``payee``, its
    descriptor and its id. The voucher signer defaults to the payer, named
    explicitly (as mppx does) rather than as zero; fees default to the
    channel's token. ``salt`` must be fresh: 32 random bytes."""
    signer = payer if authorized_signer is None else authorized_signer
    call = open_call(escrow, payee=payee, operator=operator, token=token, deposit=deposit, salt=salt,
                     authorized_signer=signer)
    tx = channel_transaction(call, chain_id=chain_id, fee_token=fee_token or token, gas_limit=gas_limit,
                             gas_price=gas_price, valid_before=valid_before)
    descriptor = ChannelDescriptor(payer=payer, payee=payee, operator=operator, token=token, salt=salt,
                                   authorized_signer=signer, expiring_nonce_hash=expiring_nonce_hash(tx, payer))
    return OpenedChannel(tx, descriptor, channel_id(descriptor, escrow, chain_id), deposit)


__all__ = [
    "ESCROW_PRECOMPILE", "MAX_UINT96", "VOUCHER_TYPES", "ZERO_ADDRESS", "ChannelDescriptor", "OpenedChannel",
    "channel_id", "channel_transaction", "expiring_nonce_hash", "open_call", "open_channel", "request_close_call",
    "top_up_call", "voucher_typed_data", "withdraw_call",
]
