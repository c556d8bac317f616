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
from collections.abc import Awaitable, Callable, Sequence

from teller.sign.call import Call, Verdict


class SignBatcher:
    def __init__(self, commit: Callable[[Sequence[Call]], Awaitable[list[Verdict]]], *, max_batch: int = 64,
                 in_flight: int = 1, linger: bool = True) -> None:
        self._commit = commit
        self._linger = linger
        self._max = max(1, max_batch)
        self._limit = max(1, in_flight)
        self._queue: list[tuple[Call, asyncio.Future[Verdict]]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, call: Call) -> Verdict:
        """The verdict of ``call`` once its batch committed (or failed)."""
        done: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._queue.append((call, done))
        self._start()
        # A cancelled caller stops waiting; its batch still commits, as a single call would.
        return await done

    def _start(self) -> None:
        while self._queue and len(self._running) < self._limit:
            batch, self._queue = self._queue[:self._max], self._queue[self._max:]
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[Call, asyncio.Future[Verdict]]]) -> None:
        task = asyncio.current_task()
        try:
            try:
                verdicts: Sequence[Verdict] = await self._commit([call for call, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every call of the batch gets it
                verdicts = [exc] * len(batch)
            for (_, done), verdict in zip(batch, verdicts, strict=True):
                if not done.done():
                    done.set_result(verdict)
            if self._queue and self._linger:
                # A backlog: calls are arriving faster than batches commit. Let the
                # ones whose requests are already in (ready to run on this loop) join
                # the next batch: one turn of the loop, holding this batch's slot so
                # they queue rather than start a batch of their own. Larger batches
                # share the transaction's fixed cost (~0.5 ms of this worker) among
                # more calls. Without a backlog a call's batch starts at once.
                await asyncio.sleep(0)
        finally:
            self._running.discard(task)  # type: ignore[arg-type]
        self._start()


__all__ = ["SignBatcher"]
