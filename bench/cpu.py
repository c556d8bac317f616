"""Where the machine's CPU went while a phase ran: Teller's workers, PostgreSQL
and the load generator, in cores (1.0 = one core busy the whole time).

Read from /proc (Linux): the workers by pid, PostgreSQL by process name, the
load generator as this process's children that ended during the phase (h2load
or bench/driver.py; Teller's workers are children too, but still running).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable


def _ticks() -> dict[int, tuple[str, int]]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(name)] = (comm, int(fields[11]) + int(fields[12]))  # utime + stime
    return out


class CpuSplit:
    def __init__(self, worker_pids: Iterable[int]) -> None:
        self.workers = set(worker_pids)
        self.available = os.path.isdir("/proc/self")
        self.before = _ticks() if self.available else {}
        self.children = self._children()
        self.started = time.monotonic()

    @staticmethod
    def _children() -> float:
        t = os.times()
        return t.children_user + t.children_system

    def stop(self) -> dict[str, float]:
        if not self.available:
            return {}
        after, elapsed = _ticks(), time.monotonic() - self.started
        hz = os.sysconf("SC_CLK_TCK")
        teller = postgres = 0
        for pid, (comm, ticks) in after.items():
            spent = ticks - self.before.get(pid, (comm, 0))[1]
            if pid in self.workers:
                teller += spent
            elif comm.startswith("postgres"):
                postgres += spent
        return {"teller": teller / hz / elapsed, "postgres": postgres / hz / elapsed,
                "load_generator": (self._children() - self.children) / elapsed}
