"""The replica's heap and Python's cyclic garbage collector.

A full (generation 2) collection scans every tracked object with the GIL held, which stops the batch
loop and the forward alike. A replica holds about half a million objects from start-up (torch,
transformers, Ray, FastAPI, the model and tokenizer); a full collection of those took 0.26 s on this
project's 2-core CPU, more than the forward of a full batch and near the 250 ms SLO. `gc.freeze()`
moves every object alive at that moment into a permanent generation that collections skip; objects
made later (requests, batches) are collected as before.

Every collection's pause goes to `dihs_gc_pause_seconds` (by generation; the deployment's gauge
thread records what CollectionTimer.take_pauses returns), and one slower than SLOW_GC_S is also
logged, so that a stall a client sees can be matched to one in the replica's log.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque

log = logging.getLogger("dihs.heap")
SLOW_GC_S = 0.05


def freeze() -> None:
    """Collect once, then move every object alive now out of the collector's scans."""
    gc.collect()
    gc.freeze()


def refreeze() -> None:
    """After a bundle swap released the old bundle: its objects were frozen with the rest (and hold
    reference cycles, so counting references alone does not free them); one full collection (a stall of
    about 0.26 s, once per swap) frees them, and what is alive then is frozen again."""
    gc.unfreeze()
    freeze()


class CollectionTimer:
    """Times every collection while started (a gc callback): take_pauses returns them, slow ones are
    logged."""

    def __init__(self) -> None:
        self._started: list[float] = []  # the running collection's start (they never overlap: GIL)
        # (generation, seconds) not yet taken: the callback only appends here, since recording a
        # metric from inside a collection could wait on a lock the collecting thread holds
        self._pauses: deque[tuple[int, float]] = deque(maxlen=10_000)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started.append(time.perf_counter())
        elif self._started:
            took = time.perf_counter() - self._started.pop()
            self._pauses.append((info["generation"], took))
            if took >= SLOW_GC_S:
                log.warning(
                    "garbage collection (generation %d, %d objects freed) paused the replica for %.0f ms",
                    info["generation"],
                    info["collected"],
                    took * 1e3,
                )

    def start(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def stop(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def take_pauses(self) -> list[tuple[int, float]]:
        """(generation, seconds) of the collections since the last call."""
        out = []
        while self._pauses:
            out.append(self._pauses.popleft())
        return out
