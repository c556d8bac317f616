"""EIP-3009 ``TransferWithAuthorization``: the authorization both x402 ``exact``
and the MPP ``evm`` method ask a wallet to sign. Pure functions only."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eth_utils import keccak

from teller import values
from teller.eip712 import TypedData
from teller.errors import FailedPrecondition, InvalidArgument
from teller.keccak import keccak256

#: validAfter lies this far in the past to absorb clock skew (x402 reference client).
VALID_AFTER_SKEW_S = 600

TRANSFER_WITH_AUTHORIZATION_TYPES = {
    "TransferWithAuthorization": [
        {"name": "from", "type": "address"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "validAfter", "type": "uint256"},
        {"name": "validBefore", "type": "uint256"},
        {"name": "nonce", "type": "bytes32"},
    ]
}

CANCEL_AUTHORIZATION_TYPES = {
    "CancelAuthorization": [
        {"name": "authorizer", "type": "address"},
        {"name": "nonce", "type": "bytes32"},
    ]
}


@dataclass(frozen=True, slots=True)
class Token:
    """The EIP-712 domain of an EIP-3009 token."""

    chain_id: int
    address: str
    name: str
    version: str


@dataclass(frozen=True, slots=True)
class Authorization:
    from_address: str
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes

    def to_json(self) -> dict[str, str]:
        """The wire form x402 and MPP use: every number a decimal string."""
        return {
            "from": self.from_address,
            "to": self.to,
            "value": str(self.value),
            "validAfter": str(self.valid_after),
            "validBefore": str(self.valid_before),
            "nonce": "0x" + self.nonce.hex(),
        }


def parse_amount(text: object, field: str) -> int:
    """A positive uint256 in canonical decimal (refused by name otherwise), that
    the ledger can count (``values.MAX_AMOUNT``)."""
    try:
        value = values.amount(text, field)
    except values.NotCanonical as exc:
        raise InvalidArgument(str(exc)) from None
    if value == 0:
        raise InvalidArgument(f"{field} must be positive")
    if value > values.MAX_AMOUNT:
        raise FailedPrecondition(f"{field} {text} exceeds the largest amount Teller accounts "
                                 f"({values.MAX_AMOUNT})",
                                 reason="amount_out_of_range")
    return value


def parse_address(text: object, field: str) -> str:
    """``0x`` and 40 hex digits (EIP-55 when mixed case), returned checksummed:
    the one form that is signed, stored and compared."""
    try:
        return values.address(text, field)
    except values.NotCanonical as exc:
        raise InvalidArgument(str(exc)) from None


def token_from_extra(chain_id: int, asset: str, extra: Mapping[str, Any], where: str) -> Token:
    name = extra.get("name")
    version = extra.get("version")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{where}.extra.name is missing: the token's EIP-712 domain name is required")
    if not isinstance(version, str) or not version:
        raise InvalidArgument(f"{where}.extra.version is missing: the token's EIP-712 domain version is required")
    return Token(chain_id, parse_address(asset, f"{where}.asset"), name, version)


def authorize(payer: str, to: str, value: int, now: int, timeout_s: int, nonce: bytes) -> Authorization:
    if len(nonce) != 32:
        raise ValueError("EIP-3009 nonce must be 32 bytes")
    return Authorization(payer, to, value, now - VALID_AFTER_SKEW_S, now + timeout_s, nonce)


def _domain(token: Token) -> dict[str, Any]:
    return {"name": token.name, "version": token.version, "chainId": token.chain_id,
            "verifyingContract": token.address}


def cancel_typed_data(token: Token, authorizer: str, nonce: bytes) -> TypedData:
    """``CancelAuthorization``: makes an unused nonce unusable on chain."""
    if len(nonce) != 32:
        raise ValueError("EIP-3009 nonce must be 32 bytes")
    return TypedData(domain=_domain(token), types=CANCEL_AUTHORIZATION_TYPES, primary_type="CancelAuthorization",
                     message={"authorizer": authorizer, "nonce": nonce})


_DOMAIN_TYPEHASH = keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
_TWA_TYPEHASH = keccak(text="TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,"
                            "uint256 validBefore,bytes32 nonce)")


@functools.lru_cache(maxsize=1024)
def domain_separator(token: Token) -> bytes:
    return keccak(_DOMAIN_TYPEHASH + keccak(text=token.name) + keccak(text=token.version)
                  + token.chain_id.to_bytes(32, "big") + _word_address(token.address))


def _word_address(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def digest(token: Token, auth: Authorization) -> bytes:
    """The EIP-712 digest of a TransferWithAuthorization, without the general
    encoder's per-call type analysis (this is the hot path of every signature)."""
    struct = keccak256(_TWA_TYPEHASH + _word_address(auth.from_address) + _word_address(auth.to)
                     + auth.value.to_bytes(32, "big") + auth.valid_after.to_bytes(32, "big")
                     + auth.valid_before.to_bytes(32, "big") + auth.nonce)
    return keccak256(b"\x19\x01" + domain_separator(token) + struct)


def typed_data(token: Token, auth: Authorization) -> TypedData:
    return TypedData(
        precomputed=digest(token, auth),
        domain=_domain(token),
        types=TRANSFER_WITH_AUTHORIZATION_TYPES,
        primary_type="TransferWithAuthorization",
        message={
            "from": auth.from_address,
            "to": auth.to,
            "value": auth.value,
            "validAfter": auth.valid_after,
            "validBefore": auth.valid_before,
            "nonce": auth.nonce,
        },
    )
