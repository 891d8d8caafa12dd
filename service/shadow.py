"""Shadow passes: while a replica has spare capacity, the candidate plans also answer some of the
texts the full model just served, and their agreement feeds plan admission (plan_admission.py).

A shadow pass never changes an answer: it runs after the batch's answers are sent, when no other
batch waits, and only while auto is on the full model at zero load pressure. Its cost is capped:
`share` of the idle time (wall time on the full model at zero pressure, minus the time batches took)
accrues as a time balance, capped at `max_balance_s`; a shadow batch runs only when the balance
covers its estimated seconds (the plan's batch times measured at start-up), and its measured seconds
are taken off. A plan's gate (its EscalationTracker) sees the shadowed texts as live traffic, so the
agreement counted is that of the gate the plan would serve with.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from dihs_model.cascade import cascade_batch

from .controller import batch_seconds

DEFAULT_SHARE = 0.05


@dataclass
class Pending:
    """Texts the full model answered in auto mode, waiting for a shadow pass."""

    ids: object  # token ids, right-padded [B, T]
    mask: object
    preds: list[int]  # the full model's answers


class ShadowBudget:
    """Thread-safe time accounting of shadow passes; an injected clock for tests."""

    def __init__(self, share: float = DEFAULT_SHARE, max_balance_s: float = 0.1, clock=time.monotonic):
        self.share, self.max_balance_s, self._clock = share, max_balance_s, clock
        self._lock = threading.Lock()
        self._last = clock()
        self.balance_s = 0.0
        self.idle_s = 0.0  # idle seconds counted so far (what the share is of)
        self.spent_s = 0.0  # shadow seconds spent so far

    def tick(self, eligible: bool, busy_s: float = 0.0) -> None:
        """Time passes: while `eligible` (full model, no pressure) the idle part of it (minus `busy_s`
        spent on batches) accrues `share` of itself."""
        with self._lock:
            now = self._clock()
            if eligible and self.share > 0:
                idle = max(0.0, now - self._last - busy_s)
                self.idle_s += idle
                self.balance_s = min(self.max_balance_s, self.balance_s + self.share * idle)
            self._last = now

    def affords(self, estimate_s: float) -> bool:
        return self.share > 0 and self.balance_s >= estimate_s

    def spent(self, seconds: float) -> None:
        with self._lock:
            self.balance_s -= seconds
            self.spent_s += seconds


class Shadows:
    """An engine's shadow passes: `after_batch` keeps a full-model batch served at zero pressure,
    `run` (once no batch waits) runs the candidate plans on it in strict turns, as far as the budget
    covers, and feeds their agreement to the engine's plan admission. `engine` gives the plans, their
    gates and measured batch times, the model, the controller, the load tracker and the metrics."""

    def __init__(self, engine, share: float, clock=time.monotonic):
        self.engine = engine
        # the balance's cap covers one text of the costliest plan twice over: no turn waits forever
        one_text = max(batch_seconds(t, 1) for t in engine.plan_times)
        self.budget = ShadowBudget(share, max(0.1, 2 * one_text), clock=clock)
        self._pending: Pending | None = None
        self._next = 1  # the candidate plan whose turn is next
        for i in range(len(engine.plans)):
            self._record_admission(i)

    def after_batch(self, idle: bool, seconds: float, ids, mask, full_preds: list[int]) -> None:
        """A batch took `seconds`; `idle`: it ran the full model at zero pressure; ids/mask/full_preds:
        its auto texts that the full model answered."""
        before = self.budget.idle_s
        self.budget.tick(idle, seconds)
        if self.budget.idle_s > before:
            self.engine.metrics.record("dihs_shadow_idle_seconds", self.budget.idle_s - before)
        if idle and full_preds and self.budget.share > 0 and len(self.engine.plans) > 1:
            self._pending = Pending(ids, mask, full_preds)

    @torch.inference_mode()
    def run(self) -> None:
        e, (pending, self._pending) = self.engine, (self._pending, None)
        if pending is None or e.controller.current != 0 or e.load.published > 0.0:
            return
        others = len(e.plans) - 1
        for _ in range(others):  # strict turns: a costly plan waits for the balance, never skipped
            i, times = self._next, e.plan_times[self._next]
            fits = [
                k for k in range(1, len(pending.preds) + 1) if self.budget.affords(batch_seconds(times, k))
            ]
            if not fits:
                return
            rows, self._next = fits[-1], i % others + 1
            t0 = time.perf_counter()
            out = cascade_batch(
                e.model, pending.ids[:rows], pending.mask[:rows], e.plans[i], e.trackers[i], e.device
            )
            agreed = [int(logits.argmax()) == p for logits, p in zip(out.logits, pending.preds[:rows])]
            dt = max(batch_seconds(times, rows), time.perf_counter() - t0)  # at least its estimate
            self.budget.spent(dt)
            if e.admission.record(i, agreed):
                e.controller.admit(e.admission.admitted())
            name = e.plan_name(i)
            e.metrics.record("dihs_shadow_seconds", dt)
            e.metrics.record("dihs_plan_agreement_texts", len(agreed), plan=name)
            e.metrics.record("dihs_plan_agreement_disagreements", agreed.count(False), plan=name)
            self._record_admission(i)

    def _record_admission(self, i: int) -> None:
        e, name = self.engine, self.engine.plan_name(i)
        ev = e.admission.evidence(i)
        e.metrics.record("dihs_plan_admitted", float(e.controller.admitted[i]), plan=name)
        e.metrics.record("dihs_plan_loss_bound", 0.0 if ev is None else ev.bound, plan=name)
