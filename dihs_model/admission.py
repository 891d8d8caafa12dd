"""Which plans `auto` may serve: those whose accuracy loss against the full model is bounded, at 95%
confidence, within `max_accuracy_loss`, not those whose point estimate is.

A plan's accuracy loss is P(full right, plan wrong) - P(plan right, full wrong), so it is at most
P(full right, plan wrong), which is at most P(plan and full answer differently). Both are rates of
an event counted on independent texts, and the one-sided Clopper-Pearson bound on such a rate is
exact whatever the counts are (0 events in 80 texts: 3.7%; in 598: 0.5%):
- on the labelled calibration split, the texts only the full model gets right;
- on live traffic, where labels are unknown, the texts a shadow pass answered differently from the
  full model (shadow.py). Disagreement needs no labels and bounds the loss from above, so live
  evidence can only be as strict as labelled evidence or stricter.
The two are pooled (events over texts): the bound tightens as agreeing traffic accumulates and
rises when live disagreement grows (drift), within the last `window` live texts, so old traffic
ages out. Bundles calibrated before the paired counts were stored fall back on their agreement
(disagreements bound the loss too); a plan with no evidence at all is not admitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import beta

CONFIDENCE = 0.95  # one-sided


def upper_bound(events: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound on an event's rate from `events` in `n` independent texts."""
    if n <= 0 or events >= n:
        return 1.0
    return float(beta.ppf(confidence, events + 1, n - events))


@dataclass(frozen=True)
class Evidence:
    """What is known of one plan against the full model."""

    calib_n: int  # calibration texts
    calib_worse: (
        int  # of them, the ones only the full model answers right (or, for old bundles, all disagreements)
    )
    calib_better: int  # the ones only the plan answers right (0 where not counted)
    live_n: int = 0  # live texts a shadow pass compared with the full model's answer (recent window)
    live_disagree: int = 0

    @property
    def texts(self) -> int:
        return self.calib_n + self.live_n

    @property
    def bound(self) -> float:
        """95% upper bound on the plan's accuracy loss, both kinds of evidence pooled."""
        return upper_bound(self.calib_worse + self.live_disagree, self.texts)

    @property
    def calib_loss(self) -> float:
        """Point estimate of the loss on the calibration split."""
        return (self.calib_worse - self.calib_better) / self.calib_n if self.calib_n else 0.0

    def with_live(self, n: int, disagree: int) -> Evidence:
        return Evidence(self.calib_n, self.calib_worse, self.calib_better, n, disagree)

    def admitted(self, max_accuracy_loss: float) -> bool:
        """1 (or more) admits every plan, as the CLI's `--max-accuracy-loss 1` means: no bound asked."""
        return max_accuracy_loss >= 1.0 or (self.texts > 0 and self.bound <= max_accuracy_loss)

    def report(self, max_accuracy_loss: float) -> dict:
        """What /v2/models/{name}/config, `dihs eval` and the serve log say of this plan."""
        return {
            "admitted": self.admitted(max_accuracy_loss),
            "loss_bound95": round(self.bound, 4),
            "calibration_texts": self.calib_n,
            "calibration_loss": round(self.calib_loss, 4),
            "calibration_worse": self.calib_worse,
            "calibration_better": self.calib_better,
            "live_texts": self.live_n,
            "live_disagreements": self.live_disagree,
        }


def texts_needed(max_accuracy_loss: float, confidence: float = CONFIDENCE) -> int:
    """The fewest texts, all agreeing, whose bound is within max_accuracy_loss (0.005: 598)."""
    if max_accuracy_loss >= 1.0:
        return 0
    # 0 events in n: the bound is 1 - (1 - confidence) ** (1 / n)
    return math.ceil(math.log(1.0 - confidence) / math.log(1.0 - max_accuracy_loss))
