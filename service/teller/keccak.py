"""keccak256 for the signing paths: pysha3's C hash called directly.

``eth_utils.keccak`` checks and converts its arguments on every call, which on
the hot path costs more than the hash itself (an MPP Sign hashes four times,
an x402 Sign twice)."""

from __future__ import annotations

try:
    from sha3 import keccak_256 as _keccak_256

    def keccak256(data: bytes) -> bytes:
        return bytes(_keccak_256(data).digest())
except ImportError:  # pragma: no cover - another eth-hash backend
    from eth_hash.auto import keccak as _auto_keccak

    def keccak256(data: bytes) -> bytes:
        return _auto_keccak(data)


__all__ = ["keccak256"]
