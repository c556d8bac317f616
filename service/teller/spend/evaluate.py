"""Judging one charge against the rules: every scope (the tenant's policy, and
the wallet's when it has one or is frozen) must allow it. Pure: the windows'
usage comes in with each ``Scope``; the database side is ``teller.spend.ledger``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from teller import values
from teller.spend.decision import Decision, DenialReason, budget_exhausted
from teller.spend.rules import Charge, Policy, Scope
from teller.values import MAX_AMOUNT


def host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


@functools.lru_cache(maxsize=4096)
def url_host(url: str) -> str | None:
    """The URL's host in canonical form (as the fetcher reaches it), or None
    when it has none Teller could reach. Cached: a Sign evaluates it for each
    scope and offer, and callers pay the same few URLs over and over."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        return values.host(host, "url")
    except values.NotCanonical:
        return None


def common_amount(p: Policy, charge: Charge, amount: int | None = None) -> int | None:
    """The charge (or ``amount`` of its asset) in the policy's common unit, or
    None when the asset is not allowed."""
    amount = charge.amount if amount is None else amount
    asset = p.asset(charge.network, charge.asset)
    if asset is None:
        if not p.allow_unknown_assets:
            return None
        decimals = p.unit_decimals
    else:
        decimals = asset.decimals
    shift = p.unit_decimals - decimals
    if shift >= 0:
        return amount * 10**shift
    return -(-amount // 10**-shift)  # round up


def evaluate_scope(
    p: Policy, scope: str, charge: Charge, used: Mapping[str, int], frozen: bool
) -> Decision:
    """One scope's decision (tenant or wallet). ``used[budget.name]`` is what the
    window already holds (signed + settled), in the common unit."""
    if frozen:
        return Decision(False, DenialReason.FROZEN, scope)
    if not p.networks.permits(charge.network):
        return Decision(False, DenialReason.NETWORK_NOT_ALLOWED, scope)
    if (charge.network, charge.asset.lower()) in p.denied_assets:
        return Decision(False, DenialReason.ASSET_NOT_ALLOWED, scope)
    amount = common_amount(p, charge)
    if amount is None:
        return Decision(False, DenialReason.ASSET_NOT_ALLOWED, scope)
    if amount > MAX_AMOUNT or charge.amount > MAX_AMOUNT:
        # The ledger (a 64-bit column on PostgreSQL and SQLite alike) cannot count it.
        return Decision(False, DenialReason.AMOUNT_OUT_OF_RANGE, scope, MAX_AMOUNT, amount_common=amount)
    if not p.payees.permits(charge.pay_to.lower()):
        return Decision(False, DenialReason.PAYEE_NOT_ALLOWED, scope)
    host = url_host(charge.url)
    # A URL without a readable host passes only a policy that names no hosts.
    if (host is None and (p.hosts.allow or p.hosts.deny)) or not p.hosts.permits(host or "", host_matches):
        return Decision(False, DenialReason.HOST_NOT_ALLOWED, scope)
    if p.per_payment_max is not None and amount > p.per_payment_max:
        return Decision(False, DenialReason.PER_PAYMENT_MAX, scope, p.per_payment_max, amount_common=amount)
    if charge.deposit is not None:
        # A channel's open: the budgets hold its whole deposit, rounded up like any amount.
        amount = common_amount(p, charge, charge.deposit) or 0
        if amount > MAX_AMOUNT or charge.deposit > MAX_AMOUNT:
            return Decision(False, DenialReason.AMOUNT_OUT_OF_RANGE, scope, MAX_AMOUNT, amount_common=amount)
        whole = amount if charge.channel_deposit is None else common_amount(p, charge, charge.channel_deposit) or 0
        if p.max_channel_deposit is not None and whole > p.max_channel_deposit:
            return Decision(False, DenialReason.MAX_CHANNEL_DEPOSIT, scope, p.max_channel_deposit,
                            amount_common=whole)
        if (p.max_open_channels is not None and charge.open_channels is not None
                and charge.open_channels >= p.max_open_channels):
            return Decision(False, DenialReason.MAX_OPEN_CHANNELS, scope, p.max_open_channels, 0,
                            amount_common=amount)
    fee = common_amount(p, charge, charge.fee) or 0
    if p.max_fee is not None and fee > p.max_fee:
        return Decision(False, DenialReason.MAX_FEE, scope, p.max_fee, amount_common=amount + fee, fee_common=fee)
    # Budgets hold every cost of the payment: its amount and the most its fee can be.
    total = amount + fee
    for b in p.budgets:
        remaining = max(b.limit - used.get(b.name, 0), 0)
        if total > remaining:
            return Decision(False, budget_exhausted(b.name), scope, b.limit, remaining, b.name, total, fee)
    return Decision(True, "ok", scope, amount_common=total, fee_common=fee)


def channel_room(p: Policy, charge: Charge, deposit: int) -> int | None:
    """How many of the charge's token units ``max_channel_deposit`` lets a channel
    holding ``deposit`` add (None: no cap). The inverse of ``common_amount``'s
    rounding up, so the whole deposit never passes the cap once converted."""
    if p.max_channel_deposit is None:
        return None
    asset = p.asset(charge.network, charge.asset)
    shift = p.unit_decimals - (p.unit_decimals if asset is None else asset.decimals)
    most = p.max_channel_deposit // 10**shift if shift >= 0 else p.max_channel_deposit * 10**-shift
    return max(most - deposit, 0)


def evaluate(scopes: Sequence[Scope], charge: Charge, caller_cap: int | None = None) -> Decision:
    """Every scope must allow the charge (the stricter wins). The amount recorded
    against budgets is the tenant scope's common amount."""
    if caller_cap is not None and charge.amount > caller_cap:
        return Decision(False, DenialReason.CALLER_MAX_AMOUNT, limit=caller_cap)
    allowed: Decision | None = None
    for scope in scopes:
        d = evaluate_scope(scope.policy, scope.name, charge, scope.used, scope.frozen)
        if not d.allowed:
            return d
        allowed = allowed or d
    return allowed or Decision(True)


__all__ = ["channel_room", "common_amount", "evaluate", "evaluate_scope", "host_matches", "url_host"]
