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
