"""A policy document read from JSON and written back in canonical form.

``parse`` validates a document into ``teller.spend.rules.Policy`` and names
the field of any problem (``policy.budgets[1].limit: ...``); ``to_document``
is the canonical JSON the store and the audit log keep; ``rules_from`` reads
the stored documents a Sign acts on, each text parsed once. Pure.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from teller import untrusted_json, values
from teller.errors import FailedPrecondition, InvalidArgument
from teller.spend.rules import (
    DEFAULT,
    MAX_OPEN_CHANNELS,
    MPP_MODES,
    PROTOCOLS,
    TENANT_ONLY,
    Asset,
    Budget,
    Lists,
    Policy,
    inherit,
)
from teller.spend.windows import CALENDAR_UNITS
from teller.values import MAX_AMOUNT

# ASCII digits (\d also takes other scripts'), at most 9 of them: read before
# int(), which refuses 4,300+ digits, and well inside a BIGINT in milliseconds.
_DURATION = re.compile(r"^([0-9]{1,9})(s|m|h|d)$")
_DURATION_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_NAME = re.compile(r"^[a-z0-9][-_a-z0-9]{0,31}$")
MAX_LIST = 1000
#: A document of every list at MAX_LIST entries and every asset registered fits.
DOCUMENT_BOUNDS = untrusted_json.Bounds(max_bytes=4 * 1024 * 1024, max_depth=16, max_values=100_000)


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


def _count(doc: Mapping[str, Any], key: str, most: int) -> int | None:
    """A count (an integer, or its decimal string as amounts are written), 0 to ``most``."""
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit() \
            or len(str(value)) > 9 or int(value) > most:
        raise _fail(key, f"must be a whole number from 0 to {most}")
    return int(value)


_TOP = {"unit_decimals", "per_payment_max", "max_fee", "max_channel_deposit", "max_open_channels", "budgets", "networks", "assets",
        "allow_unknown_assets", "deny_assets", "payees", "hosts", "protocols", "mpp_mode"}


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
    max_deposit = _amount(doc, "max_channel_deposit", "max_channel_deposit")
    max_channels = _count(doc, "max_open_channels", MAX_OPEN_CHANNELS)

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
        max_channel_deposit=max_deposit,
        max_open_channels=max_channels,
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
    if p.max_channel_deposit is not None:
        doc["max_channel_deposit"] = str(p.max_channel_deposit)
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
        if p.max_open_channels is not None:
            doc["max_open_channels"] = p.max_open_channels
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


@functools.lru_cache(maxsize=4096)
def parsed(document: str, wallet: bool) -> Policy:
    """Policies are stored canonical and re-read on every Sign; parse each text once.
    One stored before values were canonical that no longer reads (migration 0006
    flags it) refuses every payment until the operator sets a new one."""
    try:
        return parse(document, wallet=wallet)
    except InvalidArgument as exc:
        raise FailedPrecondition(f"the stored {'wallet' if wallet else 'tenant'} policy must be set again by the "
                                 f"operator: {exc.message}", reason="policy_needs_review") from None


@dataclass(frozen=True, slots=True)
class Rules:
    tenant: Policy
    wallet: Policy | None  # already carrying the tenant's asset registry


def rules_from(tenant_doc: str | None, wallet_doc: str | None) -> Rules:
    """Rules from the stored documents (read by the caller, e.g. with its lock)."""
    tenant = parsed(tenant_doc, False) if tenant_doc is not None else DEFAULT
    return Rules(tenant, inherit(parsed(wallet_doc, True), tenant) if wallet_doc is not None else None)


__all__ = ["DOCUMENT_BOUNDS", "MAX_LIST", "Rules", "parse", "parse_duration", "parsed", "rules_from", "to_document"]
