"""A spend policy as frozen values, and what it judges.

A policy document (JSON, read by ``teller.spend.parse``) becomes a ``Policy``;
``teller.spend.evaluate`` judges a ``Charge`` (the facts of one payment)
against each ``Scope`` (a tenant's or a wallet's policy with what its windows
already hold). Pure: no I/O, no database.

Amounts are compared in a common unit: each allowed asset is registered with
its decimals, and raw token amounts are scaled to ``unit_decimals`` (rounding
up, so a payment never counts for less than it is).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from teller.spend.windows import calendar_bounds

#: Which protocols a tenant may pay, in the default order of preference.
PROTOCOLS = ("x402", "mpp")
#: MPP Tempo charges: "pull" (the server broadcasts) or "push" (Teller broadcasts).
MPP_MODES = ("pull", "push")
#: Fields only a tenant policy may set: wallets share their tenant's asset registry and unit.
TENANT_ONLY = ("unit_decimals", "assets", "allow_unknown_assets", "protocols", "mpp_mode", "max_open_channels")
#: The most ``max_open_channels`` may say: a count, not an amount.
MAX_OPEN_CHANNELS = 1_000_000


@dataclass(frozen=True, slots=True)
class Budget:
    name: str
    limit: int
    calendar: str = ""  # "hour" | "day" | "week" | "month" when calendar-aligned
    rolling_ms: int = 0  # window length when rolling

    def bounds(self, now_ms: int) -> tuple[int, int]:
        """[start, end) of the window that contains ``now_ms``."""
        if self.rolling_ms:
            return now_ms - self.rolling_ms + 1, now_ms + 1
        return calendar_bounds(self.calendar, now_ms)


@dataclass(frozen=True, slots=True)
class Asset:
    network: str
    address: str  # lower-case
    decimals: int


@dataclass(frozen=True, slots=True)
class Lists:
    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()

    def permits(self, value: str, match: Any = None) -> bool:
        test = match or (lambda pattern, v: pattern == v)
        if any(test(p, value) for p in self.deny):
            return False
        return not self.allow or any(test(p, value) for p in self.allow)


@dataclass(frozen=True, slots=True)
class Policy:
    unit_decimals: int = 6
    per_payment_max: int | None = None
    #: The most one payment may cost in fees (a Tempo transaction's gas limit x
    #: max fee per gas), in the common unit; None: no cap beyond the budgets.
    max_fee: int | None = None
    #: The largest deposit an MPP session channel may hold, in the common unit;
    #: None: no cap beyond the budgets (which hold every deposit while it is out).
    max_channel_deposit: int | None = None
    #: The most MPP session channels the tenant may hold that are not closed (open
    #: or closing); an open past it is refused. None: no cap. Tenant policy only.
    max_open_channels: int | None = None
    budgets: tuple[Budget, ...] = ()
    networks: Lists = Lists()
    assets: tuple[Asset, ...] = ()
    allow_unknown_assets: bool = False
    denied_assets: frozenset[tuple[str, str]] = frozenset()
    payees: Lists = Lists()
    hosts: Lists = Lists()
    # Which protocols to pay, in order of preference, when a 402 offers several.
    protocols: tuple[str, ...] = PROTOCOLS
    # MPP Tempo charges: "pull" (the server broadcasts) or "push" (Teller broadcasts).
    mpp_mode: str = "pull"
    _asset_index: dict[tuple[str, str], Asset] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._asset_index.update({(a.network, a.address): a for a in self.assets})

    def asset(self, network: str, address: str) -> Asset | None:
        return self._asset_index.get((network, address.lower()))


#: What a tenant without a stored policy gets: no limits, but no assets either
#: (unknown assets are denied unless explicitly allowed).
DEFAULT = Policy()


def inherit(wallet: Policy, tenant: Policy) -> Policy:
    """A wallet policy evaluated with its tenant's asset registry and common unit."""
    return replace(wallet, unit_decimals=tenant.unit_decimals, assets=tenant.assets,
                   allow_unknown_assets=tenant.allow_unknown_assets, protocols=tenant.protocols,
                   mpp_mode=tenant.mpp_mode)


@dataclass(frozen=True, slots=True)
class Charge:
    """The facts of one payment that a policy looks at (the database's row for
    a payment made is ``teller.db.models.Payment``)."""

    network: str
    asset: str
    amount: int  # token atomic units
    pay_to: str
    url: str
    #: The most the payment can cost its wallet in fees, in the same token's
    #: atomic units (Tempo fees are paid in the charged TIP-20 token); 0 for
    #: proofs someone else submits.
    fee: int = 0
    #: An MPP session's open: the channel's deposit, which the budgets hold (and
    #: ``max_channel_deposit`` caps), while ``amount`` is one unit's price, which
    #: ``per_payment_max`` and the caller's cap judge as they judge each voucher.
    deposit: int | None = None
    #: An MPP session's open: how many channels the tenant holds that are not
    #: closed, counted under its row lock (``max_open_channels`` caps it).
    open_channels: int | None = None
    #: An MPP session's top-up: the channel's whole deposit once topped up (what
    #: ``max_channel_deposit`` caps), while ``deposit`` is what the top-up adds
    #: (what the budgets hold). None: the deposit is the channel's whole (an open).
    channel_deposit: int | None = None


@dataclass(frozen=True, slots=True)
class Scope:
    name: str  # "tenant" | "wallet"
    policy: Policy
    frozen: bool
    used: Mapping[str, int]


__all__ = ["DEFAULT", "MAX_OPEN_CHANNELS", "MPP_MODES", "PROTOCOLS", "TENANT_ONLY", "Asset", "Budget", "Charge", "Lists", "Policy",
           "Scope", "inherit"]
