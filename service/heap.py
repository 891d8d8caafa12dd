"""The replica's heap and Python's cyclic garbage collector.

A full (generation 2) collection scans every tracked object with the GIL held, which stops the batch
loop and the forward alike. A replica holds about half a million objects from start-up (torch,
transformers, Ray, FastAPI, the model and tokenizer); a full collection of those took 0.26 s on this
project's 2-core CPU, more than the forward of a full batch and near the 250 ms SLO. `gc.freeze()`
moves every object alive at that moment into a permanent generation that collections skip; objects
made later (requests, batches) are collected as before.

Every collection's pause goes to `dihs_gc_pause_seconds` (by generation; the deployment's gauge
thread records what `drain` returns), and one slower than SLOW_GC_S is also logged, so that a stall
a client sees can be matched to one in the replica's log.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque

log = logging.getLogger("dihs.heap")
SLOW_GC_S = 0.05
_started: list[float] = []  # the running collection's start (collections never overlap: the GIL is held)
# (generation, seconds) of collections not yet recorded: the callback only appends here, since
# recording a metric from inside a collection could wait on a lock the collecting thread holds
_pauses: deque[tuple[int, float]] = deque(maxlen=10_000)


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


def _on_collection(phase: str, info: dict) -> None:
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        took = time.perf_counter() - _started.pop()
        _pauses.append((info["generation"], took))
        if took >= SLOW_GC_S:
            log.warning(
                "garbage collection (generation %d, %d objects freed) paused the replica for %.0f ms",
                info["generation"],
                info["collected"],
                took * 1e3,
            )


def watch_collections() -> None:
    """Time every collection from now on (once per process): `drain` returns them, slow ones are logged."""
    if _on_collection not in gc.callbacks:
        gc.callbacks.append(_on_collection)


def drain() -> list[tuple[int, float]]:
    """(generation, seconds) of the collections since the last call."""
    out = []
    while _pauses:
        out.append(_pauses.popleft())
    return out
