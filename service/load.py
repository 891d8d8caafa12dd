"""Load pressure in [0, 1] from queue depth, latency against the SLO and (on a GPU) utilization.

Raw pressure is the largest of three terms:
  queue:   texts in flight at this replica beyond one model batch (those wait for a batch in
           flight, not just for their own) / queue capacity
  latency: 0 while the latency EWMA is under half the SLO, 1 at the SLO
  gpu:     0 under 80% utilization, 1 at 100%
The published pressure follows the raw one with hysteresis: it rises fast and falls slowly
(asymmetric smoothing), and it does not move for changes smaller than a dead band, so a steady
load gives a steady pressure and a steady budget, not an oscillating one. When the replica is
idle the latency EWMA decays, so pressure returns to 0 after load ends.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class LoadConfig:
    slo_s: float
    queue_capacity: int
    batch: int = 1  # texts in flight that are no pressure: one model batch (the replica's max batch size)
    latency_alpha: float = 0.2  # EWMA weight of a new latency sample
    rise: float = 0.6  # smoothing weight toward a higher raw pressure
    fall: float = 0.15  # smoothing weight toward a lower one
    deadband: float = 0.05
    idle_decay_s: float = 1.0  # time constant of the latency EWMA's decay while idle


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


class LoadTracker:
    """Thread-safe; one per model replica."""

    def __init__(self, cfg: LoadConfig, clock: Callable[[], float] = time.monotonic,
                 gpu_utilization: Callable[[], float | None] = lambda: None):
        self.cfg = cfg
        self._clock = clock
        self._gpu = gpu_utilization
        self._lock = threading.Lock()
        self._depth = 0
        self._latency = 0.0
        self._last = clock()
        self._pressure = 0.0

    @property
    def queue_depth(self) -> int:
        return self._depth

    def started(self) -> None:
        with self._lock:
            self._decay()
            self._depth += 1

    def finished(self, latency_s: float) -> None:
        with self._lock:
            self._decay()
            self._depth = max(0, self._depth - 1)
            a = self.cfg.latency_alpha
            self._latency = a * latency_s + (1 - a) * self._latency

    def _decay(self) -> None:
        now = self._clock()
        if self._depth == 0:
            self._latency *= math.exp(-(now - self._last) / self.cfg.idle_decay_s)
        self._last = now

    def terms(self) -> dict[str, float]:
        slo = self.cfg.slo_s
        # one batch in flight is no pressure: the queue term counts what waits behind it
        t = {"queue": _clamp((self._depth - self.cfg.batch) / self.cfg.queue_capacity),
             "latency": _clamp((self._latency / slo - 0.5) / 0.5)}
        gpu = self._gpu()
        if gpu is not None:
            t["gpu"] = _clamp((gpu - 0.8) / 0.2)
        return t

    def pressure(self) -> float:
        """Update and return the published pressure (call once per batch)."""
        with self._lock:
            self._decay()
            raw = max(self.terms().values())
            gap = raw - self._pressure
            if abs(gap) > self.cfg.deadband or raw == 0.0:
                w = self.cfg.rise if gap > 0 else self.cfg.fall
                self._pressure = _clamp(self._pressure + w * gap)
                if self._pressure < 0.01:
                    self._pressure = 0.0
            return self._pressure

    @property
    def published(self) -> float:
        """The pressure the last batch got, read without updating anything (explanations use it)."""
        return self._pressure

    def snapshot(self) -> dict:
        return {"pressure": round(self._pressure, 4), "queue_depth": self._depth,
                "latency_ewma_ms": round(self._latency * 1e3, 2), **{k: round(v, 4) for k, v in self.terms().items()}}
