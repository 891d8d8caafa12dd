"""What the HTTP routes call in the replica's own process: an Engine behind the load bookkeeping
(queue depth and latency feed the load tracker, one duration sample per text)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .engine import Engine
from .routing import Item


@dataclass(frozen=True)
class ModelInfo:
    """What the HTTP routes need to know of the served model (validation, v2 metadata)."""

    name: str
    labels: list[str]
    ladder: list[float]
    total_heads: int
    max_length: int
    dtype: str = "float32"  # the number format the model runs in (precision.DTYPES)
    dtype_choice: dict | None = None  # why that one (dtype_choice.DtypeChoice.report)

    @classmethod
    def of(cls, engine: Engine, name: str) -> ModelInfo:
        return cls(
            name,
            engine.bundle.labels,
            engine.ladder,
            engine.shape.total_heads,
            engine.bundle.max_length,
            engine.dtype,
            engine.dtype_choice.report(),
        )


class Tracked:
    """Arrival/departure bookkeeping shared by every front of an Engine: queue depth and latency
    feed the load tracker, and the duration histogram gets one sample per text."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def begin(self) -> float:
        self.engine.load.started()
        self.engine.metrics.record("dihs_queue_depth", self.engine.load.queue_depth)
        return time.perf_counter()

    def end(self, t0: float, level: str | None) -> None:
        dt = time.perf_counter() - t0
        self.engine.load.finished(dt)
        self.engine.metrics.record("dihs_queue_depth", self.engine.load.queue_depth)
        if level is not None:
            self.engine.metrics.record("dihs_request_duration_seconds", dt, level=level)


class EngineBackend:
    """The HTTP routes' backend in the replica's own process: texts go to `submit` (the replica's
    Batcher, or None: straight to Engine.run, as unit tests and the benchmark's model-only runs do).

    A request's texts enter and leave together; each text counts in the load tracker from arrival
    to answer."""

    def __init__(self, engine: Engine, model_name: str, submit=None):
        self.engine, self.tracked, self.info = engine, Tracked(engine), ModelInfo.of(engine, model_name)
        self.submit = submit

    async def classify(self, items: list[Item], timing: dict | None = None) -> list[dict]:
        self.engine.controller.arrived(len(items), overlapped=self.engine.load.queue_depth > 0)
        t0s = [self.tracked.begin() for _ in items]
        results: list[dict] = []
        try:
            if self.submit is None:
                results = self.engine.run(items, timing)
                self.engine.shadow()  # as the batcher does once no batch waits
            else:
                results = await self.submit(items, timing)
        finally:
            for i, t0 in enumerate(t0s):
                self.tracked.end(t0, results[i]["level"] if results else None)
        return results

    async def explain(self, item: Item, attention: bool = True) -> dict:
        if self.submit is None:
            return self.engine.explain(item, attention)
        # not batched and not counted as load: a diagnostic call, off the event loop
        return await asyncio.to_thread(self.engine.explain, item, attention)

    async def ready(self) -> bool:
        return True

    def auto_status(self) -> dict:
        return self.engine.auto_status()
