"""The replica's heap and Python's cyclic garbage collector.

A full (generation 2) collection scans every tracked object with the GIL held, which stops the batch
loop and the forward alike. A replica holds about half a million objects from start-up (torch,
transformers, Ray, FastAPI, the model and tokenizer); a full collection of those took 0.26 s on this
project's 2-core CPU, more than the forward of a full batch and near the 250 ms SLO. `gc.freeze()`
moves every object alive at that moment into a permanent generation that collections skip; objects
made later (requests, batches) are collected as before.

Collections slower than SLOW_GC_S are logged, with their generation and duration, so that a stall a
client sees can be matched to one in the replica's log.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("dihs.heap")
SLOW_GC_S = 0.05
_started: list[float] = []  # the running collection's start (the callback runs in the collecting thread)


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


def _log_slow(phase: str, info: dict) -> None:
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        took = time.perf_counter() - _started.pop()
        if took >= SLOW_GC_S:
            log.warning("garbage collection (generation %d, %d objects freed) paused the replica for %.0f ms",
                        info["generation"], info["collected"], took * 1e3)


def watch_slow_collections() -> None:
    """Log every collection that takes SLOW_GC_S or longer (once per process)."""
    if _log_slow not in gc.callbacks:
        gc.callbacks.append(_log_slow)
