"""The spend policy engine's pure core: documents, windows and decisions.

A policy document (JSON) is parsed once into frozen values; evaluation takes
the payment, the usage already recorded in each window and the freeze flags,
and returns a ``Decision`` with a stable reason code. No I/O here: the
database side (teller.spend) supplies usage and records the outcome.

Amounts are compared in a common unit: each allowed asset is registered with
its decimals, and raw token amounts are scaled to ``unit_decimals`` (rounding
up, so a payment never counts for less than it is).
"""

from __future__ import annotations

import calendar
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from teller import untrusted_json, values
from teller.errors import (
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    PermissionDenied,
    TellerError,
)
from teller.values import MAX_AMOUNT

CALENDAR_UNITS = ("hour", "day", "week", "month")
# ASCII digits (\d also takes other scripts'), at most 9 of them: read before
# int(), which refuses 4,300+ digits, and well inside a BIGINT in milliseconds.
_DURATION = re.compile(r"^([0-9]{1,9})(s|m|h|d)$")
_DURATION_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_NAME = re.compile(r"^[a-z0-9][-_a-z0-9]{0,31}$")
MAX_LIST = 1000
#: A document of every list at MAX_LIST entries and every asset registered fits.
DOCUMENT_BOUNDS = untrusted_json.Bounds(max_bytes=4 * 1024 * 1024, max_depth=16, max_values=100_000)


# --- the document -------------------------------------------------------------

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
    budgets: tuple[Budget, ...] = ()
    networks: Lists = Lists()
    assets: tuple[Asset, ...] = ()
    allow_unknown_assets: bool = False
    denied_assets: frozenset[tuple[str, str]] = frozenset()
    payees: Lists = Lists()
    hosts: Lists = Lists()
    # Which protocols to pay, in order of preference, when a 402 offers several.
    protocols: tuple[str, ...] = ("x402", "mpp")
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


def _fail(path: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"policy.{path}: {problem}")


def _amount(doc: Mapping[str, Any], key: str, path: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise _fail(path, "must be a non-negative integer (string) in the common unit")
    number = int(value)
    if number > MAX_AMOUNT:
        raise _fail(path, f"must be at most {MAX_AMOUNT}")
    return number


def _strings(doc: Mapping[str, Any], key: str, path: str) -> list[str]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, "must be a list of strings")
    if len(value) > MAX_LIST:
        raise _fail(path, f"has more than {MAX_LIST} entries")
    return value


def _lists(doc: Mapping[str, Any], key: str, check: Any) -> Lists:
    section = doc.get(key, {})
    if not isinstance(section, dict):
        raise _fail(key, "must be an object with 'allow' and/or 'deny'")
    unknown = set(section) - {"allow", "deny"}
    if unknown:
        raise _fail(f"{key}.{sorted(unknown)[0]}", "unknown field")
    out: dict[str, frozenset[str]] = {}
    for which in ("allow", "deny"):
        items = _strings(section, which, f"{key}.{which}")
        out[which] = frozenset(check(item, f"{key}.{which}[{i}]") for i, item in enumerate(items))
    return Lists(out["allow"], out["deny"])


def _object(value: Any, path: str, fields: set[str]) -> None:
    if not isinstance(value, dict):
        raise _fail(path, f"must be an object with {', '.join(sorted(fields))}")
    extra = set(value) - fields
    if extra:
        raise _fail(f"{path}.{sorted(extra)[0]}", "unknown field")


def _text(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    return value if isinstance(value, str) else ""


# Lists and the asset registry hold canonical values only (teller.values), the
# same form the parsers give a payment's facts: a spelling the signature reads
# as the same chain, address or host is the same entry here.

def _network(value: str, path: str) -> str:
    try:
        return values.network(value, path)
    except values.NotCanonical as exc:
        raise _fail(path, f"{value[:80]!r} {exc.problem}") from None


def _address(value: str, path: str) -> str:
    try:
        return values.address(value, path).lower()
    except values.NotCanonical as exc:
        raise _fail(path, f"{value[:80]!r} {exc.problem}") from None


def _host(value: str, path: str) -> str:
    wildcard = value.startswith("*.")
    try:
        host = values.host(value[2:] if wildcard else value, path)
    except values.NotCanonical as exc:
        raise _fail(path, f"{value[:80]!r} {exc.problem} (want a host name, an IP address or a '*.domain' "
                          "pattern)") from None
    if wildcard and values.is_ip(host):
        raise _fail(path, f"{value[:80]!r}: a '*.' pattern needs a domain name, not an address")
    return f"*.{host}" if wildcard else host


def parse_duration(text: str, path: str) -> int:
    m = _DURATION.match(text)
    if not m or int(m.group(1)) == 0:
        raise _fail(path, f"{text[:40]!r} is not a duration like '90s', '15m', '1h', '30d'")
    return int(m.group(1)) * _DURATION_MS[m.group(2)]


_TOP = {"unit_decimals", "per_payment_max", "max_fee", "budgets", "networks", "assets", "allow_unknown_assets",
        "deny_assets", "payees", "hosts", "protocols", "mpp_mode"}
PROTOCOLS = ("x402", "mpp")
MPP_MODES = ("pull", "push")


#: Fields only a tenant policy may set: wallets share their tenant's asset registry and unit.
TENANT_ONLY = ("unit_decimals", "assets", "allow_unknown_assets", "protocols", "mpp_mode")


def inherit(wallet: Policy, tenant: Policy) -> Policy:
    """A wallet policy evaluated with its tenant's asset registry and common unit."""
    return replace(wallet, unit_decimals=tenant.unit_decimals, assets=tenant.assets,
                   allow_unknown_assets=tenant.allow_unknown_assets, protocols=tenant.protocols,
                   mpp_mode=tenant.mpp_mode)


def parse(doc: Any, *, wallet: bool = False) -> Policy:
    """Validate a policy document; errors name the field (``policy.budgets[1].limit: ...``)."""
    if isinstance(doc, (str, bytes)):
        doc = untrusted_json.loads(doc or "{}", "policy", DOCUMENT_BOUNDS)
    if not isinstance(doc, dict):
        raise InvalidArgument("policy must be a JSON object")
    unknown = set(doc) - _TOP
    if unknown:
        raise _fail(sorted(unknown)[0], "unknown field")
    if wallet:
        for key in TENANT_ONLY:
            if key in doc:
                raise _fail(key, "can only be set on the tenant policy (wallets use the tenant's assets)")
    unit = doc.get("unit_decimals", 6)
    if isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit <= 18:
        raise _fail("unit_decimals", "must be an integer from 0 to 18")
    per_payment = _amount(doc, "per_payment_max", "per_payment_max")
    max_fee = _amount(doc, "max_fee", "max_fee")

    raw_budgets = doc.get("budgets", [])
    if not isinstance(raw_budgets, list) or len(raw_budgets) > 16:
        raise _fail("budgets", "must be a list of at most 16 budgets")
    budgets: list[Budget] = []
    for i, b in enumerate(raw_budgets):
        path = f"budgets[{i}]"
        _object(b, path, {"name", "limit", "window", "kind"})
        kind = b.get("kind", "calendar")
        window = b.get("window")
        if not isinstance(window, str):
            raise _fail(f"{path}.window", "is required")
        if kind == "calendar":
            if window not in CALENDAR_UNITS:
                raise _fail(f"{path}.window", f"calendar windows are {', '.join(CALENDAR_UNITS)}; got {window[:40]!r}")
            budget = Budget("", 0, calendar=window)
        elif kind == "rolling":
            budget = Budget("", 0, rolling_ms=parse_duration(window, f"{path}.window"))
        else:
            raise _fail(f"{path}.kind", "must be 'calendar' or 'rolling'")
        name = b.get("name", f"{window}" if kind == "calendar" else f"rolling_{window}")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _fail(f"{path}.name", "must be 1-32 characters of a-z, 0-9, '-' or '_'")
        limit = _amount(b, "limit", f"{path}.limit")
        if limit is None:
            raise _fail(f"{path}.limit", "is required")
        if per_payment is not None and limit < per_payment:
            raise _fail(f"{path}.limit", f"{limit} is smaller than per_payment_max {per_payment}")
        budgets.append(Budget(name, limit, budget.calendar, budget.rolling_ms))
    names = [b.name for b in budgets]
    if len(set(names)) != len(names):
        raise _fail("budgets", "budget names must be unique")

    raw_assets = doc.get("assets", [])
    if not isinstance(raw_assets, list) or len(raw_assets) > MAX_LIST:
        raise _fail("assets", f"must be a list of at most {MAX_LIST} assets")
    assets: list[Asset] = []
    for i, a in enumerate(raw_assets):
        path = f"assets[{i}]"
        _object(a, path, {"network", "address", "decimals", "symbol"})
        network = _network(_text(a, "network"), f"{path}.network")
        address = _address(_text(a, "address"), f"{path}.address")
        decimals = a.get("decimals")
        if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 36:
            raise _fail(f"{path}.decimals", "must be an integer from 0 to 36")
        assets.append(Asset(network, address, decimals))
    if len({(a.network, a.address) for a in assets}) != len(assets):
        raise _fail("assets", "an asset is listed twice")

    allow_unknown = doc.get("allow_unknown_assets", False)
    if not isinstance(allow_unknown, bool):
        raise _fail("allow_unknown_assets", "must be true or false")
    denied: set[tuple[str, str]] = set()
    raw_denied = doc.get("deny_assets", [])
    if not isinstance(raw_denied, list) or len(raw_denied) > MAX_LIST:
        raise _fail("deny_assets", "must be a list of {network, address}")
    for i, a in enumerate(raw_denied):
        _object(a, f"deny_assets[{i}]", {"network", "address"})
        denied.add((
            _network(_text(a, "network"), f"deny_assets[{i}].network"),
            _address(_text(a, "address"), f"deny_assets[{i}].address"),
        ))

    protocols = doc.get("protocols", list(PROTOCOLS))
    if (not isinstance(protocols, list) or not protocols or any(p not in PROTOCOLS for p in protocols)
            or len(set(protocols)) != len(protocols)):
        raise _fail("protocols", f"must list protocols to pay in order of preference, from {list(PROTOCOLS)}")
    mpp_mode = doc.get("mpp_mode", "pull")
    if mpp_mode not in MPP_MODES:
        raise _fail("mpp_mode", f"must be one of {list(MPP_MODES)}")

    return Policy(
        unit_decimals=unit,
        per_payment_max=per_payment,
        max_fee=max_fee,
        budgets=tuple(budgets),
        networks=_lists(doc, "networks", _network),
        assets=tuple(assets),
        allow_unknown_assets=allow_unknown,
        denied_assets=frozenset(denied),
        payees=_lists(doc, "payees", _address),
        hosts=_lists(doc, "hosts", _host),
        protocols=tuple(protocols),
        mpp_mode=mpp_mode,
    )


def to_document(p: Policy, *, wallet: bool = False) -> dict[str, Any]:
    """The canonical JSON form (what GetPolicy returns and the audit log records)."""
    doc: dict[str, Any] = {} if wallet else {"unit_decimals": p.unit_decimals}
    if p.per_payment_max is not None:
        doc["per_payment_max"] = str(p.per_payment_max)
    if p.max_fee is not None:
        doc["max_fee"] = str(p.max_fee)
    doc["budgets"] = [
        {"name": b.name, "kind": "rolling" if b.rolling_ms else "calendar", "limit": str(b.limit),
         "window": b.calendar or _format_duration(b.rolling_ms)}
        for b in p.budgets
    ]
    if not wallet:
        doc["assets"] = [{"network": a.network, "address": a.address, "decimals": a.decimals} for a in p.assets]
        doc["allow_unknown_assets"] = p.allow_unknown_assets
        if p.protocols != PROTOCOLS:
            doc["protocols"] = list(p.protocols)
        if p.mpp_mode != "pull":
            doc["mpp_mode"] = p.mpp_mode
    doc["deny_assets"] = [{"network": n, "address": a} for n, a in sorted(p.denied_assets)]
    for key in ("networks", "payees", "hosts"):
        lists: Lists = getattr(p, key)
        doc[key] = {"allow": sorted(lists.allow), "deny": sorted(lists.deny)}
    return doc


def _format_duration(ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if ms % _DURATION_MS[unit] == 0:
            return f"{ms // _DURATION_MS[unit]}{unit}"
    raise ValueError(ms)


def calendar_bounds(unit: str, now_ms: int) -> tuple[int, int]:
    t = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    if unit == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        return _ms(start), _ms(start) + 3_600_000
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return _ms(day), _ms(day) + 86_400_000
    if unit == "week":  # ISO weeks start on Monday
        start_ms = _ms(day) - day.weekday() * 86_400_000
        return start_ms, start_ms + 7 * 86_400_000
    if unit == "month":
        first = day.replace(day=1)
        days = calendar.monthrange(first.year, first.month)[1]
        return _ms(first), _ms(first) + days * 86_400_000
    raise ValueError(unit)


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


# --- evaluation ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Payment:
    """The facts of one payment that a policy looks at."""

    network: str
    asset: str
    amount: int  # token atomic units
    pay_to: str
    url: str
    #: The most the payment can cost its wallet in fees, in the same token's
    #: atomic units (Tempo fees are paid in the charged TIP-20 token); 0 for
    #: proofs someone else submits.
    fee: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = "ok"
    scope: str = ""  # "tenant" or "wallet"
    limit: int | None = None
    remaining: int | None = None
    window: str = ""
    #: What the payment holds against budgets: its amount and its fee at most.
    amount_common: int = 0
    fee_common: int = 0

    def error(self, payment: Payment) -> TellerError:
        meta = {"reason": self.reason, "amount": str(payment.amount)}
        if self.scope:
            meta["scope"] = self.scope
        if self.limit is not None:
            meta["limit"] = str(self.limit)
        if self.remaining is not None:
            meta["remaining"] = str(self.remaining)
        if self.window:
            meta["window"] = self.window
        where = f"{self.scope} " if self.scope else ""
        if self.reason == "per_payment_max":
            text = f"amount {self.amount_common} is above the {where}per-payment maximum {self.limit}"
        elif self.reason == "max_fee":
            text = (f"the fee this payment can cost, {self.fee_common}, is above the {where}policy's max_fee "
                    f"{self.limit}")
            meta["fee"] = str(payment.fee)
        elif self.reason == "caller_max_amount":
            text = f"amount {payment.amount} is above the caller's max_amount {self.limit}"
        elif self.reason == "amount_out_of_range":
            text = (f"amount {payment.amount} is {self.amount_common} in the {where}policy's common unit, more "
                    f"than the ledger counts ({self.limit})")
            return FailedPrecondition(text, reason=self.reason, metadata=meta)
        elif self.reason.startswith("budget_exhausted:"):
            cost = (f"amount {self.amount_common - self.fee_common} + fee up to {self.fee_common}"
                    if self.fee_common else f"amount {self.amount_common}")
            text = (f"{cost} exceeds the {where}budget {self.window!r}: "
                    f"{self.remaining} of {self.limit} left")
        else:
            text = {
                "frozen": f"the {where}is frozen",
                "network_not_allowed": f"network {payment.network} is not allowed by the {where}policy",
                "asset_not_allowed": f"asset {payment.asset} on {payment.network} is not allowed by the {where}policy",
                "payee_not_allowed": f"payee {payment.pay_to} is not allowed by the {where}policy",
                "host_not_allowed": f"host of {payment.url[:200]!r} is not allowed by the {where}policy",
            }.get(self.reason, self.reason)
        cls = LimitExceeded if self.reason in ("per_payment_max", "caller_max_amount", "max_fee") or \
            self.reason.startswith("budget_exhausted:") else PermissionDenied
        return cls(text, reason=self.reason, metadata=meta)


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


def common_amount(p: Policy, payment: Payment, amount: int | None = None) -> int | None:
    """The payment (or ``amount`` of its asset) in the policy's common unit, or
    None when the asset is not allowed."""
    amount = payment.amount if amount is None else amount
    asset = p.asset(payment.network, payment.asset)
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
    p: Policy, scope: str, payment: Payment, used: Mapping[str, int], frozen: bool
) -> Decision:
    """One scope's decision (tenant or wallet). ``used[budget.name]`` is what the
    window already holds (signed + settled), in the common unit."""
    if frozen:
        return Decision(False, "frozen", scope)
    if not p.networks.permits(payment.network):
        return Decision(False, "network_not_allowed", scope)
    if (payment.network, payment.asset.lower()) in p.denied_assets:
        return Decision(False, "asset_not_allowed", scope)
    amount = common_amount(p, payment)
    if amount is None:
        return Decision(False, "asset_not_allowed", scope)
    if amount > MAX_AMOUNT or payment.amount > MAX_AMOUNT:
        # The ledger (a 64-bit column on PostgreSQL and SQLite alike) cannot count it.
        return Decision(False, "amount_out_of_range", scope, MAX_AMOUNT, amount_common=amount)
    if not p.payees.permits(payment.pay_to.lower()):
        return Decision(False, "payee_not_allowed", scope)
    host = url_host(payment.url)
    # A URL without a readable host passes only a policy that names no hosts.
    if (host is None and (p.hosts.allow or p.hosts.deny)) or not p.hosts.permits(host or "", host_matches):
        return Decision(False, "host_not_allowed", scope)
    if p.per_payment_max is not None and amount > p.per_payment_max:
        return Decision(False, "per_payment_max", scope, p.per_payment_max, amount_common=amount)
    fee = common_amount(p, payment, payment.fee) or 0
    if p.max_fee is not None and fee > p.max_fee:
        return Decision(False, "max_fee", scope, p.max_fee, amount_common=amount + fee, fee_common=fee)
    # Budgets hold every cost of the payment: its amount and the most its fee can be.
    total = amount + fee
    for b in p.budgets:
        remaining = max(b.limit - used.get(b.name, 0), 0)
        if total > remaining:
            return Decision(False, f"budget_exhausted:{b.name}", scope, b.limit, remaining, b.name, total, fee)
    return Decision(True, "ok", scope, amount_common=total, fee_common=fee)


@dataclass(frozen=True, slots=True)
class Scope:
    name: str  # "tenant" | "wallet"
    policy: Policy
    frozen: bool
    used: Mapping[str, int]


def evaluate(scopes: Sequence[Scope], payment: Payment, caller_cap: int | None = None) -> Decision:
    """Every scope must allow the payment (the stricter wins). The amount recorded
    against budgets is the tenant scope's common amount."""
    if caller_cap is not None and payment.amount > caller_cap:
        return Decision(False, "caller_max_amount", limit=caller_cap)
    allowed: Decision | None = None
    for scope in scopes:
        d = evaluate_scope(scope.policy, scope.name, payment, scope.used, scope.frozen)
        if not d.allowed:
            return d
        allowed = allowed or d
    return allowed or Decision(True)
