"""How much gas a Tempo payment may burn, from the chain's own estimates.

Pure: a transaction in, the ``eth_estimateGas`` requests to send and the rule
that turns their answers into a gas limit out. ``teller.chain`` sends them and
caches the limit; ``docs/tempo-fees.md`` explains the numbers.

Why several estimates for one transaction: servers such as mppx simulate the
credential's transaction (``eth_call``) at its own gas limit in the form viem
sends (a ``calls`` list), and a node prices that form (a wallet that only uses
expiring nonces keeps account nonce 0 and is priced like a new account) above
what executing the transfers costs. Some nodes (anvil 1.7) price that form
without executing its calls, so each transfer is also estimated on its own,
once as it is and once to an address that holds nothing (a transfer that
creates a balance costs ~250k gas more than one that adds to it), and the limit
covers the largest of these. A limit that covers a fresh recipient still covers
the call when the real recipient's balance has dropped to zero since it was
estimated, which is what makes caching it per recipient set safe.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from teller.mpp.charge import ChargeRequest
from teller.mpp.tempo_tx import EXPIRING_NONCE_KEY, TempoCall, TempoTransaction

#: Headroom over the largest estimate, in percent: for state that moves between
#: the estimate and the block (the sender's balance, the fee token's storage).
MARGIN_PERCENT = 10
#: Per call, for what varies between payments that share a cached limit: the
#: amount and memo words of the calldata (at most 64 non-zero bytes, 16 gas each
#: against 4 for a zero byte, well under this).
PER_CALL_ALLOWANCE = 1_000
#: Fee-token base units are 10**-6 of a dollar; Tempo prices gas in 10**-18.
FEE_UNIT = 10**12

#: TIP-20 ``InsufficientBalance(uint256 available, uint256 required, address token)``.
INSUFFICIENT_BALANCE_SELECTOR = "832f98b5"


@dataclass(frozen=True, slots=True)
class Requests:
    """The estimates one transaction needs: the whole transaction as a ``calls``
    list, then per call the call alone and the call to a fresh address."""

    whole: dict[str, Any]
    singles: tuple[tuple[dict[str, Any], dict[str, Any]], ...]


def _hex(value: int) -> str:
    return hex(value)


def _base(tx: TempoTransaction, sender: str) -> dict[str, Any]:
    return {"from": sender, "type": "0x76", "chainId": _hex(tx.chain_id), "nonceKey": _hex(EXPIRING_NONCE_KEY),
            "nonce": "0x0", "validBefore": _hex(tx.valid_before), "feeToken": "0x" + tx.fee_token.hex(),
            "maxFeePerGas": _hex(tx.gas_price), "maxPriorityFeePerGas": _hex(tx.gas_price)}


def _to_fresh(call: TempoCall) -> TempoCall:
    """The same TIP-20 transfer to an address drawn at random (one that has never
    held anything): the recipient is the first argument word after the selector."""
    data = call.data[:16] + os.urandom(20) + call.data[36:]
    return TempoCall(call.to, data)


def requests(tx: TempoTransaction, sender: str, *, fresh: bool = True) -> Requests:
    """``fresh=False`` for calls whose first argument is not a recipient (an
    escrow's ``requestClose(descriptor)`` or ``topUp(descriptor, amount)`` names
    the payer there, and any other payer reverts): each call is then estimated
    only as it is."""
    base = _base(tx, sender)
    whole = dict(base, calls=[{"to": "0x" + c.to.hex(), "value": "0x0", "data": "0x" + c.data.hex()}
                              for c in tx.calls])
    singles = tuple(
        (dict(base, to="0x" + c.to.hex(), data="0x" + c.data.hex()),
         dict(base, to="0x" + c.to.hex(), data="0x" + (_to_fresh(c) if fresh else c).data.hex()))
        for c in tx.calls)
    return Requests(whole, singles)


def limit(whole: int, singles: Sequence[tuple[int, int]]) -> int:
    """The gas limit: the largest of the whole transaction's estimate and the sum
    of each call's larger estimate, with the margin and the per-call allowance."""
    largest = max(whole, sum(max(pair) for pair in singles))
    return -(-largest * (100 + MARGIN_PERCENT) // 100) + PER_CALL_ALLOWANCE * len(singles)


def max_fee(gas_limit: int, gas_price: int) -> int:
    """The most a transaction can cost, in fee-token base units (rounded up)."""
    return -(-gas_limit * gas_price // FEE_UNIT)


def fee(gas_used: int, gas_price: int) -> int:
    """What a mined transaction cost, in fee-token base units (rounded up)."""
    return -(-gas_used * gas_price // FEE_UNIT)


def shape_key(req: ChargeRequest, sender: str) -> tuple[Any, ...]:
    """What a cached limit is valid for: the sender (its account nonce and
    balance shape the estimate), the chain, the token (each call's contract and
    the fee token), and per transfer the recipient and whether it carries a memo
    (``transfer`` or ``transferWithMemo``; the primary transfer always does).
    Built from the request, not the transaction: it is computed on every Sign."""
    return (sender.lower(), req.chain_id, req.currency, req.recipient,
            tuple((s.recipient, s.memo is not None) for s in req.splits))


def is_insufficient_balance(error: Mapping[str, Any]) -> bool:
    """A node's refusal that means the wallet cannot cover amount + fee."""
    message = str(error.get("message", "")).lower()
    data = str(error.get("data", "")).lower()
    return ("insufficient funds" in message or "insufficient balance" in message
            or INSUFFICIENT_BALANCE_SELECTOR in data or INSUFFICIENT_BALANCE_SELECTOR in message)


__all__ = ["FEE_UNIT", "MARGIN_PERCENT", "PER_CALL_ALLOWANCE", "Requests", "fee", "is_insufficient_balance", "limit",
           "max_fee", "requests", "shape_key"]
