"""Load -> plan: which of the served plans (full model, cascades by falling FLOPs target, the cheapest
single pass) auto-mode texts run now.

Each plan's capacity comes from its batch times measured on this replica at start-up (seconds per
batch at a few batch sizes, a cascade's second pass weighted by how many texts of a batch escalate):
the most texts per second it serves in batches that each take at most `batch_share` of the SLO (a
text waits for the batch in flight, then runs in its own), with a per-text overhead observed while
serving added to every batch: the EWMA of what a served batch took beyond its measured passes, per
text (tokenizing, the answers, and the HTTP work that shares the replica's core, which is per request,
so the same for every plan). The EWMA weighs a batch more the longer it has been since the last one
(time constant `overhead_tau_s`): the overhead an overload inflated is replaced by the first batch
after a quiet spell, not carried into the next load (traffic in fixed or dense mode never updates it).
A plan that serves no more than a more
accurate one buys nothing and is never picked (on a CPU, a cascade's two passes at small batches can
cost more time than the full model). Over the plans left, ordered by accuracy, two inputs, each monotone:
- the arrival rate (texts/s over the last `window_s`): the most accurate plan whose capacity, times
  `utilization`, covers it (more arrivals never pick a costlier plan). It counts only while requests
  overlap: when every request in the window arrived with none other in flight, the clients wait for
  each answer before they send again, so their rate is the served plan's speed, not a demand (a
  client sending one request at a time to a cheap plan would otherwise keep it there for good, its
  rate being more than the full model serves); any plan then serves them without a queue;
- the load pressure (queue depth, latency against the SLO, GPU utilization; load.py): pressure p
  allows no plan costlier than rung floor(p * (n - 1)) of the n plans (more pressure never picks a
  costlier plan).
The cheaper of the two wins: with no pressure and arrivals the full model serves, the full model
answers; arrivals past the full model's capacity take a cheaper plan before a queue builds (a queue
would cost every text in it its latency, and the pressure it makes picks a cheaper plan than the
rate needs). Hysteresis: a cheaper plan is taken at once, a costlier one only after
it has been the answer for `hold_s` without a break, so a load near a boundary does not flap; after
`hold_s` with no batch at all the plan in use holds nothing back, and the wanted plan is taken
at once (an idle replica does not start the next load on the last overload's plan).
Pure Python with an injected clock: tested without Ray or a model.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

BatchTimes = Mapping[int, float]  # batch size -> seconds one batch of a plan takes


@dataclass(frozen=True)
class ControllerConfig:
    # share of a plan's capacity the arrival rate may fill: under Poisson arrivals a plan meets a p99
    # objective below the rate it sustains (the load tests in docs/results.md were run at 0.85)
    utilization: float = 0.85
    window_s: float = 2.0  # the arrival rate is measured over this many recent seconds
    hold_s: float = 3.0  # a costlier plan must be wanted this long before it is taken
    slo_s: float = 0.25  # the latency objective
    batch_share: float = 0.3  # a batch may take at most this share of the SLO
    overhead_alpha: float = 0.1  # EWMA weight of a served batch's per-text overhead, batches back to back
    overhead_tau_s: float = 2.0  # a batch this long after the last one weighs 1 - 1/e (63%) at least
    # plans whose 95% loss bound is above this are not served (plan_admission.py; 1: every plan; the
    # service's default is Settings.max_accuracy_loss)
    max_accuracy_loss: float = 1.0


def batch_seconds(times: BatchTimes, b: float) -> float:
    """Seconds of a batch of b texts: linear between the measured batch sizes (beyond them, the
    nearest measured per-text cost)."""
    sizes = sorted(times)
    if b <= 0:
        return 0.0
    if b <= sizes[0]:
        return times[sizes[0]] * b / sizes[0]
    for lo, hi in zip(sizes, sizes[1:]):
        if b <= hi:
            return times[lo] + (times[hi] - times[lo]) * (b - lo) / (hi - lo)
    return times[sizes[-1]] * b / sizes[-1]


def capacity(times: BatchTimes, limit_s: float) -> float:
    """Texts per second a plan serves in batches of at most limit_s each (its smallest batch's rate
    where no batch is that fast: the model is too slow for the SLO, and the order still holds)."""
    fit = [b / t for b, t in times.items() if t <= limit_s]
    return max(fit) if fit else min(times) / times[min(times)]


class PlanController:
    """Thread-safe; one per replica. plan_times: each plan's BatchTimes, most accurate plan first."""

    def __init__(
        self,
        plan_times: Sequence[BatchTimes],
        cfg: ControllerConfig = ControllerConfig(),
        clock: Callable[[], float] = time.monotonic,
        admitted: Sequence[bool] | None = None,
    ):
        assert plan_times and all(t and all(s > 0 for s in t.values()) for t in plan_times), plan_times
        self.plan_times, self.cfg, self._clock = [dict(t) for t in plan_times], cfg, clock
        self.admit([True] * len(plan_times) if admitted is None else admitted)
        self._arrivals: deque[tuple[float, int]] = deque()
        self._last_overlap = -math.inf  # when a request last arrived with another in flight
        self._lock = threading.Lock()
        self._current = 0
        self._wanted_since: float | None = (
            None  # when a costlier plan than the current one began to be wanted
        )
        self._last_choice = -math.inf  # when choose() last ran
        self.overhead_s = 0.0  # seconds per text a served batch takes beyond its measured passes (EWMA)
        self._last_observed = -math.inf  # when observed() last ran

    @property
    def current(self) -> int:
        return self._current

    def capacities(self) -> list[float]:
        """Texts/s each plan serves within the batch time limit, the observed overhead included."""
        limit, o = self.cfg.batch_share * self.cfg.slo_s, self.overhead_s
        return [capacity({b: s + o * b for b, s in t.items()}, limit) for t in self.plan_times]

    def observed(self, plan: int, texts: int, seconds: float) -> None:
        """A batch of `texts` auto texts ran `plan` in `seconds`, everything of Engine.run included."""
        if texts <= 0:
            return
        extra = max(0.0, seconds - batch_seconds(self.plan_times[plan], texts)) / texts
        with self._lock:  # at most 50 ms a text: one stalled batch cannot blind the controller
            now = self._clock()
            quiet = (now - self._last_observed) / self.cfg.overhead_tau_s
            a = max(self.cfg.overhead_alpha, 1.0 - math.exp(-quiet))
            self.overhead_s = min(0.05, (1 - a) * self.overhead_s + a * extra)
            self._last_observed = now

    def admit(self, admitted: Sequence[bool]) -> None:
        """Which plans may be picked at all (plan admission; the full model always)."""
        assert len(admitted) == len(self.plan_times)
        self.admitted = (True, *admitted[1:])

    def usable(self, caps: list[float] | None = None) -> list[int]:
        """The admitted plans worth picking, most accurate first: each serves more than every more
        accurate one (`caps`: capacities() already computed)."""
        out, best = [], 0.0
        for i, c in enumerate(self.capacities() if caps is None else caps):
            if c > best and self.admitted[i]:
                out.append(i)
                best = c
        return out

    def arrived(self, texts: int, overlapped: bool = True) -> None:
        """A request of `texts` arrived; `overlapped`: another request was in flight at this replica."""
        with self._lock:
            now = self._clock()
            self._arrivals.append((now, texts))
            if overlapped:
                self._last_overlap = now

    def rate(self) -> float:
        """Texts per second over the last window (0 when no request in it overlapped another)."""
        with self._lock:
            return self._rate(self._clock())

    def _rate(self, now: float) -> float:
        while self._arrivals and self._arrivals[0][0] < now - self.cfg.window_s:
            self._arrivals.popleft()
        if self._last_overlap < now - self.cfg.window_s:
            return 0.0
        return sum(n for _, n in self._arrivals) / self.cfg.window_s

    def wanted(self, pressure: float, rate: float) -> int:
        """The plan the load asks for, before hysteresis (index into the plans, 0 = the full model)."""
        caps = self.capacities()
        usable = self.usable(caps)
        n = len(usable)
        by_pressure = usable[min(n - 1, math.floor(min(1.0, pressure) * (n - 1)))]
        by_rate = next((i for i in usable if rate <= self.cfg.utilization * caps[i]), usable[-1])
        return max(by_pressure, by_rate)

    def _next(self, now: float, want: int) -> tuple[int, float | None]:
        """(plan, since when a costlier one is wanted) after this decision."""
        if (
            want >= self._current or now - self._last_choice >= self.cfg.hold_s
        ):  # cheaper, or after idle: at once
            return want, None
        since = now if self._wanted_since is None else self._wanted_since
        return (want, None) if now - since >= self.cfg.hold_s else (self._current, since)

    def choose(self, pressure: float) -> int:
        """Update and return the plan for the next batch."""
        with self._lock:
            now = self._clock()
            self._current, self._wanted_since = self._next(now, self.wanted(pressure, self._rate(now)))
            self._last_choice = now
            return self._current

    def peek(self, pressure: float) -> int:
        """What `choose(pressure)` would return now, changing nothing (explanations use it)."""
        with self._lock:
            now = self._clock()
            return self._next(now, self.wanted(pressure, self._rate(now)))[0]
