"""Request-level batching that never holds a request while the model is idle.

A batcher with a wait window (`@serve.batch`'s `batch_wait_timeout_s`) makes every request at
low load pay the window, for a batch that does not come. Here a request runs as soon as a batch
slot is free; while every slot is busy, the requests that arrive queue, and the next free slot
takes all of them (up to `max_batch` by size) at once. Batches form from the load itself: one
request at a time when traffic is light, full batches when it is heavy ("natural" batching).

`linger_s` > 0 restores a wait window for deployments that prefer fuller batches to latency:
a slot that finds a partial batch waits up to `linger_s` for more before it runs.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Waiting(Generic[T, R]):
    item: T
    size: int
    future: asyncio.Future[R]


class Batcher(Generic[T, R]):
    """Runs `run(items) -> results` (one result per item, in order) on batches of submitted items.

    `size(item)` is what an item counts against `max_batch` (images, for image requests); an item
    at least `max_batch` large runs alone. At most `max_concurrent` batches run at once (two: one
    batch's encoding and hand-back overlap the next one's network call). An item whose caller is
    cancelled before its batch starts is dropped from it.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[R]]],
        size: Callable[[T], int],
        *,
        max_batch: int = 64,
        max_concurrent: int = 2,
        linger_s: float = 0.0,
    ) -> None:
        if max_batch < 1 or max_concurrent < 1 or linger_s < 0:
            raise ValueError("max_batch and max_concurrent must be >= 1 and linger_s >= 0")
        self._run = run
        self._size = size
        self.max_batch = max_batch
        self.max_concurrent = max_concurrent
        self.linger_s = linger_s
        self._queue: collections.deque[_Waiting[T, R]] = collections.deque()
        self._slots = 0  # batches running (or lingering) now
        self._arrived: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        """Items waiting for a free slot."""
        return sum(1 for w in self._queue if not w.future.done())

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        waiting = _Waiting[T, R](item, self._size(item), loop.create_future())
        self._queue.append(waiting)
        if self._arrived is not None:
            self._arrived.set()
        if self._slots < self.max_concurrent:
            self._slots += 1
            task = loop.create_task(self._slot())
            self._tasks.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._tasks.discard)
        return await waiting.future

    def _take(self) -> list[_Waiting[T, R]]:
        """The next batch: queued items in arrival order up to `max_batch` by size (an item that
        does not fit waits for the next batch; a first item larger than `max_batch` goes alone)."""
        batch: list[_Waiting[T, R]] = []
        total = 0
        kept: collections.deque[_Waiting[T, R]] = collections.deque()
        while self._queue:
            w = self._queue.popleft()
            if w.future.done():  # its caller left before it ran
                continue
            if not batch or total + w.size <= self.max_batch:
                batch.append(w)
                total += w.size
                if total >= self.max_batch:
                    break
            else:
                kept.append(w)
        self._queue.extendleft(reversed(kept))
        return batch

    async def _linger(self) -> None:
        """Waits up to `linger_s` for the queue to fill a batch."""
        deadline = time.monotonic() + self.linger_s
        while sum(w.size for w in self._queue if not w.future.done()) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._arrived = self._arrived or asyncio.Event()
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    async def _slot(self) -> None:
        try:
            while True:
                if self.linger_s > 0:
                    await self._linger()
                batch = self._take()
                if not batch:
                    return
                try:
                    results = await self._run([w.item for w in batch])
                except Exception as e:  # the batch's callers get the error, the slot goes on
                    for w in batch:
                        if not w.future.done():
                            w.future.set_exception(e)
                    continue
                for w, result in zip(batch, results, strict=True):
                    if not w.future.done():
                        w.future.set_result(result)
        finally:
            self._slots -= 1
