"""Spend policy: pure evaluation of one payment against a tenant's limits.

Decisions are values with stable reason codes; the caller records them
verbatim in the audit log and turns denials into errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from teller.eip3009 import MAX_AMOUNT
from teller.errors import InvalidArgument, LimitExceeded, TellerError


@dataclass(frozen=True, slots=True)
class Policy:
    per_payment_max: int | None = None
    daily_budget: int | None = None

    def __post_init__(self) -> None:
        for name in ("per_payment_max", "daily_budget"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_AMOUNT:
                raise InvalidArgument(f"policy.{name} must be between 0 and {MAX_AMOUNT}")
        if (
            self.per_payment_max is not None
            and self.daily_budget is not None
            and self.daily_budget < self.per_payment_max
        ):
            raise InvalidArgument("policy.daily_budget is smaller than policy.per_payment_max")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = "ok"
    limit: int | None = None
    remaining: int | None = None
    window: str = ""

    def error(self, amount: int) -> TellerError:
        meta = {"reason": self.reason, "amount": str(amount)}
        if self.limit is not None:
            meta["limit"] = str(self.limit)
        if self.remaining is not None:
            meta["remaining"] = str(self.remaining)
        if self.window:
            meta["window"] = self.window
        text = {
            "per_payment_max": f"amount {amount} is above the per-payment maximum {self.limit}",
            "caller_max_amount": f"amount {amount} is above the caller's max_amount {self.limit}",
        }.get(self.reason, f"amount {amount} exceeds the {self.window} budget: {self.remaining} of {self.limit} left")
        return LimitExceeded(text, reason=self.reason, metadata=meta)


ALLOW = Decision(True)


def evaluate(policy: Policy, amount: int, spent_today: int, caller_cap: int | None = None) -> Decision:
    if caller_cap is not None and amount > caller_cap:
        return Decision(False, "caller_max_amount", limit=caller_cap)
    if policy.per_payment_max is not None and amount > policy.per_payment_max:
        return Decision(False, "per_payment_max", limit=policy.per_payment_max)
    if policy.daily_budget is not None:
        remaining = max(policy.daily_budget - spent_today, 0)
        if amount > remaining:
            return Decision(False, "budget_exhausted:day", policy.daily_budget, remaining, "day")
    return ALLOW
