"""Load -> plan: which of the served plans (full model, cascades by falling FLOPs target, the cheapest
single pass) auto-mode texts run now.

Two inputs, each monotone:
- the arrival rate (texts/s over the last `window_s`) against each plan's cost per text, measured on
  this replica at start-up: the most accurate plan whose cost fits `utilization` of one replica's
  time at the current rate (more arrivals never pick a costlier plan);
- the load pressure (queue depth, latency against the SLO, GPU utilization; load.py): no pressure
  means the full model, and pressure p allows no plan costlier than rung floor(p * (n - 1)) of the n
  plans (more pressure never picks a costlier plan).
The cheaper of the two wins. Hysteresis: a cheaper plan is taken at once, a costlier one only after
it has been the answer for `hold_s` without a break, so a load near a boundary does not flap.
Pure Python with an injected clock: tested without Ray or a model.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ControllerConfig:
    utilization: float = 0.85  # share of one replica's time the chosen plan may fill at the arrival rate
    window_s: float = 2.0  # the arrival rate is measured over this many recent seconds
    hold_s: float = 3.0  # a costlier plan must be wanted this long before it is taken


class PlanController:
    """Thread-safe; one per replica. costs_s: seconds of compute per text of each plan, costliest first."""

    def __init__(self, costs_s: Sequence[float], cfg: ControllerConfig = ControllerConfig(),
                 clock: Callable[[], float] = time.monotonic):
        assert costs_s and all(c > 0 for c in costs_s), costs_s
        self.costs_s, self.cfg, self._clock = list(costs_s), cfg, clock
        self._arrivals: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self._current = 0
        self._wanted_since: float | None = None  # when a costlier plan than the current one began to be wanted

    @property
    def current(self) -> int:
        return self._current

    def arrived(self, texts: int) -> None:
        with self._lock:
            self._arrivals.append((self._clock(), texts))

    def rate(self) -> float:
        """Texts per second over the last window."""
        with self._lock:
            return self._rate(self._clock())

    def _rate(self, now: float) -> float:
        while self._arrivals and self._arrivals[0][0] < now - self.cfg.window_s:
            self._arrivals.popleft()
        return sum(n for _, n in self._arrivals) / self.cfg.window_s

    def wanted(self, pressure: float, rate: float) -> int:
        """The plan the load asks for, before hysteresis (index into the plans, 0 = the full model)."""
        if pressure <= 0.0:
            return 0
        n = len(self.costs_s)
        by_pressure = min(n - 1, math.floor(min(1.0, pressure) * (n - 1)))
        budget = math.inf if rate <= 0 else self.cfg.utilization / rate  # seconds of compute per text
        by_rate = next((i for i, c in enumerate(self.costs_s) if c <= budget), n - 1)
        return max(by_pressure, by_rate)

    def _next(self, now: float, want: int) -> tuple[int, float | None]:
        """(plan, since when a costlier one is wanted) after this decision."""
        if want >= self._current:  # as costly or cheaper: at once
            return want, None
        since = now if self._wanted_since is None else self._wanted_since
        return (want, None) if now - since >= self.cfg.hold_s else (self._current, since)

    def choose(self, pressure: float) -> int:
        """Update and return the plan for the next batch."""
        with self._lock:
            now = self._clock()
            self._current, self._wanted_since = self._next(now, self.wanted(pressure, self._rate(now)))
            return self._current

    def peek(self, pressure: float) -> int:
        """What `choose(pressure)` would return now, changing nothing (explanations use it)."""
        with self._lock:
            now = self._clock()
            return self._next(now, self.wanted(pressure, self._rate(now)))[0]
