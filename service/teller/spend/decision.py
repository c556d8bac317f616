"""A policy's verdict on one charge, and the stable reason codes it records.

A ``Decision`` is a value with a reason code that the audit log records
verbatim (``payment.deny``) and that callers see in the error's ErrorInfo;
``Decision.error`` is the caller-facing error for a refusal. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from teller.errors import FailedPrecondition, LimitExceeded, PermissionDenied, TellerError
from teller.spend.rules import Charge


class DenialReason(StrEnum):
    """Why a payment was refused, as recorded in ``payment.deny`` audit rows and
    returned as the error's reason. The values are stored: never rename one."""

    FROZEN = "frozen"
    NETWORK_NOT_ALLOWED = "network_not_allowed"
    ASSET_NOT_ALLOWED = "asset_not_allowed"
    AMOUNT_OUT_OF_RANGE = "amount_out_of_range"
    PAYEE_NOT_ALLOWED = "payee_not_allowed"
    HOST_NOT_ALLOWED = "host_not_allowed"
    PER_PAYMENT_MAX = "per_payment_max"
    MAX_CHANNEL_DEPOSIT = "max_channel_deposit"
    #: An MPP session's open when the tenant already holds that many channels not closed.
    MAX_OPEN_CHANNELS = "max_open_channels"
    MAX_FEE = "max_fee"
    CALLER_MAX_AMOUNT = "caller_max_amount"
    #: Recorded with the budget's name: ``budget_exhausted:<name>`` (see ``budget_exhausted``).
    BUDGET_EXHAUSTED = "budget_exhausted"
    #: Sign's own refusals, before or after the policy: no offer in a protocol the
    #: tenant pays; every allowed offer is more than the wallet holds.
    PROTOCOL_NOT_ALLOWED = "protocol_not_allowed"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    #: A void whose gas would cost more than the operator allows.
    MAX_VOID_FEE = "max_void_fee"


#: The reason an allowed decision carries.
ALLOWED = "ok"
_BUDGET_PREFIX = f"{DenialReason.BUDGET_EXHAUSTED}:"
#: Refusals that are a limit running out (RESOURCE_EXHAUSTED), not a rule (PERMISSION_DENIED).
_LIMITS = frozenset((DenialReason.PER_PAYMENT_MAX, DenialReason.CALLER_MAX_AMOUNT, DenialReason.MAX_FEE,
                     DenialReason.MAX_CHANNEL_DEPOSIT, DenialReason.MAX_OPEN_CHANNELS))


def budget_exhausted(name: str) -> str:
    """The reason code of a refusal by the budget ``name``."""
    return _BUDGET_PREFIX + name


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    #: ``ALLOWED``, a ``DenialReason``, or ``budget_exhausted(name)``.
    reason: str = ALLOWED
    scope: str = ""  # "tenant" or "wallet"
    limit: int | None = None
    remaining: int | None = None
    window: str = ""
    #: What the payment holds against budgets: its amount and its fee at most.
    amount_common: int = 0
    fee_common: int = 0

    def error(self, charge: Charge) -> TellerError:
        meta = {"reason": self.reason, "amount": str(charge.amount)}
        if self.scope:
            meta["scope"] = self.scope
        if self.limit is not None:
            meta["limit"] = str(self.limit)
        if self.remaining is not None:
            meta["remaining"] = str(self.remaining)
        if self.window:
            meta["window"] = self.window
        where = f"{self.scope} " if self.scope else ""
        budget = self.reason.startswith(_BUDGET_PREFIX)
        if self.reason == DenialReason.PER_PAYMENT_MAX:
            text = f"amount {self.amount_common} is above the {where}per-payment maximum {self.limit}"
        elif self.reason == DenialReason.MAX_FEE:
            text = (f"the fee this payment can cost, {self.fee_common}, is above the {where}policy's max_fee "
                    f"{self.limit}")
            meta["fee"] = str(charge.fee)
        elif self.reason == DenialReason.CALLER_MAX_AMOUNT:
            text = f"amount {charge.amount} is above the caller's max_amount {self.limit}"
        elif self.reason == DenialReason.AMOUNT_OUT_OF_RANGE:
            text = (f"amount {charge.amount} is {self.amount_common} in the {where}policy's common unit, more "
                    f"than the ledger counts ({self.limit})")
            return FailedPrecondition(text, reason=self.reason, metadata=meta)
        elif self.reason == DenialReason.MAX_OPEN_CHANNELS:
            held = "" if charge.open_channels is None else f"{charge.open_channels} "
            text = (f"opening another session channel would pass the {where}policy's max_open_channels "
                    f"{self.limit}: {held}channels are open or closing; close one (CloseChannel) first")
            if charge.open_channels is not None:
                meta["open_channels"] = str(charge.open_channels)
        elif budget:
            cost = (f"amount {self.amount_common - self.fee_common} + fee up to {self.fee_common}"
                    if self.fee_common else f"amount {self.amount_common}")
            text = (f"{cost} exceeds the {where}budget {self.window!r}: "
                    f"{self.remaining} of {self.limit} left")
        else:
            texts: dict[str, str] = {
                DenialReason.FROZEN: f"the {where}is frozen",
                DenialReason.NETWORK_NOT_ALLOWED: f"network {charge.network} is not allowed by the {where}policy",
                DenialReason.ASSET_NOT_ALLOWED:
                    f"asset {charge.asset} on {charge.network} is not allowed by the {where}policy",
                DenialReason.PAYEE_NOT_ALLOWED: f"payee {charge.pay_to} is not allowed by the {where}policy",
                DenialReason.HOST_NOT_ALLOWED: f"host of {charge.url[:200]!r} is not allowed by the {where}policy",
            }
            text = texts.get(self.reason, self.reason)
        cls = LimitExceeded if budget or self.reason in _LIMITS else PermissionDenied
        return cls(text, reason=self.reason, metadata=meta)


__all__ = ["ALLOWED", "Decision", "DenialReason", "budget_exhausted"]
