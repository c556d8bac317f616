"""Tempo transactions (type 0x76) of the one shape Teller signs, encoded here.

A Teller payment on Tempo is always the same shape: TIP-20 calls with no
native value, an expiring nonce (TIP-1009), fees paid by the sender in the
charged token, and no access list, fee payer, authorization list or key
authorization. For that shape the encoding is a fixed RLP list, built here
directly. (pytempo's general model validated the transaction and RLP-encoded it
twice per payment through pyrlp's type inference: ~65 us, about a tenth of a
worker's time per MPP Sign.) ``tests/e2e/test_mpp_tempo.py`` holds the signing
payload and the signed transaction to pytempo's bytes for random transactions,
and the live tests have a Tempo node accept them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from teller.keccak import keccak256

TYPE = 0x76
#: Expiring nonces (TIP-1009): replay protection by transaction hash, so
#: concurrent payments from one wallet never contend for a sequential nonce.
EXPIRING_NONCE_KEY = 2**256 - 1

RlpItem = bytes | int | Sequence["RlpItem"]


def _prefix(offset: int, length: int) -> bytes:
    if length < 56:
        return bytes([offset + length])
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([offset + 55 + len(size)]) + size


def rlp(item: RlpItem) -> bytes:
    """Recursive Length Prefix encoding of bytes, non-negative integers (big-endian,
    no leading zeros: 0 is the empty string) and lists of them."""
    if isinstance(item, int):
        if item < 0:
            raise ValueError("RLP cannot encode a negative integer")
        item = item.to_bytes((item.bit_length() + 7) // 8, "big")
    if isinstance(item, bytes):
        if len(item) == 1 and item[0] < 0x80:
            return item
        return _prefix(0x80, len(item)) + item
    payload = b"".join(rlp(x) for x in item)
    return _prefix(0xC0, len(payload)) + payload


@dataclass(frozen=True, slots=True)
class TempoCall:
    to: bytes  # 20-byte contract address
    data: bytes


@dataclass(frozen=True, slots=True)
class TempoTransaction:
    """An unsigned Tempo payment: ``signing_hash`` is what the wallet signs,
    ``signed`` the raw transaction for ``eth_sendRawTransaction``."""

    chain_id: int
    gas_limit: int
    gas_price: int  # both the max fee and the max priority fee per gas
    valid_before: int  # unix seconds; the expiring nonce's deadline
    fee_token: bytes  # 20-byte TIP-20 token the fees are paid in
    calls: tuple[TempoCall, ...]
    #: Unix seconds; 0 for none. Two otherwise identical expiring-nonce transactions
    #: are one (replay protection is by hash): a session top-up sets it to tell them apart.
    valid_after: int = 0
    _encoded: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.chain_id <= 0 or self.gas_limit <= 0 or self.gas_price < 0 or self.valid_before <= 0:
            raise ValueError("chain_id, gas_limit and valid_before must be positive, gas_price not negative")
        if not 0 <= self.valid_after < self.valid_before:
            raise ValueError("valid_after must be 0 (none) or before valid_before")
        if not self.calls:
            raise ValueError("a Tempo transaction needs at least one call")
        if len(self.fee_token) != 20 or any(len(c.to) != 20 for c in self.calls):
            raise ValueError("addresses must be 20 bytes")
        # The items both encodings share, up to and including the fee token, encoded
        # once: a list's encoding is a length prefix over its items' encodings, and
        # the signing payload and the signed transaction differ only after these.
        items: tuple[RlpItem, ...] = (
            self.chain_id, self.gas_price, self.gas_price, self.gas_limit,
            [[c.to, 0, c.data] for c in self.calls],
            [],  # access list
            EXPIRING_NONCE_KEY, 0,  # nonce key, nonce
            self.valid_before, self.valid_after,  # 0 encodes as the empty string: none
            self.fee_token)
        object.__setattr__(self, "_encoded", b"".join(rlp(item) for item in items))

    def signing_payload(self) -> bytes:
        """What the sender signs the hash of (ox's ``encodeForSigning``). TIP-1034
        also hashes it, with the sender, into a channel's ``expiringNonceHash``."""
        # After the fee token: no fee payer (empty), no authorization list.
        return _typed(self._encoded + _EMPTY + _EMPTY_LIST)

    def signing_hash(self) -> bytes:
        return keccak256(self.signing_payload())

    def signed(self, signature: bytes) -> bytes:
        """The raw transaction with the sender's 65-byte ``r || s || v`` signature."""
        if len(signature) != 65:
            raise ValueError("a sender signature is 65 bytes")
        # After the fee token: no fee payer signature, no authorization list, the signature.
        return _typed(self._encoded + _EMPTY + _EMPTY_LIST + rlp(signature))


_EMPTY = rlp(b"")
_EMPTY_LIST = rlp([])


def _typed(payload: bytes) -> bytes:
    """A typed transaction: its type byte, then the RLP list of ``payload``'s items."""
    return bytes([TYPE]) + _prefix(0xC0, len(payload)) + payload


__all__ = ["EXPIRING_NONCE_KEY", "TYPE", "TempoCall", "TempoTransaction", "rlp"]
