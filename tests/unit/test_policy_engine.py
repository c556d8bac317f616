"""The pure policy core: parsing with named errors, windows, and Hypothesis
properties that no stream of payments ever exceeds any window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teller.errors import InvalidArgument, LimitExceeded, PermissionDenied
from teller.spend.evaluate import evaluate, evaluate_scope
from teller.spend.parse import parse, to_document
from teller.spend.rules import Charge, Scope, inherit
from teller.spend.windows import CALENDAR_UNITS, calendar_bounds

USDC = "0x036cbd53842c5426634e7929541ec2318f3dcf7e"
DAI = "0x6b175474e89094c44da98b954eedeac495271d0f"
PAYEE = "0x209693bc6afc0c5328ba36faf03c514ef312287c"


def pay(amount=1000, network="eip155:84532", asset=USDC, pay_to=PAYEE, url="https://api.example.com/x"):
    return Charge(network, asset, amount, pay_to, url)


def doc(**kw):
    base = {"assets": [{"network": "eip155:84532", "address": USDC, "decimals": 6}]}
    base.update(kw)
    return base


@pytest.mark.parametrize(
    ("document", "needle"),
    [
        ({"budgets": [{"window": "day", "limit": "5"}], "per_payment_max": "10"}, "policy.budgets[0].limit: 5 is smaller than per_payment_max"),
        ({"networks": {"allow": ["base"]}}, "policy.networks.allow[0]: 'base' is not a CAIP-2 network id"),
        ({"networks": {"allow": ["eip155:abc"]}}, "policy.networks.allow[0]"),
        ({"payees": {"deny": ["0x1234"]}}, "policy.payees.deny[0]: '0x1234' is not a valid EVM address"),
        ({"assets": [{"network": "eip155:1", "address": "0xzz", "decimals": 6}]}, "policy.assets[0].address"),
        ({"assets": [{"network": "eip155:1", "address": USDC, "decimals": 99}]}, "policy.assets[0].decimals"),
        ({"budgets": [{"window": "fortnight", "limit": "5"}]}, "policy.budgets[0].window: calendar windows are"),
        ({"budgets": [{"window": "5x", "kind": "rolling", "limit": "5"}]}, "policy.budgets[0].window: '5x' is not a duration"),
        ({"budgets": [{"window": "day", "kind": "sliding", "limit": "5"}]}, "policy.budgets[0].kind"),
        ({"budgets": [{"window": "day"}]}, "policy.budgets[0].limit: is required"),
        ({"budgets": [{"window": "day", "limit": "1.5"}]}, "policy.budgets[0].limit: must be a non-negative integer"),
        ({"budgets": [{"window": "day", "limit": "1"}, {"window": "day", "limit": "2"}]}, "budget names must be unique"),
        ({"hosts": {"allow": ["exa mple.com"]}}, "policy.hosts.allow[0]"),
        ({"per_payment_max": 2**64}, "policy.per_payment_max: must be at most"),
        ({"colour": "red"}, "policy.colour: unknown field"),
    ],
)
def test_invalid_documents_name_the_field(document, needle):
    with pytest.raises(InvalidArgument) as info:
        parse(document)
    assert needle in info.value.message


def test_wallet_policies_cannot_define_assets():
    with pytest.raises(InvalidArgument, match=r"policy\.assets: can only be set on the tenant policy"):
        parse(doc(), wallet=True)


def test_canonical_document_round_trips():
    p = parse(doc(per_payment_max="10", budgets=[{"window": "1h", "kind": "rolling", "limit": "100"}],
                         hosts={"allow": ["*.Example.com"]}, payees={"deny": [PAYEE.upper().replace("0X", "0x")]}))
    assert parse(to_document(p)) == p


def test_calendar_windows_are_utc_aligned():
    # 2026-11-21 13:45:10 UTC, a Saturday
    now = 1_795_268_710_000
    assert calendar_bounds("hour", now) == (1_795_266_000_000, 1_795_269_600_000)
    assert calendar_bounds("day", now) == (1_795_219_200_000, 1_795_305_600_000)
    assert calendar_bounds("week", now)[0] == 1_795_219_200_000 - 5 * 86_400_000  # Monday
    start, end = calendar_bounds("month", now)
    assert (end - start) == 30 * 86_400_000  # November


@pytest.mark.parametrize(
    ("document", "payment", "reason", "error"),
    [
        (doc(networks={"allow": ["eip155:8453"]}), pay(), "network_not_allowed", PermissionDenied),
        (doc(networks={"deny": ["eip155:84532"]}), pay(), "network_not_allowed", PermissionDenied),
        ({"assets": []}, pay(), "asset_not_allowed", PermissionDenied),
        (doc(allow_unknown_assets=True, deny_assets=[{"network": "eip155:84532", "address": USDC}]), pay(),
         "asset_not_allowed", PermissionDenied),
        (doc(payees={"allow": [DAI]}), pay(), "payee_not_allowed", PermissionDenied),
        (doc(payees={"deny": [PAYEE]}), pay(), "payee_not_allowed", PermissionDenied),
        (doc(hosts={"allow": ["*.example.org"]}), pay(), "host_not_allowed", PermissionDenied),
        (doc(hosts={"deny": ["*.example.com"]}), pay(), "host_not_allowed", PermissionDenied),
        (doc(per_payment_max="999"), pay(), "per_payment_max", LimitExceeded),
        (doc(budgets=[{"name": "h", "window": "1h", "kind": "rolling", "limit": "999"}]), pay(),
         "budget_exhausted:h", LimitExceeded),
    ],
)
def test_denials_have_stable_reasons_and_statuses(document, payment, reason, error):
    d = evaluate([Scope("tenant", parse(document), False, {})], payment)
    assert (d.allowed, d.reason) == (False, reason)
    err = d.error(payment)
    assert isinstance(err, error) and err.reason == reason and err.metadata["reason"] == reason


def test_host_wildcards_match_subdomains_only():
    p = parse(doc(hosts={"allow": ["*.example.com", "api.other.io"]}))
    ok = [pay(url=u) for u in ("https://a.example.com/x", "https://a.b.example.com/", "http://API.other.io/")]
    bad = [pay(url=u) for u in ("https://example.com/", "https://evilexample.com/", "https://x.other.io/", "not a url")]
    assert all(evaluate_scope(p, "tenant", x, {}, False).allowed for x in ok)
    assert not any(evaluate_scope(p, "tenant", x, {}, False).allowed for x in bad)


def test_amounts_of_different_decimals_compare_in_the_common_unit():
    p = parse({"assets": [{"network": "eip155:1", "address": USDC, "decimals": 6},
                                 {"network": "eip155:1", "address": DAI, "decimals": 18}],
                      "per_payment_max": "1000000"})  # one dollar in 6 decimals
    one_usdc = pay(1_000_000, "eip155:1", USDC)
    one_dai = pay(10**18, "eip155:1", DAI)
    a_bit_more_dai = pay(10**18 + 1, "eip155:1", DAI)  # rounds up, never down
    assert evaluate_scope(p, "t", one_usdc, {}, False).amount_common == 1_000_000
    assert evaluate_scope(p, "t", one_dai, {}, False).amount_common == 1_000_000
    assert evaluate_scope(p, "t", a_bit_more_dai, {}, False).reason == "per_payment_max"


def test_stricter_of_tenant_and_wallet_applies_and_freezes_win():
    tenant = parse(doc(per_payment_max="5000"))
    wallet = inherit(parse({"per_payment_max": "500"}, wallet=True), tenant)
    d = evaluate([Scope("tenant", tenant, False, {}), Scope("wallet", wallet, False, {})], pay(1000))
    assert (d.reason, d.scope, d.limit) == ("per_payment_max", "wallet", 500)
    frozen = evaluate([Scope("tenant", tenant, False, {}), Scope("wallet", wallet, True, {})], pay(10))
    assert (frozen.reason, frozen.scope) == ("frozen", "wallet")
    assert evaluate([Scope("tenant", tenant, True, {})], pay(10)).reason == "frozen"


# --- properties ---------------------------------------------------------------

budget_st = st.one_of(
    st.builds(lambda lim, w: {"window": w, "kind": "calendar", "limit": str(lim)},
              st.integers(0, 50_000), st.sampled_from(CALENDAR_UNITS)),
    st.builds(lambda lim, n, u: {"window": f"{n}{u}", "kind": "rolling", "limit": str(lim)},
              st.integers(0, 50_000), st.integers(1, 90), st.sampled_from("smhd")),
)


@st.composite
def policies(draw):
    budgets = draw(st.lists(budget_st, max_size=4))
    for i, b in enumerate(budgets):
        b["name"] = f"b{i}"
    d = doc(budgets=budgets)
    if draw(st.booleans()) and budgets:
        d["per_payment_max"] = str(draw(st.integers(0, min(int(b["limit"]) for b in budgets))))
    return parse(d)


@settings(max_examples=300, deadline=None)
@given(
    p=policies(),
    stream=st.lists(st.tuples(st.integers(1, 20_000), st.integers(0, 7_200_000)), max_size=60),
)
def test_no_payment_stream_ever_exceeds_any_window(p, stream):
    """Replay payments at increasing times against an in-memory ledger; at every
    moment, every budget's current window holds no more than its limit."""
    now = 1_795_268_710_000
    ledger: list[tuple[int, int]] = []  # (time, common amount)
    for amount, gap in stream:
        now += gap
        used = {}
        for b in p.budgets:
            start, end = b.bounds(now)
            used[b.name] = sum(a for t, a in ledger if start <= t < end)
        d = evaluate([Scope("tenant", p, False, used)], pay(amount))
        if d.allowed:
            ledger.append((now, d.amount_common))
            assert p.per_payment_max is None or d.amount_common <= p.per_payment_max
        for b in p.budgets:
            start, end = b.bounds(now)
            assert sum(a for t, a in ledger if start <= t < end) <= b.limit
        # and a denial is never a false one: had it fit everywhere it would have passed
        if not d.allowed and d.reason.startswith("budget_exhausted:"):
            b = next(b for b in p.budgets if b.name == d.window)
            assert d.amount_common > b.limit - used[b.name]


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["budgets", "assets", "networks", "payees", "hosts", "per_payment_max",
                                         "window", "limit", "kind", "allow", "deny", "address", "network",
                                         "decimals", "name", "unit_decimals", "x"]), inner, max_size=5),
                    max_leaves=20))
def test_arbitrary_documents_parse_or_fail_cleanly(document):
    try:
        parse(document)
    except InvalidArgument as exc:
        assert exc.message.startswith("policy")


def test_a_channel_open_is_judged_per_unit_and_held_at_its_deposit():
    """An MPP session's open: per_payment_max and the caller's cap judge one unit's
    price (as they judge each voucher); max_channel_deposit caps the deposit; the
    budgets hold the whole deposit, rounded up into the common unit."""
    p = parse(doc(per_payment_max="100", max_channel_deposit="250000",
                  budgets=[{"window": "day", "limit": "300000"}]))
    opening = Charge("eip155:84532", USDC, 100, PAYEE, "https://api.example.com/x", fee=7, deposit=200_000)
    d = evaluate_scope(p, "t", opening, {}, False)
    assert d.allowed and (d.amount_common, d.fee_common) == (200_007, 7)
    assert evaluate_scope(p, "t", Charge(**{**_fields(opening), "amount": 101}), {}, False).reason == "per_payment_max"
    too_deep = evaluate_scope(p, "t", Charge(**{**_fields(opening), "deposit": 250_001}), {}, False)
    assert (too_deep.reason, too_deep.limit) == ("max_channel_deposit", 250_000)
    assert isinstance(too_deep.error(opening), LimitExceeded)
    # The budget sees the deposit, not the unit: 100,000 already used leaves less than 200,007.
    assert evaluate_scope(p, "t", opening, {"day": 100_000}, False).reason == "budget_exhausted:day"
    assert evaluate([Scope("tenant", p, False, {})], opening, caller_cap=99).reason == "caller_max_amount"
    assert to_document(parse(to_document(p)))["max_channel_deposit"] == "250000"


def test_max_open_channels_caps_a_channels_open_and_nothing_else():
    """``max_open_channels``: an open is refused once the tenant holds that many
    channels not closed (counted by the batch); other payments never carry a count.
    A whole number, written canonically as one; tenant policy only."""
    p = parse(doc(max_open_channels="2"))
    assert p.max_open_channels == 2 and to_document(p)["max_open_channels"] == 2
    assert parse(to_document(p)) == p and parse(doc(max_open_channels=0)).max_open_channels == 0
    opening = Charge("eip155:84532", USDC, 100, PAYEE, "https://api.example.com/x", deposit=1_000)
    assert evaluate_scope(p, "tenant", Charge(**{**_fields(opening), "open_channels": 1}), {}, False).allowed
    full = Charge(**{**_fields(opening), "open_channels": 2})
    d = evaluate_scope(p, "tenant", full, {}, False)
    assert (d.reason, d.limit, d.remaining) == ("max_open_channels", 2, 0)
    err = d.error(full)
    assert isinstance(err, LimitExceeded) and err.reason == "max_open_channels"
    assert "max_open_channels 2" in err.message and err.metadata["open_channels"] == "2"
    assert evaluate_scope(p, "tenant", Charge(**{**_fields(opening), "deposit": None, "open_channels": None}),
                          {}, False).allowed
    for bad in (-1, "1.5", "x", True, 1_000_001, "9" * 12, [1]):
        with pytest.raises(InvalidArgument, match=r"policy\.max_open_channels: must be a whole number"):
            parse(doc(max_open_channels=bad))
    with pytest.raises(InvalidArgument, match="max_open_channels: can only be set on the tenant policy"):
        parse({"max_open_channels": 1}, wallet=True)
    assert "max_open_channels" not in to_document(parse(doc()))


def _fields(charge: Charge) -> dict:
    return {f: getattr(charge, f) for f in Charge.__dataclass_fields__}
