"""EIP-712 typed data: what a protocol asks a wallet to sign, and its digest.
Protocol code builds it (``teller.x402.eip3009``, ``teller.mpp.charge``); the
vault's signer signs its digest. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account.messages import encode_typed_data
from eth_utils import keccak


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


__all__ = ["TypedData"]
