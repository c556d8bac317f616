"""Envelope encryption of wallet private keys.

Each wallet gets a fresh 256-bit data key; the private key is sealed with it
under AES-256-GCM and the data key is wrapped by the KEK. Both layers use the
same associated data, which names the tenant, the wallet and its address, so
a sealed row copied onto another wallet fails authentication.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from teller.vault.kek import KekProvider, KeyUnwrapError

_NONCE_BYTES = 12


@dataclass(frozen=True, slots=True)
class SealedKey:
    kek_version: str
    wrapped_data_key: bytes
    ciphertext: bytes  # nonce || AES-GCM(private key)

    def __repr__(self) -> str:  # keep blobs out of logs and tracebacks
        return f"SealedKey(kek_version={self.kek_version!r})"


def associated_data(tenant_id: str, wallet_id: str, address: str) -> bytes:
    return f"teller.wallet.v1|{tenant_id}|{wallet_id}|{address.lower()}".encode()


def seal(private_key: bytes, aad: bytes, kek: KekProvider) -> SealedKey:
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(_NONCE_BYTES)
    ciphertext = nonce + AESGCM(data_key).encrypt(nonce, private_key, aad)
    version, wrapped = kek.wrap(data_key, aad)
    return SealedKey(version, wrapped, ciphertext)


def open_sealed(sealed: SealedKey, aad: bytes, kek: KekProvider) -> bytes:
    data_key = kek.unwrap(sealed.kek_version, sealed.wrapped_data_key, aad)
    try:
        return AESGCM(data_key).decrypt(sealed.ciphertext[:_NONCE_BYTES], sealed.ciphertext[_NONCE_BYTES:], aad)
    except InvalidTag:
        raise KeyUnwrapError("wallet key failed authentication") from None
