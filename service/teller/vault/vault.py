"""The key vault: generates, imports, seals and unseals wallet keys.

Decrypted keys live only inside ``WalletSigner`` objects, cached for
``key_cache_seconds`` after last use so the hot path does not pay two
AES-GCM decryptions and a KMS round trip per signature.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

from teller.errors import InvalidArgument
from teller.vault.envelope import SealedKey, associated_data, open_sealed, seal
from teller.vault.kek import KekProvider, KeyUnwrapError
from teller.vault.signer import WalletSigner, address_of

_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass(frozen=True, slots=True)
class NewWallet:
    address: str
    sealed: SealedKey


def parse_private_key(text: str) -> bytes:
    """Validate an imported key; errors never echo the input."""
    body = text.strip().removeprefix("0x").removeprefix("0X")
    if len(body) != 64:
        raise InvalidArgument("private_key must be 32 bytes as 64 hex digits")
    try:
        key = bytes.fromhex(body)
    except ValueError:
        raise InvalidArgument("private_key must be hexadecimal") from None
    if not 0 < int.from_bytes(key, "big") < _SECP256K1_N:
        raise InvalidArgument("private_key is not a valid secp256k1 scalar")
    return key


class Vault:
    def __init__(self, kek: KekProvider, key_cache_seconds: float = 300.0) -> None:
        self._kek = kek
        self._ttl = key_cache_seconds
        self._cache: dict[tuple[str, str, bytes], tuple[WalletSigner, float]] = {}
        self._lock = threading.Lock()

    @property
    def kek(self) -> KekProvider:
        return self._kek

    def generate(self, tenant_id: str, wallet_id: str) -> NewWallet:
        while True:
            key = secrets.token_bytes(32)
            if 0 < int.from_bytes(key, "big") < _SECP256K1_N:
                break
        return self._seal(tenant_id, wallet_id, key)

    def import_key(self, tenant_id: str, wallet_id: str, private_key: str) -> NewWallet:
        return self._seal(tenant_id, wallet_id, parse_private_key(private_key))

    def _seal(self, tenant_id: str, wallet_id: str, key: bytes) -> NewWallet:
        address = address_of(key)
        return NewWallet(address, seal(key, associated_data(tenant_id, wallet_id, address), self._kek))

    def signer(self, tenant_id: str, wallet_id: str, address: str, sealed: SealedKey) -> WalletSigner:
        """A signer for a stored wallet; fails if the row does not belong to this wallet."""
        cache_key = (wallet_id, sealed.kek_version, sealed.ciphertext)
        now = time.monotonic()
        if self._ttl > 0:
            with self._lock:
                hit = self._cache.get(cache_key)
                if hit is not None and hit[1] > now:
                    self._cache[cache_key] = (hit[0], now + self._ttl)
                    return hit[0]
        key = open_sealed(sealed, associated_data(tenant_id, wallet_id, address), self._kek)
        if address_of(key).lower() != address.lower():
            raise KeyUnwrapError("wallet key does not match the wallet's address")
        signer = WalletSigner(key, address)
        if self._ttl > 0:
            with self._lock:
                self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
                self._cache[cache_key] = (signer, now + self._ttl)
        return signer

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()


__all__ = ["NewWallet", "Vault", "parse_private_key"]
