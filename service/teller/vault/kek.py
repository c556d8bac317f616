"""Key-encryption keys (KEKs): the outer layer of envelope encryption.

A ``KekProvider`` wraps and unwraps per-wallet data keys. The local provider
holds versioned AES-256 keys read from a file or the environment; a cloud KMS
provider implements the same three methods.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from teller.errors import ConfigError, TellerError

_NONCE_BYTES = 12


class KekProvider(Protocol):
    @property
    def current_version(self) -> str:
        """Version id new data keys are wrapped under."""
        ...

    def wrap(self, data_key: bytes, aad: bytes) -> tuple[str, bytes]:
        """Wrap a data key under the current KEK; returns (kek version, wrapped)."""
        ...

    def unwrap(self, version: str, wrapped: bytes, aad: bytes) -> bytes:
        """Unwrap a data key wrapped under ``version``."""
        ...


class KeyUnwrapError(TellerError):
    """A stored key does not decrypt: wrong KEK, or the row was tampered with or moved."""

    reason = "key_unwrap_failed"


class LocalKekProvider:
    """Versioned AES-256-GCM KEKs held in process memory."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise ConfigError("at least one KEK is required")
        self._keys: dict[str, AESGCM] = {}
        for version, key in keys:
            if not version or ":" in version:
                raise ConfigError(f"KEK version {version!r} must be non-empty and contain no ':'")
            if len(key) != 32:
                raise ConfigError(f"KEK {version!r} must be 32 bytes, got {len(key)}")
            if version in self._keys:
                raise ConfigError(f"KEK version {version!r} given twice")
            self._keys[version] = AESGCM(key)
        self._current = keys[0][0]

    @classmethod
    def parse(cls, spec: str) -> LocalKekProvider:
        """Parse ``version:base64key`` entries separated by commas or newlines."""
        entries = [e.strip() for e in spec.replace("\n", ",").split(",") if e.strip()]
        keys = []
        for n, entry in enumerate(entries, 1):
            version, sep, b64 = entry.partition(":")
            if not sep:
                raise ConfigError(f"KEK entry {n} must look like 'version:base64key'")
            try:
                key = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ConfigError(f"KEK {version!r} is not valid base64") from exc
            keys.append((version, key))
        return cls(keys)

    @classmethod
    def from_file(cls, path: Path) -> LocalKekProvider:
        try:
            return cls.parse(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read KEK file {path}: {exc.strerror}") from exc

    @property
    def current_version(self) -> str:
        return self._current

    @property
    def versions(self) -> list[str]:
        return list(self._keys)

    def wrap(self, data_key: bytes, aad: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(_NONCE_BYTES)
        return self._current, nonce + self._keys[self._current].encrypt(nonce, data_key, aad)

    def unwrap(self, version: str, wrapped: bytes, aad: bytes) -> bytes:
        aead = self._keys.get(version)
        if aead is None:
            raise KeyUnwrapError(f"KEK version {version!r} is not configured")
        try:
            return aead.decrypt(wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], aad)
        except InvalidTag:
            raise KeyUnwrapError("wallet data key failed authentication") from None
