"""MPP ``charge`` requests and credentials, for the ``tempo`` and ``evm`` methods.

Pure: a parsed challenge and the payer's facts in; an unsigned Tempo
transaction, EIP-712 typed data or a credential header out. Signing happens in
the vault, broadcasting in ``teller.chain``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eth_utils import keccak

from teller import values
from teller.eip712 import TypedData
from teller.errors import FailedPrecondition, InvalidArgument
from teller.keccak import keccak256
from teller.mpp.challenge import MppChallenge
from teller.mpp.tempo_tx import TempoCall, TempoTransaction
from teller.x402 import eip3009

#: Tempo accepts an expiring-nonce valid_before at most this far ahead.
MAX_VALID_FOR_S = 25
MIN_VALID_FOR_S = 5
MAX_SPLITS = 10
#: keccak256("mpp")[:4]: the tag of MPP attribution memos.
ATTRIBUTION_TAG = keccak(text="mpp")[:4]


@dataclass(frozen=True, slots=True)
class Transfer:
    recipient: str
    amount: int
    memo: bytes | None  # 32 bytes: transferWithMemo


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """An MPP charge request: the fields Teller acts on, validated."""

    method: str  # "tempo" | "evm"
    amount: int
    currency: str
    recipient: str
    chain_id: int
    memo: bytes | None
    splits: tuple[Transfer, ...]
    fee_payer: bool
    modes: tuple[str, ...]  # "pull" / "push" as the challenge allows
    credential_types: tuple[str, ...]  # evm: what the server accepts
    domain: tuple[str, str] | None  # evm: EIP-712 (name, version) when the challenge names them

    @property
    def network(self) -> str:
        return f"eip155:{self.chain_id}"


@dataclass(frozen=True, slots=True)
class ChargeTerms:
    """A charge challenge and its request, as parsed: what an MPP charge offer pays."""

    challenge: MppChallenge
    request: ChargeRequest


def field_error(where: str, name: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"{where}.{name}: {problem}")


def amount_field(value: Any, where: str, name: str, *, allow_zero: bool = True, maximum: int = values.UINT256_MAX,
                 what: str = "uint256 amount") -> int:
    """A request's amount: canonical decimal up to ``maximum`` (MPP charges: uint256;
    session vouchers: uint96), and one the ledger can count."""
    try:
        amount = values.uint(value, f"{where}.{name}", maximum=maximum, what=what)
    except values.NotCanonical as exc:
        raise InvalidArgument(str(exc)) from None
    if amount > values.MAX_AMOUNT:
        raise FailedPrecondition(f"{where}.{name}: {value} exceeds the largest amount Teller accounts "
                                 f"({values.MAX_AMOUNT})", reason="amount_out_of_range")
    if amount == 0 and not allow_zero:
        raise field_error(where, name, "must be positive")
    return amount


def _checksum(address: str) -> str:
    """A wallet's address as it is signed into credentials (checksummed, cached)."""
    try:
        return values.address(address, "address")
    except values.NotCanonical as exc:
        raise ValueError(str(exc)) from None


def address_field(value: Any, where: str, name: str) -> str:
    """``0x`` + 40 hex digits (EIP-55 when mixed case), checksummed (teller.values;
    cached there: a challenge's recipient and currency repeat from call to call)."""
    try:
        return values.address(value, f"{where}.{name}")
    except values.NotCanonical as exc:
        raise InvalidArgument(str(exc)) from None


def _memo(value: Any, where: str, name: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("0x") or len(value) > 66:
        raise field_error(where, name, "must be 0x-prefixed hex of at most 32 bytes")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        raise field_error(where, name, "must be 0x-prefixed hex of at most 32 bytes") from None
    return raw.ljust(32, b"\0")


def parse_request(ch: MppChallenge) -> ChargeRequest:
    """The ``request`` of a tempo or evm charge challenge; errors name the field."""
    where = f"Payment challenge {ch.id[:40]!r} request"
    r = ch.request
    details = r.get("methodDetails", {})
    if not isinstance(details, Mapping):
        raise field_error(where, "methodDetails", "must be an object")
    chain_id = details.get("chainId", 4217 if ch.method == "tempo" else None)
    if not isinstance(chain_id, int):  # a JSON number; "8453" or 8453.0 are other spellings
        raise field_error(where, "methodDetails.chainId", f"must be a positive integer, got {str(chain_id)[:40]!r}")
    try:
        chain_id = values.chain_id(chain_id, f"{where}.methodDetails.chainId")
    except values.NotCanonical as exc:
        raise InvalidArgument(str(exc)) from None
    splits: list[Transfer] = []
    raw_splits = details.get("splits") or []
    if not isinstance(raw_splits, list) or len(raw_splits) > MAX_SPLITS:
        raise field_error(where, "methodDetails.splits", f"must be a list of at most {MAX_SPLITS} splits")
    for i, sp in enumerate(raw_splits):
        path = f"methodDetails.splits[{i}]"
        if not isinstance(sp, Mapping):
            raise field_error(where, path, "must be an object")
        memo = _memo(sp.get("memo"), where, f"{path}.memo")
        if memo is not None and memo[:4] == ATTRIBUTION_TAG:
            # Such a split could also pay the challenge its memo names.
            raise field_error(where, f"{path}.memo", "must not be an MPP attribution memo")
        splits.append(Transfer(address_field(sp.get("recipient"), where, f"{path}.recipient"),
                               amount_field(sp.get("amount"), where, f"{path}.amount", allow_zero=False), memo))
    amount = amount_field(r.get("amount"), where, "amount", allow_zero=True)
    if splits and sum(s.amount for s in splits) >= amount:
        raise field_error(where, "methodDetails.splits", "must add up to less than amount")
    modes = details.get("supportedModes", ["pull", "push"])
    if not isinstance(modes, list) or not modes or any(m not in ("pull", "push") for m in modes):
        raise field_error(where, "methodDetails.supportedModes", "must list 'pull' and/or 'push'")
    types = details.get("credentialTypes", [])
    if not isinstance(types, list) or any(not isinstance(t, str) for t in types):
        raise field_error(where, "methodDetails.credentialTypes", "must be a list of strings")
    domain = None
    extra = r.get("extra")
    if isinstance(extra, Mapping) and isinstance(extra.get("name"), str) and isinstance(extra.get("version"), str):
        domain = (extra["name"], extra["version"])
    fee_payer = details.get("feePayer", False)
    if not isinstance(fee_payer, bool):
        raise field_error(where, "methodDetails.feePayer", "must be true or false")
    return ChargeRequest(
        method=ch.method, amount=amount, currency=address_field(r.get("currency"), where, "currency"),
        recipient=address_field(r.get("recipient"), where, "recipient"), chain_id=chain_id,
        memo=_memo(details.get("memo"), where, "methodDetails.memo"), splits=tuple(splits), fee_payer=fee_payer,
        modes=tuple(modes), credential_types=tuple(types), domain=domain,
    )


def attribution_memo(challenge_id: str, realm: str) -> bytes:
    """The MPP attribution memo: tag | version 1 | keccak(realm)[:10] |
    anonymous client (10 zero bytes) | keccak(challenge id)[:7]. Servers use it
    to tie an on-chain transfer to the challenge it pays."""
    return (ATTRIBUTION_TAG + b"\x01" + keccak256(realm.encode())[:10] + b"\0" * 10
            + keccak256(challenge_id.encode())[:7])


def transfers(req: ChargeRequest, ch: MppChallenge) -> tuple[Transfer, ...]:
    """The primary transfer (amount minus splits, with the challenge's memo or
    else the attribution memo), then each split."""
    primary = req.amount - sum(s.amount for s in req.splits)
    memo = req.memo if req.memo is not None else attribution_memo(ch.id, ch.realm)
    return (Transfer(req.recipient, primary, memo), *req.splits)


def valid_before(ch: MppChallenge, now_s: int, max_valid_for_s: int = MAX_VALID_FOR_S) -> int:
    """No later than the challenge's expiry, and within Tempo's expiring-nonce
    window (and the operator's ``max_valid_for_s``, when shorter)."""
    latest = now_s + min(MAX_VALID_FOR_S, max_valid_for_s)
    if ch.expires_at is not None:
        latest = min(latest, int(ch.expires_at.timestamp()))
    if latest < now_s + MIN_VALID_FOR_S:
        raise InvalidArgument(f"Payment challenge {ch.id[:40]!r} expires at {ch.expires}: too soon to pay")
    return latest


_TRANSFER = keccak(text="transfer(address,uint256)")[:4]
_TRANSFER_WITH_MEMO = keccak(text="transferWithMemo(address,uint256,bytes32)")[:4]


def tip20_transfer(token: str, transfer: Transfer) -> TempoCall:
    """The TIP-20 ``transfer(address,uint256)`` call, or ``transferWithMemo(address,
    uint256,bytes32)`` with a memo: selector and three static words, encoded here.
    (pytempo's TIP20 helper goes through web3's general ABI encoder, which cost a
    third of an MPP Sign's CPU; a test holds the two to the same bytes.)"""
    to = bytes.fromhex(transfer.recipient[2:])
    if len(to) != 20:
        raise ValueError(f"TIP-20 recipient must be 20 bytes, got {len(to)}")
    if not 0 <= transfer.amount < 2**256:
        raise ValueError("TIP-20 amount must fit in uint256")
    words = bytes(12) + to + transfer.amount.to_bytes(32, "big")
    contract = bytes.fromhex(token[2:])
    if transfer.memo is None:
        return TempoCall(contract, _TRANSFER + words)
    if len(transfer.memo) > 32:
        raise ValueError("TIP-20 memo must be at most 32 bytes")
    return TempoCall(contract, _TRANSFER_WITH_MEMO + words + transfer.memo.ljust(32, b"\0"))


def tempo_transaction(req: ChargeRequest, ch: MppChallenge, *, now_s: int, gas_limit: int,
                      gas_price: int, max_valid_for_s: int = MAX_VALID_FOR_S) -> TempoTransaction:
    """The unsigned type-0x76 transaction paying ``req`` (fees in the charged token,
    an expiring nonce)."""
    calls = [tip20_transfer(req.currency, t) for t in transfers(req, ch)]
    return TempoTransaction(chain_id=req.chain_id, gas_limit=gas_limit, gas_price=gas_price,
                            valid_before=valid_before(ch, now_s, max_valid_for_s), fee_token=bytes.fromhex(req.currency[2:]),
                            calls=tuple(calls))


def proof_typed_data(ch: MppChallenge, req: ChargeRequest, account: str) -> TypedData:
    """Zero-amount charges: an EIP-712 ``Proof`` binding the paying wallet to the
    challenge (MPP proof v3: domain ``MPP``/``3``, no verifying contract)."""
    return TypedData(
        domain={"name": "MPP", "version": "3", "chainId": req.chain_id},
        types={"Proof": [{"name": "account", "type": "address"}, {"name": "challengeId", "type": "string"},
                         {"name": "realm", "type": "string"}]},
        primary_type="Proof",
        message={"account": _checksum(account), "challengeId": ch.id, "realm": ch.realm},
    )


def evm_nonce(ch: MppChallenge) -> bytes:
    """The EIP-3009 nonce an evm charge binds to its challenge: keccak256 of
    the JSON array ``[id, realm]``."""
    return keccak(text=json.dumps([ch.id, ch.realm], separators=(",", ":"), ensure_ascii=False))


def evm_authorization(req: ChargeRequest, ch: MppChallenge, payer: str, now_s: int, *,
                      max_valid_for_s: int = 3600) -> eip3009.Authorization:
    """The EIP-3009 authorization of an evm charge: valid until the challenge
    expires, and never longer than ``max_valid_for_s`` (a challenge expiring in
    2099 would otherwise make a reservation that lasts decades)."""
    if req.splits:
        raise InvalidArgument(f"Payment challenge {ch.id[:40]!r}: evm charges cannot carry splits")
    if req.amount == 0:
        # A zero-value authorization still signs the realm into its nonce and could be relayed.
        raise InvalidArgument(f"Payment challenge {ch.id[:40]!r}: Teller does not sign zero-amount evm charges")
    before = int(ch.expires_at.timestamp()) if ch.expires_at is not None else now_s + 300
    before = min(before, now_s + max_valid_for_s)
    if before <= now_s:
        raise InvalidArgument(f"Payment challenge {ch.id[:40]!r} expired at {ch.expires}")
    return eip3009.Authorization(payer, req.recipient, req.amount, 0, before, evm_nonce(ch))


def did_pkh(chain_id: int, address: str) -> str:
    return f"did:pkh:eip155:{chain_id}:{_checksum(address)}"


def credential(ch: MppChallenge, payload: Mapping[str, Any], source: str) -> str:
    """``Payment <base64url(JSON)>``: the challenge echoed verbatim, the payload, the payer."""
    doc = {"challenge": ch.echo(), "payload": dict(payload), "source": source}
    raw = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    return "Payment " + base64.urlsafe_b64encode(raw).decode().rstrip("=")


__all__ = [
    "ChargeRequest",
    "ChargeTerms",
    "Transfer",
    "attribution_memo",
    "credential",
    "did_pkh",
    "evm_authorization",
    "evm_nonce",
    "parse_request",
    "tempo_transaction",
    "transfers",
    "valid_before",
]
