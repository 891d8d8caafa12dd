"""The DIHS per-input policy: a confidence cascade over width budgets.

Every input first runs a small budget (a prefix of the importance-ordered heads and FFN neurons);
the inputs whose prediction at that budget is least confident run again at a larger budget.
Confidence is the logit margin between the top two classes: unlike the max probability it does not
saturate at 1.0 in float32. The small pass's confidence is the complexity signal (signals.py
measures it against the token statistics). Cost is counted honestly, in FLOPs: an escalated input
paid for the first pass *and* the second. When a plan runs, its threshold follows the traffic
(EscalationTracker), so it spends its target FLOPs ratio even where traffic is less confident than
the calibration split.

For a target mean FLOPs ratio r, a plan picks the first-pass budget r0 < r, the second-pass budget
r1 > r0, and the confidence threshold that escalates a fraction (r - r0) / r1 of the calibration
inputs (held out from training), choosing the (r0, r1) whose answers agree most often with the full
model's (then: the best accuracy). Agreement is the steadier criterion on a few hundred calibration
inputs: accuracy also rewards a plan for luck on the inputs that the full model gets wrong. Passes
at every candidate budget run once; the search itself is arithmetic.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

import torch

from .admission import Evidence
from .budget import Allocator, Budget
from .passes import Passes, PassResult, forward_grouped, margin, run_pass

FIRST_PASS_RATIOS = (0.1, 0.15, 0.2, 0.25)  # FLOPs
SECOND_PASS_RATIOS = (0.35, 0.5, 0.75, 1.0)
TARGETS = (0.75, 0.5, 0.4, 0.3, 0.25)
TARGET_TOLERANCE = 0.02  # a plan's mean FLOPs ratio on the calibration split must be this close to its target
CONFIDENCE = "logit_margin"  # stored with the plans: thresholds of another confidence do not apply
TRACK_WARMUP = 64  # inputs seen before the live quantile replaces the calibrated threshold
TRACK_WINDOW = 2048  # the threshold follows this many recent first-pass confidences
ARRIVAL_SEED = 0  # evaluation replays its inputs in one seeded random order, as traffic would come


@dataclass(frozen=True)
class CascadePlan:
    target_flops_ratio: float
    first: Budget
    first_ratio: float  # FLOPs ratio of the first pass at the calibration lengths
    threshold: float  # escalate when the first pass's logit margin is at most this
    calib_escalated: float  # fraction escalated on the calibration split
    calib_accuracy: float
    calib_agreement: float = 1.0  # share of calibration inputs answered as the full model answers them
    second: Budget | None = None  # None: the full model
    second_ratio: float = 1.0
    calib_flops_ratio: float = 0.0  # both passes counted, on the calibration split
    # paired counts on the calibration split (None: a bundle calibrated before they were stored)
    calib_full_only: int | None = None  # texts only the full model answers right
    calib_plan_only: int | None = None  # texts only this plan answers right

    def to_meta(self) -> dict:
        return {
            "target_flops_ratio": self.target_flops_ratio,
            "first": self.first.counts_meta(),
            "first_ratio": self.first_ratio,
            "threshold": self.threshold,
            "calib_escalated": self.calib_escalated,
            "calib_accuracy": self.calib_accuracy,
            "calib_agreement": self.calib_agreement,
            "second": None if self.second is None else self.second.counts_meta(),
            "second_ratio": self.second_ratio,
            "calib_flops_ratio": self.calib_flops_ratio,
            "calib_full_only": self.calib_full_only,
            "calib_plan_only": self.calib_plan_only,
        }

    @classmethod
    def from_meta(cls, d: dict) -> CascadePlan:
        return cls(
            d["target_flops_ratio"],
            Budget.from_meta(d["first"]),
            d["first_ratio"],
            d["threshold"],
            d["calib_escalated"],
            d["calib_accuracy"],
            d["calib_agreement"],
            None if d["second"] is None else Budget.from_meta(d["second"]),
            d["second_ratio"],
            d.get("calib_flops_ratio", 0.0),
            d.get("calib_full_only"),
            d.get("calib_plan_only"),
        )


def candidate_budgets(allocator: Allocator, ratios) -> dict[float, Budget | None]:
    """Measured FLOPs ratio -> budget (None for the full model), one entry per distinct budget."""
    out = {}
    for r in ratios:
        b = None if r >= 1.0 else allocator(r)
        out.setdefault(1.0 if b is None else allocator.ratio(b), b)
    return out


def cascade_flops(
    shape, first: Budget, second: Budget | None, tokens: list[int], escalated: list[bool]
) -> float:
    """Mean FLOPs ratio of a cascade over inputs of these lengths: every input pays the first pass,
    the escalated ones the second pass too."""
    full = Budget.full(shape)
    second = second or full
    spent = sum(
        first.flops(shape, t) + (second.flops(shape, t) if e else 0.0) for t, e in zip(tokens, escalated)
    )
    return spent / sum(full.flops(shape, t) for t in tokens)


def fit_plans(passes: Passes, labels: torch.Tensor, allocator: Allocator, targets) -> list[CascadePlan]:
    """Plans for each target FLOPs ratio in (0, 1), fitted on held-out calibration batches."""
    n, shape = len(labels), passes.model.shape
    full = passes(None).preds
    firsts = candidate_budgets(allocator, FIRST_PASS_RATIOS)
    seconds = candidate_budgets(allocator, SECOND_PASS_RATIOS)
    plans = []
    for target in targets:
        best = None
        for r0, b0 in sorted(firsts.items()):
            first = passes(b0)
            sorted_conf = first.conf.sort().values
            # ties: the larger second pass
            for r1, b1 in sorted(
                ((r, b) for r, b in seconds.items() if r > r0), key=lambda x: x[0], reverse=True
            ):
                f = (target - r0) / r1  # each escalation costs a second pass at r1
                if not 0 <= f <= 1:  # this pair cannot spend exactly the target
                    continue
                k = round(f * n)  # escalate the k least confident calibration inputs
                thr = float(sorted_conf[k - 1]) if k > 0 else -1.0
                esc = first.conf <= thr
                spent = cascade_flops(shape, b0, b1, first.tokens, esc.tolist())
                if abs(spent - target) > TARGET_TOLERANCE:
                    continue  # tied confidences, or escalated inputs longer than the average
                preds = torch.where(esc, passes(b1).preds, first.preds)
                acc, agree = float((preds == labels).float().mean()), float((preds == full).float().mean())
                if best is None or (agree, acc) > (best.calib_agreement + 1e-12, best.calib_accuracy + 1e-12):
                    best = CascadePlan(
                        target,
                        b0,
                        r0,
                        thr,
                        float(esc.float().mean()),
                        acc,
                        agree,
                        b1,
                        r1,
                        spent,
                        *paired_counts(full, preds, labels),
                    )
        if best is not None:
            plans.append(best)
    return plans


def paired_counts(full: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(texts only the full model answers right, texts only `preds` answers right)."""
    full_right, right = full == labels, preds == labels
    return int((full_right & ~right).sum()), int((right & ~full_right).sum())


class EscalationTracker:
    """Holds a plan's escalated share, and so its mean FLOPs, on live traffic.

    A calibrated threshold assumes traffic as confident as the calibration split; where it is less
    (20newsgroups' test posts are later than its training posts), a fixed threshold escalates more
    inputs and overspends (0.54 of the heads for a 0.5 target). The tracker escalates an input when its
    first-pass confidence is at most the plan's escalated-share quantile of the recent confidences;
    the calibrated threshold serves until TRACK_WARMUP inputs have been seen. Each decision uses only
    inputs that came before it: no look-ahead.
    """

    def __init__(self, plan: CascadePlan):
        self.share = min(1.0, max(0.0, (plan.target_flops_ratio - plan.first_ratio) / plan.second_ratio))
        self.threshold = (
            float("inf") if self.share >= 1.0 else plan.threshold
        )  # escalate all: nothing to track
        self._recent: deque[float] = deque(maxlen=TRACK_WINDOW)
        self._sorted: list[float] = []

    def __call__(self, conf: float) -> bool:
        escalate = conf <= self.threshold
        if len(self._recent) == self._recent.maxlen:
            del self._sorted[bisect.bisect_left(self._sorted, self._recent[0])]
        self._recent.append(conf)
        bisect.insort(self._sorted, conf)
        if self.share < 1.0 and len(self._sorted) >= TRACK_WARMUP:
            k = round(self.share * len(self._sorted))
            self.threshold = self._sorted[k - 1] if k > 0 else float("-inf")
        return escalate


def has_current_plans(meta: dict) -> bool:
    """Whether the bundle's plans use this code's confidence (older bundles: recalibrate)."""
    return meta.get("cascade", {}).get("confidence") == CONFIDENCE


def plan_from_meta(meta: dict, target: float) -> CascadePlan | None:
    """The bundle's plan for `target` (None: no plan, or no current plans)."""
    if not has_current_plans(meta):
        return None
    for p in meta["cascade"].get("plans", []):
        if abs(p["target_flops_ratio"] - target) < 1e-9:
            return CascadePlan.from_meta(p)
    return None


def plans_to_meta(plans: list[CascadePlan], n_calib: int, signals: dict) -> dict:
    """signals: `signals.signal_report` on the same calibration split."""
    return {
        "method": "confidence cascade: first pass at a small width budget, "
        "escalate the least confident to a larger one",
        "confidence": CONFIDENCE,
        "calibration_examples": n_calib,
        "signals": signals,
        "plans": [p.to_meta() for p in plans],
    }


@dataclass(frozen=True)
class CascadeRun:
    preds: torch.Tensor
    flops_ratio: float  # both passes of escalated inputs counted, at the inputs' real lengths
    heads_ratio: float  # mean heads computed per input over all heads, both passes counted
    neurons_ratio: float
    escalated: float


def run_cascade(
    model, batches, plan: CascadePlan, n: int, track: bool = True, first: PassResult | None = None
) -> CascadeRun:
    """A plan on these inputs.

    track: decide escalations with an EscalationTracker, the inputs arriving in a seeded random
    order (an input's answer does not depend on its batch); False: the calibrated threshold alone.
    first: the first pass over these batches, if already run.
    """
    shape = model.shape
    first = first or run_pass(model, batches, plan.first, n)
    if track:
        tracker, esc = EscalationTracker(plan), torch.zeros(n, dtype=torch.bool)
        for i in arrival_order(n):
            esc[i] = tracker(float(first.conf[i]))
    else:
        esc = first.conf <= plan.threshold
    preds = first.preds.clone()
    if esc.any():
        second = run_pass(model, list(_subset_batches(batches, esc)), plan.second, n)
        preds[esc] = second.preds[esc]
    escalated = float(esc.float().mean())
    second = plan.second or Budget.full(shape)
    return CascadeRun(
        preds,
        cascade_flops(shape, plan.first, plan.second, first.tokens, esc.tolist()),
        plan.first.heads_ratio(shape) + escalated * second.heads_ratio(shape),
        plan.first.neurons_ratio(shape) + escalated * second.neurons_ratio(shape),
        escalated,
    )


def _subset_batches(batches, keep: torch.Tensor):
    for idx, ids, mask, y in batches:
        sel = [j for j, i in enumerate(idx) if keep[i]]
        if sel:
            T = int(mask[sel].sum(1).max())
            yield [idx[j] for j in sel], ids[sel, :T], mask[sel, :T], y[sel]


def arrival_order(n: int) -> list[int]:
    """The one seeded order in which evaluation (and the tests that compare it with the service)
    present n inputs, as traffic would bring them."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(ARRIVAL_SEED)).tolist()


def single_pass_plan(
    budget: Budget,
    ratio: float,
    accuracy: float = 0.0,
    full_only: int | None = None,
    plan_only: int | None = None,
) -> CascadePlan:
    """A plan that never escalates: one pass at `budget` (FLOPs ratio `ratio`; `accuracy` and the
    paired counts on the calibration split, 0 and None where they were not measured)."""
    return CascadePlan(
        ratio,
        budget,
        ratio,
        float("-inf"),
        0.0,
        accuracy,
        second_ratio=1.0,
        calib_flops_ratio=ratio,
        calib_full_only=full_only,
        calib_plan_only=plan_only,
    )


def candidate_plans(meta: dict) -> list[CascadePlan | None]:
    """What auto mode may run, costliest and most accurate first: the full model (None), the bundle's
    cascade plans by falling target, then the cheapest first pass alone. Which of them it serves is
    admission's call (plan_evidence, admission.py)."""
    plans = sorted(
        (CascadePlan.from_meta(p) for p in meta["cascade"]["plans"]), key=lambda p: -p.target_flops_ratio
    )
    if not plans:
        return [None]
    cheapest = min(plans, key=lambda p: p.first_ratio)
    levels = meta["cascade"].get("level_accuracy", {})
    paired = meta["cascade"].get("level_paired", {}).get(cheapest.first.name, (None, None))
    single = single_pass_plan(
        cheapest.first, cheapest.first_ratio, levels.get(cheapest.first.name, 0.0), *paired
    )
    return [None, *plans, single]


def plan_label(plan: CascadePlan | None) -> str:
    """How the service, its metrics and `dihs eval` name a candidate plan."""
    if plan is None:
        return "full"
    return (
        f"single {plan.first.name}"
        if plan.threshold == float("-inf")
        else f"cascade {plan.target_flops_ratio:g}"
    )


def admission_report(meta: dict, max_accuracy_loss: float) -> list[dict]:
    """Per candidate plan but the full model: what its calibration evidence alone admits (the
    service adds live agreement to it)."""
    return [
        {
            "plan": plan_label(p),
            "target_flops_ratio": p.target_flops_ratio,
            **plan_evidence(meta, p).report(max_accuracy_loss),
        }
        for p in candidate_plans(meta)[1:]
    ]


def plan_evidence(meta: dict, plan: CascadePlan) -> Evidence:
    """What the calibration split says of a plan against the full model: its paired counts, or for a
    bundle calibrated before they were stored, its disagreements (they bound the loss too); none at
    all (0 texts: never admitted under a bound) for a single pass whose answers were not compared."""
    n = int(meta["cascade"].get("calibration_examples", 0))
    if plan.calib_full_only is not None:
        return Evidence(n, plan.calib_full_only, plan.calib_plan_only or 0)
    if plan.threshold == float("-inf"):
        return Evidence(0, 0, 0)
    return Evidence(n, round((1.0 - plan.calib_agreement) * n), 0)


@dataclass
class CascadeOutput:
    logits: list[torch.Tensor]  # per row, the last pass's (float32, CPU)
    margins: list[float]  # per row, the first pass's top-two logit margin
    thresholds: list[float]  # per row, the tracker's threshold its margin was held against
    escalated: list[bool]


def cascade_batch(
    model, ids: torch.Tensor, mask: torch.Tensor, plan: CascadePlan, tracker: EscalationTracker, device=None
) -> CascadeOutput:
    """A plan on one right-padded model batch, rows in arrival order: every row runs the first pass;
    the tracker decides, row by row, which run the second pass (grouped, trimmed to their longest)."""
    first = forward_grouped(model, ids, mask, [plan.first] * len(ids), device)
    _, margins = margin(torch.stack(first))
    margins = margins.tolist()
    thresholds, escalated = [], []
    for m in margins:
        thresholds.append(tracker.threshold)
        escalated.append(tracker(m))
    out = list(first)
    idx = [i for i, e in enumerate(escalated) if e]
    if idx:
        for i, row in zip(idx, forward_grouped(model, ids[idx], mask[idx], [plan.second] * len(idx), device)):
            out[i] = row
    return CascadeOutput(out, margins, thresholds, escalated)
