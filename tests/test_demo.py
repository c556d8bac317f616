"""`./run demo` does Teller's real job: local chains, a paid API built with the
official x402 and MPP server code, Teller on the embedded default; the backend's
`Pay` calls settle on chain, and a call over the budget is refused."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = [sys.executable, "-m", "demo"]

pytestmark = pytest.mark.slow


def _sections(stdout: str) -> dict[str, str]:
    """The demo's output by step title (the text after '== ' up to the timer)."""
    parts = re.split(r"^== (.+?)  \[\s*[\d.]+ s\]$", stdout, flags=re.M)
    return {title: body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def _moves(section: str) -> dict[str, Decimal]:
    """'after   payee   0.000000 -> 0.010000 (+0.010000) TUSD' -> {'payee': Decimal('0.01')}."""
    return {m[1]: Decimal(m[3]) - Decimal(m[2])
            for m in re.finditer(r"^  after\s+(\w+)\s+([\d.]+) -> ([\d.]+) ", section, flags=re.M)}


def test_the_demo_pays_with_x402_and_mpp_and_the_budget_refuses_the_third_call():
    result = subprocess.run(DEMO, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = _sections(result.stdout)
    x402 = steps["Backend: teller.pay(GET /weather), paid with x402"]
    mpp = steps["Backend: teller.pay(GET /forecast), paid with MPP (Tempo)"]
    over = steps["Backend: teller.pay(GET /report), over the day's budget"]
    audit = steps["Audit trail (hash-chained, one row per decision; oldest first)"]

    # The resource came back, the payment settled, and the balances moved by the price.
    assert '<- 200 {"weather": "sunny"' in x402 and "state    signed -> settled" in x402
    assert _moves(x402) == {"wallet": Decimal("-0.01"), "payee": Decimal("0.01")}
    assert '<- 200 {"forecast": "rain tomorrow"' in mpp and "state    signed -> settled" in mpp
    mpp_moves = _moves(mpp)
    assert mpp_moves["payee"] == Decimal("0.02")
    fee = -mpp_moves["wallet"] - Decimal("0.02")  # the wallet pays Tempo's fee in pathUSD
    assert Decimal(0) < fee < Decimal("0.02"), mpp
    assert f"the Tempo fee, {fee:.6f} pathUSD" in mpp

    # Over the budget: denied with its reason, and nothing moved.
    denial = re.search(r"denied\s+LimitExceeded \(RESOURCE_EXHAUSTED\) reason=(\S+) limit=([\d.]+) "
                       r"remaining=([\d.]+) price=([\d.]+)", over)
    assert denial is not None, over
    assert denial[1] == "budget_exhausted:day" and Decimal(denial[2]) == Decimal("0.05")
    assert Decimal(denial[3]) == Decimal("0.05") - Decimal("0.03") - fee < Decimal(denial[4])
    assert set(_moves(over).values()) == {Decimal(0)}

    # The audit trail: both payments signed and settled, the refusal with its reason.
    rows = [line.split() for line in audit.splitlines() if line.startswith("  #")]
    actions = [row[1] for row in rows]
    assert actions[:4] == ["tenant.create", "token.issue", "wallet.create", "policy.set"]
    assert actions.count("payment.sign") == 2 and actions.count("payment.settled") == 2
    assert rows[-1][1:5] == ["payment.deny", "denied", "budget_exhausted:day", "0.030000"]
    assert "Done: two payments settled on chain, one refused by policy" in result.stdout


def _descendants(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                children += [int(entry), *_descendants(int(entry))]
    return children


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_demo_stops_everything_it_started_when_interrupted(signum):
    # Only the demo's own process gets the signal (a terminal's Ctrl-C reaches the
    # whole group, which is easier): the chains and Teller must go with it.
    proc = subprocess.Popen(DEMO, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("== Operator:"):
                break
        children = _descendants(proc.pid)
        assert len(children) >= 3, "".join(seen)  # two anvils and teller serve
        proc.send_signal(signum)
        rest = proc.stdout.read()
        assert proc.wait(60) == 130, rest
        assert "interrupted: stopped the chains, the paid API and Teller" in rest
        assert [pid for pid in children if _running(pid)] == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
