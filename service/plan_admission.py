"""Which of the candidate plans `auto` serves now: the full model always; another plan while the 95%
bound on its accuracy loss (dihs_model.admission) is within `max_accuracy_loss`, the calibration
split's paired counts pooled with the plan's recent live agreement with the full model (shadow.py).

Live agreement is kept per plan as a window of the last `window` comparisons and persisted beside
the bundle (`live-agreement.json` in the bundle's folder, or the file Settings.agreement_file
names), so a restarted replica starts from the counts its predecessor had. The file is keyed by the
bundle's checksum: counts of another bundle are never applied. Replicas sharing a folder each write
their own window over the file (the last writer's counts are the ones a restart reads); a folder
that cannot be written leaves the counts in memory, said once in the log.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from dihs_model.admission import CONFIDENCE, Evidence, texts_needed

log = logging.getLogger("dihs.admission")

LIVE_WINDOW = 2000  # live comparisons per plan that count: older ones age out (drift shows within this many)
SAVE_EVERY_S = 5.0


class PlanAdmission:
    """Thread-safe. names[i] and evidence[i] for each candidate plan; index 0 is the full model
    (evidence None: always served). `early`: the bundle is `dihs train`'s early one, whose plans are
    the plainly fine-tuned model's slices: none but the full model is admitted, whatever the counts."""

    def __init__(
        self,
        names: list[str],
        evidence: list[Evidence | None],
        max_accuracy_loss: float,
        store: Path | None = None,
        bundle_id: str = "",
        window: int = LIVE_WINDOW,
        clock=time.monotonic,
        early: bool = False,
    ):
        assert evidence and evidence[0] is None and len(names) == len(evidence)
        self.names, self.max_accuracy_loss, self.early = list(names), max_accuracy_loss, early
        self.progress = ""  # early: how far the width training has got, in words (replica.watch_upgrade)
        self._calib, self._store, self._bundle_id, self._clock = list(evidence), store, bundle_id, clock
        self._live: list[deque[bool]] = [deque(maxlen=window) for _ in names]
        self._lock = threading.RLock()  # evidence() reads the windows record() extends (shadow thread)
        self._saved_at = clock()
        self._unwritable = False
        self._load()
        self._admitted = self._decide()

    def evidence(self, i: int) -> Evidence | None:
        """Plan i's evidence now, live window included (None for the full model)."""
        e = self._calib[i]
        if e is None:
            return None
        with self._lock:
            live = self._live[i]
            return e.with_live(len(live), live.count(False))

    def admitted(self) -> list[bool]:
        return list(self._admitted)

    def _decide(self) -> list[bool]:
        return [True] + [
            not self.early and self.evidence(i).admitted(self.max_accuracy_loss)
            for i in range(1, len(self.names))
        ]

    def record(self, i: int, agreed: list[bool]) -> list[int]:
        """Plan i answered len(agreed) live texts, agreeing with the full model where True. Returns
        the plans whose admission this changed (logged)."""
        with self._lock:
            self._live[i].extend(agreed)
            before, self._admitted = self._admitted, self._decide()
            changed = [k for k, (a, b) in enumerate(zip(before, self._admitted)) if a != b]
            if self._clock() - self._saved_at >= SAVE_EVERY_S:
                self._save()
        for k in changed:
            e = self.evidence(k)
            log.warning(
                "plan %s %s: loss bound %.4f on %d texts (%d live, %d disagreeing), max_accuracy_loss %g",
                self.names[k],
                "admitted" if self._admitted[k] else "withdrawn",
                e.bound,
                e.texts,
                e.live_n,
                e.live_disagree,
                self.max_accuracy_loss,
            )
        return changed

    def report(self) -> dict:
        """What /v2/models/{name}/config and the start-up log say of the plans auto may serve."""
        plans = []
        for i, name in enumerate(self.names):
            e = self.evidence(i)
            plans.append(
                {"plan": name, "admitted": True, "reason": "the full model"}
                if e is None
                else {"plan": name, **e.report(self.max_accuracy_loss), "admitted": self._admitted[i]}
            )
        far = f" ({self.progress})" if self.progress else ""
        early = {
            "width_training": f"in progress{far}: the full model only until the width-trained bundle is in"
        }
        return {
            **(early if self.early else {}),
            "max_accuracy_loss": self.max_accuracy_loss,
            "confidence": CONFIDENCE,
            "texts_needed_if_all_agree": texts_needed(self.max_accuracy_loss),
            "rule": "a plan is served while the one-sided 95% upper bound on its accuracy loss against "
            "the full model (calibration texts only the full model gets right, plus live texts it answered "
            "differently, over all those texts) is within max_accuracy_loss",
            "plans": plans,
        }

    def summary(self) -> str:
        """One line for the start-up log."""
        if self.early:
            return "auto serves the full model only: width training in progress (an early bundle)"
        parts = []
        for i in range(1, len(self.names)):
            e = self.evidence(i)
            parts.append(
                f"{self.names[i]} {'in' if self._admitted[i] else 'out'} "
                f"(bound {e.bound:.3f} on {e.calib_n}+{e.live_n} texts)"
            )
        need = texts_needed(self.max_accuracy_loss)
        return (
            f"auto serves plans whose 95% loss bound is within {self.max_accuracy_loss:g} "
            f"(at least {need} agreeing texts each): " + ("; ".join(parts) or "no plans: full model only")
        )

    # --- persistence ---

    def _load(self) -> None:
        if self._store is None or not self._store.is_file():
            return
        try:
            saved = json.loads(self._store.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning(
                "live agreement %s unreadable (%s): starting from the calibration split alone", self._store, e
            )
            return
        if saved.get("bundle") != self._bundle_id:
            log.warning("live agreement %s is of another bundle: not applied", self._store)
            return
        for i, name in enumerate(self.names):
            self._live[i].extend(ch == "1" for ch in saved.get("plans", {}).get(name, ""))
        log.info("live agreement restored from %s", self._store)

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        self._saved_at = self._clock()
        if self._store is None or self._unwritable:
            return
        body = {
            "bundle": self._bundle_id,
            "window": self._live[0].maxlen,
            "plans": {
                name: "".join("1" if a else "0" for a in live)
                for name, live in zip(self.names, self._live)
                if live
            },
        }
        tmp = self._store.with_name(f".{self._store.name}.{os.getpid()}.tmp")
        try:  # written whole, then renamed over: a reader never sees half a file
            tmp.write_text(json.dumps(body), encoding="utf-8")
            os.replace(tmp, self._store)
        except OSError as e:
            self._unwritable = True
            log.warning("live agreement not persisted (%s): counts kept in memory only", e)
