"""Pure parts behind the operator CLI: saved-402 parsing for `policy test`,
the spend report's windows, output formats, where `teller admin` connects."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

import pytest

from teller import config, policy_dryrun, spend_report
from teller.cli.admin import admin_target
from teller.errors import InvalidArgument
from testbed.x402_server import sdk_v2_challenge

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def test_a_saved_402_reads_as_raw_http_or_json():
    c = sdk_v2_challenge(amount="1234")
    raw = "HTTP/1.1 402 Payment Required\r\n" + "".join(f"{k}: {v}\r\n" for k, v in c.headers) + "\r\n" + \
        c.body.decode()
    as_json = json.dumps({"status": 402, "headers": dict(c.headers), "body": c.body.decode(), "url": c.url})
    for text in (raw, as_json):
        saved = policy_dryrun.load_challenge(text, url="https://api.example/paid")
        result = policy_dryrun.dry_run(saved, {"allow_unknown_assets": True}, now=NOW)
        assert result.allowed and result.chosen is not None and result.chosen.offer.amount == 1234
        assert saved.url == "https://api.example/paid"


@pytest.mark.parametrize(("text", "field"), [
    ("HTTP/1.1 200 OK\n\n{}", "status must be 402"),
    ("HTTP/1.1 402 x\nno colon here\n\n", "line 2"),
    ('{"status": 402, "headers": 7}', "challenge.headers"),
    ('{"status": "402"}', "challenge.status"),
    ("not json", "neither a raw HTTP response nor JSON"),
])
def test_a_bad_saved_402_names_what_is_wrong(text, field):
    with pytest.raises(InvalidArgument, match=field):
        policy_dryrun.load_challenge(text)


def test_dry_run_reasons_match_sign():
    c = sdk_v2_challenge(amount="5000")
    saved = policy_dryrun.load_challenge(json.dumps({"headers": c.headers, "body": c.body.decode(), "url": c.url}))
    base = {"allow_unknown_assets": True, "budgets": [{"name": "day", "window": "day", "limit": "6000"}]}
    assert policy_dryrun.dry_run(saved, base, now=NOW).allowed
    assert policy_dryrun.dry_run(saved, base, used={"tenant": {"day": 2000}}, now=NOW).reason == "budget_exhausted:day"
    assert policy_dryrun.dry_run(saved, base, frozen={"tenant": True}, now=NOW).reason == "frozen"
    assert policy_dryrun.dry_run(saved, {**base, "hosts": {"allow": ["api.example"]}}, now=NOW).reason == \
        "host_not_allowed"
    assert policy_dryrun.dry_run(saved, base, {"per_payment_max": "10"}, now=NOW).reason == "per_payment_max"
    assert policy_dryrun.dry_run(saved, {**base, "protocols": ["mpp"]}, now=NOW).reason == "protocol_not_allowed"
    assert policy_dryrun.dry_run(saved, base, max_amount=4999, now=NOW).reason == "caller_max_amount"


def test_dry_run_judges_a_session_open_by_its_deposit_and_the_channels_held():
    """A session challenge's open, as Sign judges it: max_channel_deposit sees the
    deposit, max_open_channels the tenant's channels that are not closed."""
    import base64

    request = {"amount": "25", "currency": "0x20C0000000000000000000000000000000000000",
               "recipient": "0x" + "11" * 20, "unitType": "request", "suggestedDeposit": "10000",
               "methodDetails": {"chainId": 31337, "sessionProtocol": "v2"}}
    encoded = base64.urlsafe_b64encode(json.dumps(request).encode()).decode().rstrip("=")
    saved = policy_dryrun.load_challenge(json.dumps({"headers": {"WWW-Authenticate": (
        f'Payment id="s1", realm="api.test", method="tempo", intent="session", request="{encoded}", '
        'expires="2026-11-30T13:00:00Z"')}, "url": "https://api.test/m"}))
    base = {"allow_unknown_assets": True, "max_open_channels": 2}
    assert policy_dryrun.dry_run(saved, base, now=NOW).allowed  # no count given: not judged
    assert policy_dryrun.dry_run(saved, base, now=NOW, open_channels=1).allowed
    full = policy_dryrun.dry_run(saved, base, now=NOW, open_channels=2)
    assert full.reason == "max_open_channels" and "max_open_channels 2" in full.message
    assert policy_dryrun.dry_run(saved, {**base, "max_channel_deposit": "9999"}, now=NOW).reason == \
        "max_channel_deposit"


def test_spend_report_sums_per_calendar_window():
    day = 86_400_000
    start = spend_report.parse_time("2026-11-01", "--since")
    rows = [(start + 5, "eip155:8453", "0xa", "settled", 10), (start + 7, "eip155:8453", "0xa", "settled", 5),
            (start + day + 1, "eip155:8453", "0xa", "signed", 3), (start - 1, "eip155:8453", "0xa", "settled", 99)]
    lines = spend_report.report(rows, by="day", since_ms=start, until_ms=start + 2 * day)
    assert [(ln.window_start_ms - start, ln.state, ln.payments, ln.amount) for ln in lines] == \
        [(0, "settled", 2, 15), (day, "signed", 1, 3)]
    months = spend_report.report(rows[:3], by="month", since_ms=start, until_ms=start + 40 * day)
    assert [(ln.window_start_ms, ln.window_end_ms - start, ln.state, ln.amount) for ln in months] == \
        [(start, 30 * day, "settled", 15), (start, 30 * day, "signed", 3)]
    with pytest.raises(InvalidArgument, match="by must be one of"):
        spend_report.report(rows, by="fortnight", since_ms=start, until_ms=start + day)
    with pytest.raises(InvalidArgument, match="--since"):
        spend_report.parse_time("yesterday", "--since")


def test_admin_target_follows_settings():
    ns = argparse.Namespace()
    assert admin_target(ns, config.Settings()) == "127.0.0.1:7402"
    assert admin_target(ns, config.Settings(listen="0.0.0.0:7402", admin_listen="0.0.0.0:7403")) == "127.0.0.1:7403"
    assert admin_target(ns, config.Settings(listen="10.0.0.5:9000")) == "10.0.0.5:9000"
    assert admin_target(argparse.Namespace(target="h:1"), config.Settings(admin_listen=":7403")) == "h:1"

