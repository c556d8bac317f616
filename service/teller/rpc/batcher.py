"""Group commit for Sign.

Calls that arrive while a batch is in the database wait and go together in the
next one: one transaction, one lock per tenant, one window query, one write for
all of them (see ``Payments.commit``). Under load a batch is as large as the
calls that queued during the one before it, so the database's per-transaction
cost is shared and a hot tenant's lock is taken once per batch instead of once
per call; with one caller a batch is that one call and adds no wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from teller.payments import Call, Outcome


class SignBatcher:
    def __init__(self, commit: Callable[[Sequence[Call]], list[Outcome]], *, max_batch: int = 64,
                 in_flight: int = 2) -> None:
        self._commit = commit
        self._max = max(1, max_batch)
        self._limit = max(1, in_flight)
        # Its own threads: a batch never waits behind other blocking work.
        self._pool = ThreadPoolExecutor(max_workers=self._limit, thread_name_prefix="teller-sign")
        self._queue: list[tuple[Call, asyncio.Future[Outcome]]] = []
        self._running = 0

    async def submit(self, call: Call) -> Outcome:
        """The outcome of ``call`` once its batch committed (or failed)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Outcome] = loop.create_future()
        self._queue.append((call, done))
        self._start(loop)
        # A cancelled caller stops waiting; its batch still commits, as a single call would.
        return await done

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._queue and self._running < self._limit:
            batch, self._queue = self._queue[:self._max], self._queue[self._max:]
            self._running += 1
            work = loop.run_in_executor(self._pool, self._commit, [call for call, _ in batch])
            work.add_done_callback(lambda f, b=batch: self._finished(loop, b, f))  # type: ignore[misc]

    def _finished(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Call, asyncio.Future[Outcome]]],
                  work: asyncio.Future[list[Outcome]]) -> None:
        self._running -= 1
        error = work.exception()
        outcomes: list[Outcome] = [error] * len(batch) if error is not None else work.result()
        for (_, done), outcome in zip(batch, outcomes, strict=True):
            if not done.done():
                done.set_result(outcome)
        self._start(loop)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


__all__ = ["SignBatcher"]
