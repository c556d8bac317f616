"""Three worker processes on one PostgreSQL sign vouchers for one channel from 64
concurrent callers; one is killed with SIGKILL mid-stream. The vouchers form one
strictly increasing sequence that ends exactly at the deposit, each step one
caller's increment, and mppx accepts every one of them."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from teller.app import build
from teller.db.models import AuditEvent
from tests.support.channels import CHAIN_ID, ESCROW, open_channel, sign_until_refused
from tests.support.harness import make_settings
from tests.support.mpp_live import ROOT, node_binary

VERIFY = ROOT / "tests" / "support" / "verify_vouchers.mjs"


def _granted(path: Path) -> dict[int, int]:
    if not path.exists():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error ")]
    assert not errors, f"{path.name}: {errors[:3]}"
    rows = [line.split() for line in lines]
    return {int(total): int(step) for total, step in rows if step}


@pytest.mark.postgres
@pytest.mark.slow
def test_three_workers_and_64_callers_sign_one_sequence_that_ends_at_the_deposit(pg_url, tmp_path):
    settings = make_settings(pg_url, tmp_path, db_pool_size=24)
    app = build(settings, migrate=True)
    deposit = 1_500
    ch = open_channel(app, deposit)
    steps = [1 + i % 3 for i in range(64)]  # 64 callers, increments 1, 2, 3
    spawn = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"worker{i}.txt" for i in range(3)]
    workers = [spawn.Process(target=sign_until_refused,
                             args=(settings, ch.tenant_id, ch.handle, steps[i::3], str(outs[i])))
               for i in range(3)]
    for w in workers:
        w.start()
    try:
        # Kill the first worker once it is signing: its callers' streams stop mid-way.
        deadline = time.monotonic() + 120
        while len(_granted(outs[0])) < 40 and time.monotonic() < deadline and workers[0].is_alive():
            time.sleep(0.05)
        assert workers[0].is_alive(), "worker 0 ended before it could be killed"
        workers[0].kill()
        for w in workers[1:]:
            w.join(240)
            assert w.exitcode == 0, w.exitcode
        workers[0].join(10)
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()

    vouchers = app.channels.vouchers(ch.tenant_id, ch.handle)
    totals = [t for t, _ in vouchers]
    # One strictly increasing sequence (the vouchers' key orders and dedupes it) that the
    # survivors took to the deposit exactly: callers of increment 1 stop only at zero left.
    assert totals == sorted(set(totals)) and totals[-1] == deposit
    assert app.channels.get(ch.tenant_id, ch.handle).cumulative == deposit
    # Each step is one caller's increment, and each total reported to a caller is in the
    # sequence with that step; the killed worker may have committed a voucher it never
    # reported, never the reverse.
    reported = {}
    for out in outs:
        reported.update(_granted(out))
    steps_taken = {b: b - a for a, b in itertools.pairwise([0, *totals])}
    assert set(reported) <= set(steps_taken)
    assert all(steps_taken[t] == step for t, step in reported.items())
    assert set(steps_taken.values()) <= {1, 2, 3}
    unreported = set(steps_taken) - set(reported)
    assert len(unreported) <= len(steps[0::3]), unreported  # at most one per killed caller
    assert len(_granted(outs[0])) >= 40
    # Every voucher audited once.
    with app.db.read() as s:
        audited = s.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.tenant_id == ch.tenant_id, AuditEvent.action == "channel.voucher"))
    assert audited == len(totals)
    # mppx's session server would accept every one of them.
    doc = {"escrow": ESCROW, "chainId": CHAIN_ID, "signer": ch.address,
           "vouchers": [{"channelId": ch.channel_id, "cumulativeAmount": str(t), "signature": sig}
                        for t, sig in vouchers]}
    proc = subprocess.run([node_binary(), str(VERIFY)], input=json.dumps(doc), capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    accepted = json.loads(proc.stdout)
    assert len(accepted) == len(totals) and all(accepted)
    app.close()
