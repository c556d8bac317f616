"""Group commit for Sign, and for the vouchers of one channel.

Calls that arrive while a batch is in the database wait and go together in the
next one: one transaction, one lock per tenant, one window query, one write for
all of them (see ``Payments.commit``). Under load a batch is as large as the
calls that queued during the one before it, so the database's per-transaction
cost is shared and a hot tenant's lock is taken once per batch instead of once
per call; with one caller a batch is that one call and adds no wait.

MPP session vouchers go the same way, one ``Batcher`` per channel
(``ChannelBatchers``): a channel's vouchers are signed one after another
under its row lock, so without batching its callers queue on that lock, one
transaction each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from teller.sign.call import Call, Verdict

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Items submitted while a batch is committing go together in the next one;
    ``commit`` answers each item of a batch (an exception answers it too)."""

    def __init__(self, commit: Callable[[Sequence[T]], Awaitable[Sequence[R]]], *, max_batch: int = 64,
                 in_flight: int = 1, linger: bool = True) -> None:
        self._commit = commit
        self._linger = linger
        self._max = max(1, max_batch)
        self._limit = max(1, in_flight)
        self._queue: list[tuple[T, asyncio.Future[R | BaseException]]] = []
        self._running: set[asyncio.Task[None]] = set()

    @property
    def idle(self) -> bool:
        """Nothing queued or committing."""
        return not self._queue and not self._running

    async def submit(self, item: T) -> R | BaseException:
        """The answer to ``item`` once its batch committed (or failed)."""
        done: asyncio.Future[R | BaseException] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        self._start()
        # A cancelled caller stops waiting; its batch still commits, as a single call would.
        return await done

    def _start(self) -> None:
        while self._queue and len(self._running) < self._limit:
            batch, self._queue = self._queue[:self._max], self._queue[self._max:]
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R | BaseException]]]) -> None:
        task = asyncio.current_task()
        try:
            verdicts: Sequence[R | BaseException]
            try:
                verdicts = await self._commit([item for item, _ in batch])
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


#: Sign's batcher: payments of any tenant, one transaction per batch.
SignBatcher = Batcher[Call, Verdict]


class ChannelBatchers(Generic[R]):
    """One ``Batcher`` per channel (any hashable key naming it), one batch in
    flight each: a channel's vouchers are signed in order under its lock, while
    different channels' batches run side by side. A channel's batcher is dropped
    when it falls idle."""

    def __init__(self, commit: Callable[[Sequence[Call]], Awaitable[Sequence[R]]], *, max_batch: int = 64) -> None:
        self._commit = commit
        self._max = max_batch
        self._batchers: dict[Hashable, Batcher[Call, R]] = {}

    async def submit(self, key: Hashable, call: Call) -> R | BaseException:
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = self._batchers[key] = Batcher(self._commit, max_batch=self._max, in_flight=1)
        try:
            return await batcher.submit(call)
        finally:
            if batcher.idle and self._batchers.get(key) is batcher:
                del self._batchers[key]


__all__ = ["Batcher", "ChannelBatchers", "SignBatcher"]
