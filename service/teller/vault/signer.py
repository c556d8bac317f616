"""The narrow signer: the only object that touches a decrypted private key.

It offers an address, signatures over EIP-712 typed data, and signatures over
a 32-byte hash; it knows no payment protocol (a scheme computes its
transaction's signing hash and assembles the signed transaction itself). It
never returns, prints or pickles its key; nothing outside ``teller.vault``
constructs one.
"""

from __future__ import annotations

from typing import Any

import coincurve
from eth_utils import keccak, to_checksum_address

from teller.eip712 import TypedData


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
        return self.unsafe_sign_hash(typed.digest())

    def unsafe_sign_hash(self, digest: bytes) -> bytes:
        """65-byte r||s||v signature (v = 27/28) over a 32-byte hash. Unsafe as
        eth-account's namesake is: a hash can be anything, a transaction's
        included, so only a scheme that computed it from what it means to sign
        calls this."""
        # libsecp256k1 returns low-s signatures, as EIP-2 requires.
        sig = self._key.sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes([sig[64] + 27])

    def __repr__(self) -> str:
        return f"WalletSigner(address={self._address})"

    def __reduce__(self) -> Any:
        raise TypeError("WalletSigner cannot be pickled")
