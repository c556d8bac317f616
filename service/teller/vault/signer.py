"""The narrow signer: the only object that touches a decrypted private key.

It offers an address, signatures over typed data, and signed transactions
from its own address. It never returns, prints
or pickles its key; nothing outside ``teller.vault`` constructs one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import coincurve
from eth_account.messages import encode_typed_data
from eth_account.typed_transactions import TypedTransaction
from eth_utils import keccak, to_checksum_address

from teller.mpp.tempo_tx import TempoTransaction


@dataclass(frozen=True, slots=True)
class TypedData:
    """An EIP-712 message: domain, struct types (without EIP712Domain), primary type, values."""

    domain: dict[str, Any]
    types: dict[str, list[dict[str, str]]]
    primary_type: str
    message: dict[str, Any]
    #: The digest when a builder computed it on a faster path (checked against
    #: eth-account's general encoder in tests).
    precomputed: bytes | None = None

    def digest(self) -> bytes:
        """The 32-byte EIP-712 hash that gets signed."""
        if self.precomputed is not None:
            return self.precomputed
        signable = encode_typed_data(
            domain_data=self.domain,
            message_types=self.types,
            message_data=self.message,
        )
        return keccak(b"\x19" + signable.version + signable.header + signable.body)


def address_of(private_key: bytes) -> str:
    public = coincurve.PrivateKey(private_key).public_key.format(compressed=False)[1:]
    return to_checksum_address(keccak(public)[-20:])


class WalletSigner:
    """Signs for one wallet. Construct only through ``teller.vault.Vault``."""

    __slots__ = ("_address", "_key")

    def __init__(self, private_key: bytes, address: str) -> None:
        self._key = coincurve.PrivateKey(private_key)
        self._address = address

    @property
    def address(self) -> str:
        return self._address

    def sign_typed_data(self, typed: TypedData) -> bytes:
        """65-byte r||s||v signature (v = 27/28) over the EIP-712 digest."""
        return self._sign_digest(typed.digest())

    def sign_evm_transaction(self, tx: dict[str, Any]) -> bytes:
        """An EIP-1559 transaction from this wallet, signed and encoded for
        ``eth_sendRawTransaction``. Refuses a transaction from another address."""
        if to_checksum_address(tx.get("from", self._address)) != self._address:
            raise ValueError("transaction is not from this wallet")
        fields = {k: v for k, v in tx.items() if k != "from"}
        fields["type"] = 2
        unsigned = TypedTransaction.from_dict(fields)
        sig = self._key.sign_recoverable(unsigned.hash(), hasher=None)
        signed = TypedTransaction.from_dict({**fields, "v": sig[64], "r": int.from_bytes(sig[:32], "big"),
                                             "s": int.from_bytes(sig[32:64], "big")})
        return signed.encode()

    def sign_tempo_transaction(self, tx: TempoTransaction) -> bytes:
        """A Tempo (type 0x76) transaction from this wallet, signed and encoded.
        Only the signing hash is signed here; the key never leaves this object."""
        # v = 27 + yParity: nodes re-encode 0/1 and the hash would then differ from keccak(raw).
        return tx.signed(self._sign_digest(tx.signing_hash()))

    def _sign_digest(self, digest: bytes) -> bytes:
        # libsecp256k1 returns low-s signatures, as EIP-2 requires.
        sig = self._key.sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes([sig[64] + 27])

    def __repr__(self) -> str:
        return f"WalletSigner(address={self._address})"

    def __reduce__(self) -> Any:
        raise TypeError("WalletSigner cannot be pickled")
