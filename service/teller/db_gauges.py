"""Gauges read from the database on a timer, for the alerts in
deploy/kustomize/components/monitoring: is the database reachable, are wallets
left on an old KEK after a rotation, are payments stuck in ``signed``.

Each worker refreshes them on its own (the queries are small and indexed), so
an alert takes the max over workers; a worker that cannot reach the database
says so itself (``teller_database_up 0``) rather than by a missing series.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

from prometheus_client import Gauge
from sqlalchemy import func, select

from teller.db import Database
from teller.db.models import Payment, Wallet
from teller.states import PaymentState

log = logging.getLogger("teller.gauges")

DATABASE_UP = Gauge("teller_database_up", "1 when this worker's last database check succeeded, else 0")
DATABASE_CHECKED = Gauge("teller_database_check_timestamp_seconds", "When this worker last checked its database")
REWRAP_PENDING = Gauge("teller_kek_rewrap_pending_wallets",
                       "Wallets whose data key is wrapped under a KEK other than the current one")
SIGNED_OVERDUE = Gauge("teller_payments_signed_overdue",
                       "Payments still `signed` although their validity ended more than the grace ago")

#: How long past its ``valid_before`` a payment may stay ``signed``: the
#: reconciler needs a few passes (and the chain a few blocks) to settle or expire it.
OVERDUE_GRACE_S = 600
#: Seconds between refreshes, and the longest one refresh may take.
INTERVAL_S = 15.0
TIMEOUT_S = 10.0


def refresh(db: Database, current_kek: str, now_s: float | None = None) -> None:
    """Read the gauges once; any database failure sets ``teller_database_up`` to 0."""
    now = int(time.time() if now_s is None else now_s)
    try:
        with db.read() as s:
            pending = s.scalar(select(func.count()).select_from(Wallet).where(Wallet.kek_version != current_kek))
        with db.read() as s:
            # ix_payments_live (released_ms, state, valid_before) answers this.
            overdue = s.scalar(select(func.count()).select_from(Payment).where(
                Payment.released_ms.is_(None), Payment.state == PaymentState.SIGNED.value,
                Payment.valid_before < now - OVERDUE_GRACE_S))
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable", and is logged
        DATABASE_UP.set(0)
        log.warning("database check failed: %s", type(exc).__name__)
    else:
        DATABASE_UP.set(1)
        REWRAP_PENDING.set(int(pending or 0))
        SIGNED_OVERDUE.set(int(overdue or 0))
    DATABASE_CHECKED.set(now)


async def refresh_forever(db: Database, current_kek: str, pool: Executor, interval_s: float = INTERVAL_S) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            await asyncio.wait_for(loop.run_in_executor(pool, refresh, db, current_kek), TIMEOUT_S)
        except TimeoutError:
            DATABASE_UP.set(0)
            log.warning("database check took longer than %.0fs", TIMEOUT_S)
        await asyncio.sleep(interval_s)


__all__ = ["DATABASE_UP", "OVERDUE_GRACE_S", "REWRAP_PENDING", "SIGNED_OVERDUE", "refresh", "refresh_forever"]
