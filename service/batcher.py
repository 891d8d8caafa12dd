"""A replica's batch queue: the texts of many requests into model batches, one batch at a time.

A request hands all its texts in one call (`submit`); they queue as one entry and may be split
across consecutive batches. A batch starts when `max_batch_size` texts wait or `wait_s` after its
first text arrived, whichever is first; it runs in a worker thread (the forward releases the
GIL), so the event loop keeps accepting and refusing requests meanwhile. Admission is by texts:
a request that would take the replica past `capacity` texts (waiting + running) is refused at
once with Overloaded, before it waits for anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import Overloaded

log = logging.getLogger("dihs.batcher")


@dataclass
class _Entry:
    items: list
    future: asyncio.Future
    arrived: float
    timing: dict | None
    results: list = field(default_factory=list)
    taken: int = 0  # items already put into a batch


class Batcher:
    def __init__(
        self,
        run: Callable[[list, dict], list],
        max_batch_size: int,
        wait_s: float,
        capacity: int,
        idle: Callable[[], None] | None = None,
    ):
        """idle: called (in a worker thread) after a batch's answers are out when no text waits
        (Engine.shadow); an error in it is logged, never a request's."""
        assert max_batch_size >= 1 and capacity >= 1 and wait_s >= 0
        self.run, self.max_batch_size, self.wait_s, self.capacity = run, max_batch_size, wait_s, capacity
        self.idle = idle
        self._queue: deque[_Entry] = deque()
        self._waiting = 0  # texts queued, not yet in a batch
        self._running = 0  # texts of the batch being computed
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    @property
    def held(self) -> int:
        """Texts waiting or running at this replica."""
        return self._waiting + self._running

    async def submit(self, items: list, timing: dict | None = None) -> list:
        """Results of `items`, in order. `timing` (if given) gets this request's queue wait and the
        per-phase seconds of the batches it was part of (summed when it spans several)."""
        if self.held and self.held + len(items) > self.capacity:  # an idle replica takes any request
            raise Overloaded()
        self._start()
        entry = _Entry(list(items), asyncio.get_running_loop().create_future(), time.perf_counter(), timing)
        self._queue.append(entry)
        self._waiting += len(items)
        self._wake.set()
        return await entry.future

    def _start(self) -> None:
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            first = self._queue[0].arrived
            while self._waiting < self.max_batch_size:
                left = first + self.wait_s - time.perf_counter()
                if left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except TimeoutError:
                    break
            await self._run_one()

    def _take(self) -> tuple[list, list[tuple[_Entry, int, int]]]:
        """Up to max_batch_size texts from the head of the queue: (items, [(entry, start, stop)])."""
        batch, parts = [], []
        while self._queue and len(batch) < self.max_batch_size:
            e = self._queue[0]
            n = min(len(e.items) - e.taken, self.max_batch_size - len(batch))
            batch.extend(e.items[e.taken : e.taken + n])
            parts.append((e, e.taken, e.taken + n))
            e.taken += n
            if e.taken == len(e.items):
                self._queue.popleft()
        self._waiting -= len(batch)
        return batch, parts

    async def _run_one(self) -> None:
        batch, parts = self._take()
        started = time.perf_counter()
        for e, start, _ in parts:
            if start == 0 and e.timing is not None:
                e.timing["queue"] = started - e.arrived
        self._running = len(batch)
        timing: dict = {}
        try:
            results = await asyncio.to_thread(self.run, batch, timing)
        except Exception as exc:  # every request in this batch gets the error; the loop goes on
            for e, _, _ in parts:
                if not e.future.done():
                    e.future.set_exception(exc)
            self._drop([e for e, _, _ in parts])
            return
        finally:
            self._running = 0
        k = 0
        for e, start, stop in parts:
            e.results.extend(results[k : k + stop - start])
            k += stop - start
            if e.timing is not None:
                for phase, dt in timing.items():
                    e.timing[phase] = e.timing.get(phase, 0.0) + dt
            if len(e.results) == len(e.items) and not e.future.done():
                e.future.set_result(e.results)
        if self.idle is not None and not self._queue:
            try:
                await asyncio.to_thread(self.idle)
            except Exception:  # shadow work must never fail serving
                log.exception("idle work after a batch failed")

    def _drop(self, failed: list[_Entry]) -> None:
        """Failed requests whose rest still waits: take those texts out of the queue."""
        for e in failed:
            if e in self._queue:
                self._queue.remove(e)
                self._waiting -= len(e.items) - e.taken
