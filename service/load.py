"""Load pressure in [0, 1] from queue depth, latency against the SLO and (on a GPU) utilization.

Raw pressure is the largest of three terms:
  queue:   texts in flight at this replica beyond one model batch (those wait for a batch in
           flight, not just for their own) / queue capacity
  latency: 0 while the latency EWMA is under half the SLO, 1 at the SLO
  gpu:     0 under 80% utilization, 1 at 100%
The published pressure follows the raw one with hysteresis in time, not per batch: it moves toward
the raw pressure by 1 - exp(-dt / tau) over dt seconds, with a short time constant upward and a
longer one downward (asymmetric smoothing), and it does not move for changes smaller than a dead
band, so a steady load gives a steady pressure and a steady budget, not an oscillating one. With
no traffic the latency EWMA decays and the published pressure falls toward 0 with `fall_tau_s`,
whether or not a batch runs: the first text after a quiet spell sees the pressure of now, not of
the last burst (per-batch smoothing left 0.83 after a burst and 60 s of silence).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadConfig:
    slo_s: float
    queue_capacity: int
    batch: int = 1  # texts in flight that are no pressure: one model batch (the replica's max batch size)
    latency_alpha: float = 0.2  # EWMA weight of a new latency sample
    rise_tau_s: float = 0.1  # time constant toward a higher raw pressure
    fall_tau_s: float = 1.0  # toward a lower one: after 5 s of quiet a burst's 1.0 is under 0.01, so 0
    deadband: float = 0.05
    idle_decay_s: float = 1.0  # time constant of the latency EWMA's decay while idle

    @classmethod
    def for_replica(cls, slo_s: float, batch: int) -> LoadConfig:
        """A replica's: a backlog of two batches waiting beyond the one running is full pressure."""
        return cls(slo_s=slo_s, queue_capacity=2 * batch, batch=batch)


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


class LoadTracker:
    """Thread-safe; one per model replica."""

    def __init__(
        self,
        cfg: LoadConfig,
        clock: Callable[[], float] = time.monotonic,
        gpu_utilization: Callable[[], float | None] = lambda: None,
    ):
        self.cfg = cfg
        self.clock = clock
        self._gpu = gpu_utilization
        self._lock = threading.Lock()
        self._depth = 0
        self._latency = 0.0
        self._last = clock()
        self._pressure = 0.0
        self._pressure_at = self._last  # when _pressure was last moved toward the raw pressure

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

    def _latency_at(self, now: float) -> float:
        """The latency EWMA at `now`: it decays while the replica is idle."""
        if self._depth == 0:
            return self._latency * math.exp(-(now - self._last) / self.cfg.idle_decay_s)
        return self._latency

    def _decay(self) -> None:
        now = self.clock()
        self._latency = self._latency_at(now)
        self._last = now

    def terms(self, latency: float | None = None) -> dict[str, float]:
        """The raw pressure's terms, at the stored latency EWMA unless given another."""
        slo = self.cfg.slo_s
        latency = self._latency if latency is None else latency
        # one batch in flight is no pressure: the queue term counts what waits behind it
        t = {
            "queue": _clamp((self._depth - self.cfg.batch) / self.cfg.queue_capacity),
            "latency": _clamp((latency / slo - 0.5) / 0.5),
        }
        gpu = self._gpu()
        if gpu is not None:
            t["gpu"] = _clamp((gpu - 0.8) / 0.2)
        return t

    def pressure(self) -> float:
        """Update and return the published pressure (each batch calls it; any caller may)."""
        with self._lock:
            self._decay()
            self._pressure = self._relaxed(self._last, self._latency)
            self._pressure_at = self._last
            return self._pressure

    def _relaxed(self, now: float, latency: float) -> float:
        """The published pressure moved toward the raw one over the time since it was last moved."""
        raw = max(self.terms(latency).values())
        gap = raw - self._pressure
        if abs(gap) <= self.cfg.deadband and raw > 0.0:
            return self._pressure
        tau = self.cfg.rise_tau_s if gap > 0 else self.cfg.fall_tau_s
        p = _clamp(self._pressure + (1.0 - math.exp(-max(0.0, now - self._pressure_at) / tau)) * gap)
        return 0.0 if p < 0.01 else p

    @property
    def published(self) -> float:
        """The pressure a batch starting now would get, read without updating anything (explanations
        and metrics use it)."""
        with self._lock:
            now = self.clock()
            return self._relaxed(now, self._latency_at(now))

    def snapshot(self) -> dict:
        return {
            "pressure": round(self.published, 4),
            "queue_depth": self._depth,
            "latency_ewma_ms": round(self._latency * 1e3, 2),
            **{k: round(v, 4) for k, v in self.terms().items()},
        }
