"""Alerts and the dashboard, held to what Teller really exports.

The PrometheusRule rendered from the overlays passes `promtool check rules`
and the unit tests of every alert (`promtool test rules`,
deploy/monitoring/alerts.test.yaml); every metric the rules and the Grafana
dashboard query is one a live `teller serve` exposes on /metrics; and the
database gauges behind the alerts read what they say."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from teller_client import Policy
from testbed.procs import seat_tenant, start_cluster
from testbed.x402_server import sdk_v2_challenge
from tests.support.harness import RunningTeller, make_settings
from tests.support.kustomize import alert_rules, render

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
OVERLAYS = sorted(p.name for p in (ROOT / "deploy" / "kustomize" / "overlays").iterdir() if p.is_dir())
_METRIC = re.compile(r"\b(teller_[a-z0-9_]+)\b")
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def promtool() -> str:
    for candidate in (ROOT / ".tools" / "prometheus" / "promtool", shutil.which("promtool")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise RuntimeError("promtool is missing: `./run test` extracts it from Debian's prometheus package "
                       "into .tools/prometheus")


def _rule_spec(overlay: str) -> dict:
    (rule,) = [d for d in render(ROOT / "deploy" / "kustomize" / "overlays" / overlay)
               if d["kind"] == "PrometheusRule"]
    return rule["spec"]


def _rules(spec: dict) -> list[dict]:
    return [r for g in spec["groups"] for r in g["rules"]]


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p["targets"]]


def _metrics_in(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in _METRIC.findall(e)}


def _run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rules_pass_promtool_and_their_unit_tests(tmp_path, overlay):
    spec = _rule_spec(overlay)
    # The alerts are the rendered PrometheusRule's (test_docs reads the same list):
    # every overlay has the same ones, each named once.
    alerts = [r["alert"] for r in alert_rules(ROOT / "deploy" / "kustomize" / "overlays" / "production")]
    assert len(alerts) == len(set(alerts)) >= 7
    assert sorted(r["alert"] for r in _rules(spec)) == sorted(alerts)
    for rule in _rules(spec):
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]
    (tmp_path / "teller-rules.yaml").write_text(yaml.safe_dump(spec))
    checked = _run_promtool("check", "rules", str(tmp_path / "teller-rules.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts)} rules found" in checked.stdout
    shutil.copy(MONITORING / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    tested = _run_promtool("test", "rules", str(tmp_path / "alerts.test.yaml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert has a unit test that sees it fire.
    tests = yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert fired == set(alerts)


def test_promtool_unit_tests_would_catch_a_broken_alert(tmp_path):
    """The unit tests hold: an alert whose threshold drifts fails them."""
    spec = _rule_spec("production")
    for rule in _rules(spec):
        if rule["alert"] == "TellerReconcilerLagging":
            rule["expr"] = rule["expr"].replace("> 100", "> 1000")
    (tmp_path / "teller-rules.yaml").write_text(yaml.safe_dump(spec))
    shutil.copy(MONITORING / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    tested = _run_promtool("test", "rules", str(tmp_path / "alerts.test.yaml"))
    assert tested.returncode != 0 and "TellerReconcilerLagging" in tested.stdout + tested.stderr


def test_dashboard_queries_parse(tmp_path):
    """promtool parses PromQL only inside rule files: each panel query becomes
    a recording rule (with the dashboard's $namespace filled in)."""
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    exprs = _dashboard_exprs()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"teller:dashboard_query_{i}", "expr": e.replace("$namespace", "payments")}
        for i, e in enumerate(exprs)]}]}
    (tmp_path / "dashboard-queries.yaml").write_text(yaml.safe_dump(rules))
    checked = _run_promtool("check", "rules", str(tmp_path / "dashboard-queries.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _base_names(sample_or_family: str) -> set[str]:
    names = {sample_or_family}
    for suffix in _SUFFIXES:
        if sample_or_family.endswith(suffix):
            names.add(sample_or_family[: -len(suffix)])
    return names


def test_every_metric_queried_is_one_a_live_worker_exposes(tmp_path):
    cluster = start_cluster(f"sqlite:///{tmp_path / 'teller.db'}", 1, tmp_path, metrics=True)
    worker = cluster.workers[0]
    try:
        paying = seat_tenant(cluster, "paying", Policy(allow_unknown_assets=True, daily_budget=10_000_000))
        unpaid = seat_tenant(cluster, "unpaid")  # no policy: denied
        from teller_client import TellerClient, TellerError

        for seat, ok in ((paying, True), (unpaid, False)):
            c = sdk_v2_challenge()
            with TellerClient(worker.target, seat.token) as client:
                try:
                    client.sign(status=c.status, headers=c.headers, body=c.body, url=c.url, wallet_id=seat.wallet_id)
                    assert ok
                except TellerError:
                    assert not ok
        deadline = time.monotonic() + 30
        while True:
            body = urllib.request.urlopen(f"http://{worker.metrics}/metrics", timeout=10).read().decode()
            if "teller_database_up 1.0" in body or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        cluster.stop()
    families = list(text_string_to_metric_families(body))
    types = {f.name: f.type for f in families}
    samples = {s.name for f in families for s in f.samples}

    def exposed(name: str) -> bool:
        # A labelled metric nothing has touched yet (the reconciler's, without a
        # chain) is declared by its TYPE line only; its series names follow its type.
        if name in samples or name in types:
            return True
        return any(name.endswith(suffix) and types.get(name[: -len(suffix)]) in kinds for suffix, kinds in (
            ("_bucket", {"histogram"}), ("_count", {"histogram", "summary"}), ("_sum", {"histogram", "summary"}),
            ("_total", {"counter"})))

    queried = _metrics_in([r["expr"] for r in _rules(_rule_spec("production"))]) | _metrics_in(_dashboard_exprs())
    assert len(queried) >= 12
    missing = sorted(m for m in queried if not exposed(m))
    assert not missing, f"queried but not exposed by a worker: {missing}"
    # The live values behind the alerts: this worker reaches its database.
    assert "teller_database_up 1.0" in body
    assert "teller_kek_rewrap_pending_wallets 0.0" in body and "teller_payments_signed_overdue 0.0" in body
    # And the dashboard shows everything Teller exports.
    # (prometheus_client's `*_created` series are when a counter started: not Teller's metrics.)
    ours = {f.name for f in families if f.name.startswith("teller_") and not f.name.endswith("_created")}
    unshown = sorted(ours - set().union(*(_base_names(m) for m in _metrics_in(_dashboard_exprs()))))
    assert not unshown, f"exported but on no dashboard panel: {unshown}"


def test_database_gauges_read_what_they_say(tmp_path):
    from teller import db_gauges
    from teller.db import Database, make_engine
    from teller.db.models import Payment

    running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 't.db'}", tmp_path))
    try:
        t = running.setup_tenant()
        c = sdk_v2_challenge()
        running.client(t.token).sign(status=c.status, headers=c.headers, body=c.body, url=c.url,
                                     wallet_id=t.wallet_id)
        db = running.app.db
        with db.read() as s:
            (payment,) = s.query(Payment).all()
        current = running.app.vault.kek.current_version
        db_gauges.refresh(db, current, now_s=payment.valid_before + db_gauges.OVERDUE_GRACE_S - 1)
        assert (db_gauges.DATABASE_UP._value.get(), db_gauges.SIGNED_OVERDUE._value.get(),
                db_gauges.REWRAP_PENDING._value.get()) == (1, 0, 0)
        db_gauges.refresh(db, current, now_s=payment.valid_before + db_gauges.OVERDUE_GRACE_S + 1)
        assert db_gauges.SIGNED_OVERDUE._value.get() == 1
        # After a rotation to a new KEK, the one wallet still waits for `teller keys rewrap`.
        db_gauges.refresh(db, "v-next")
        assert db_gauges.REWRAP_PENDING._value.get() == 1
    finally:
        running.stop()
    unreachable = Database(make_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", 1))
    db_gauges.refresh(unreachable, "v1")
    assert db_gauges.DATABASE_UP._value.get() == 0
    unreachable.engine.dispose()
