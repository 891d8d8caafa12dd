"""The DIHS per-input policy: a confidence cascade over head budgets.

Every input first runs a small budget (a prefix of the importance-ordered heads); the inputs
whose prediction at that budget is least confident run again at a larger budget. Confidence is
the logit margin between the top two classes: unlike the max probability it does not saturate
at 1.0 in float32 (on reuters-r8 most probabilities did, and ties broke the thresholds). The
small pass's confidence is the complexity signal: on election-tweets it predicts the small budget's errors
with AUROC ~0.9, where length and rare-word rates score ~0.52 (see the issue note). Heads are
counted honestly: an escalated input computed the small pass's heads *and* the second pass's.
When a plan runs, its threshold follows the traffic (EscalationTracker), so it spends its target
heads ratio even where traffic is less confident than the calibration split.

For a target mean heads ratio r, a plan picks the first-pass budget r0 <= r, the second-pass
budget r1 > r0, and the confidence threshold that escalates a fraction (r - r0) / r1 of the
calibration inputs (held out from training), choosing the (r0, r1) whose answers agree most often
with the full model's (then: the best accuracy). Agreement is the steadier criterion on a few
hundred calibration inputs: accuracy also rewards a plan for luck on the inputs that the full
model gets wrong. Passes at every candidate budget run once; the search itself is arithmetic.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import asdict, dataclass, fields

import torch

from .levels import prefix_counts
from .surgery import as_prefix, input_flops

FIRST_PASS_RATIOS = (0.08, 0.1, 0.15, 0.2, 0.25, 0.35)  # 0.08: one head per layer in MiniLM
SECOND_PASS_RATIOS = (0.4, 0.5, 0.75, 1.0)
TARGETS = (0.75, 0.5, 0.4, 0.3, 0.25)
TARGET_TOLERANCE = 0.02  # a plan's mean heads on the calibration split must be this close to its target
CONFIDENCE = "logit_margin"  # stored with the plans: thresholds of another confidence do not apply
TRACK_WARMUP = 64  # inputs seen before the live quantile replaces the calibrated threshold
TRACK_WINDOW = 2048  # the threshold follows this many recent first-pass confidences
ARRIVAL_SEED = 0  # evaluation replays its inputs in one seeded random order, as traffic would come


@dataclass(frozen=True)
class CascadePlan:
    target_ratio: float
    first_heads: list[int]  # per-layer head counts of the first pass
    first_ratio: float
    threshold: float  # escalate when the first pass's logit margin is at most this
    calib_escalated: float  # fraction escalated on the calibration split
    calib_accuracy: float
    calib_agreement: float = 1.0  # share of calibration inputs answered as the full model answers them
    second_heads: list[int] | None = None  # per-layer head counts of the second pass (None: all heads)
    second_ratio: float = 1.0


@dataclass
class PassResult:
    preds: torch.Tensor  # [N], on the CPU
    conf: torch.Tensor  # [N] logit margin of the top two classes, on the CPU
    tokens: list[int]  # real tokens per input, for FLOPs


@torch.no_grad()
def run_pass(model, batches, heads, n: int) -> PassResult:
    """One forward pass at `heads` (None: all) over length-sorted batches, results in input order."""
    preds, conf, tokens = torch.zeros(n, dtype=torch.long), torch.zeros(n), [0] * n
    for idx, ids, mask, _ in batches:
        top2 = model(ids, mask, heads=heads).logits.float().topk(2, dim=-1)
        preds[idx], conf[idx] = top2.indices[:, 0].cpu(), (top2.values[:, 0] - top2.values[:, 1]).cpu()
        for i, t in zip(idx, mask.sum(1).tolist()):
            tokens[i] = t
    return PassResult(preds, conf, tokens)


class Passes:
    """Passes over fixed batches, each selection run once: calibration asks for the same budgets
    several times (plans, then the signal report), evaluation for the same selection in several rows."""

    def __init__(self, model, batches, n: int):
        self.model, self.batches, self.n = model, batches, n
        self._done: dict[tuple[int, ...] | None, PassResult] = {}

    def __call__(self, heads) -> PassResult:
        """heads: a Selection (per-layer counts or head lists), None for all heads. Head lists that are
        prefixes run as counts, so a static order's selection and the same ladder budget run once."""
        if heads is not None:
            heads = as_prefix(heads) or heads
        key = None if heads is None else tuple(h if isinstance(h, int) else tuple(h) for h in heads)
        if key not in self._done:
            self._done[key] = run_pass(self.model, self.batches, heads, self.n)
        return self._done[key]


def _budgets(ordered_scores: torch.Tensor, ratios) -> dict[float, list[int] | None]:
    """Measured heads ratio -> per-layer counts (None for all heads), one entry per distinct budget."""
    total = ordered_scores.numel()
    out = {}
    for r in ratios:
        heads = None if r >= 1.0 else prefix_counts(ordered_scores, r)
        out.setdefault(1.0 if heads is None else sum(heads) / total, heads)
    return out


def fit_plans(passes: Passes, labels: torch.Tensor, ordered_scores: torch.Tensor, targets) -> list[CascadePlan]:
    """Plans for each target ratio in (0, 1), fitted on held-out calibration batches."""
    n = len(labels)
    full = passes(None).preds
    firsts, seconds = _budgets(ordered_scores, FIRST_PASS_RATIOS), _budgets(ordered_scores, SECOND_PASS_RATIOS)
    plans = []
    for target in targets:
        best = None
        for r0, h0 in sorted(firsts.items()):
            first = passes(h0)
            sorted_conf = first.conf.sort().values
            # ties: the larger second pass
            for r1, h1 in sorted(((r, h) for r, h in seconds.items() if r > r0), key=lambda x: x[0], reverse=True):
                f = (target - r0) / r1  # each escalation costs a second pass at r1
                if not 0 <= f <= 1:  # this pair cannot spend exactly the target
                    continue
                k = round(f * n)  # escalate the k least confident calibration inputs
                thr = float(sorted_conf[k - 1]) if k > 0 else -1.0
                esc = first.conf <= thr
                if abs(r0 + float(esc.float().mean()) * r1 - target) > TARGET_TOLERANCE:
                    continue  # tied confidences escalated more than k
                preds = torch.where(esc, passes(h1).preds, first.preds)
                acc, agree = float((preds == labels).float().mean()), float((preds == full).float().mean())
                if best is None or (agree, acc) > (best.calib_agreement + 1e-12, best.calib_accuracy + 1e-12):
                    best = CascadePlan(target, h0, r0, thr, float(esc.float().mean()), acc, agree, h1, r1)
        if best is not None:
            plans.append(best)
    return plans


class EscalationTracker:
    """Holds a plan's escalated share, and so its mean heads, on live traffic.

    A calibrated threshold assumes traffic as confident as the calibration split; where it is less
    (20newsgroups' test posts are later than its training posts), a fixed threshold escalates more
    inputs and overspends heads (0.54 for a 0.5 target). The tracker escalates an input when its
    first-pass confidence is at most the plan's escalated-share quantile of the recent confidences;
    the calibrated threshold serves until TRACK_WARMUP inputs have been seen. Each decision uses only
    inputs that came before it: no look-ahead.
    """

    def __init__(self, plan: CascadePlan):
        self.share = min(1.0, max(0.0, (plan.target_ratio - plan.first_ratio) / plan.second_ratio))
        self.threshold = float("inf") if self.share >= 1.0 else plan.threshold  # escalate all: nothing to track
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
    known = {f.name for f in fields(CascadePlan)}
    for p in meta["cascade"].get("plans", []):
        if abs(p["target_ratio"] - target) < 1e-9:
            return CascadePlan(**{k: v for k, v in p.items() if k in known})
    return None


def plans_to_meta(plans: list[CascadePlan], n_calib: int, signals: dict) -> dict:
    """signals: `signals.signal_report` on the same calibration split."""
    return {"method": "confidence cascade: first pass at a small budget, escalate the least confident to a larger one",
            "confidence": CONFIDENCE, "calibration_examples": n_calib, "signals": signals,
            "plans": [asdict(p) for p in plans]}


def run_cascade(model, batches, plan: CascadePlan, shape, n: int, track: bool = True,
                first: PassResult | None = None) -> tuple[torch.Tensor, float, float, float]:
    """Predictions, mean heads ratio, FLOPs ratio and escalated fraction of a plan on these inputs.

    track: decide escalations with an EscalationTracker, the inputs arriving in a seeded random
    order (an input's answer does not depend on its batch); False: the calibrated threshold alone.
    first: the first pass over these batches, if already run.
    """
    first = first or run_pass(model, batches, plan.first_heads, n)
    if track:
        tracker, esc = EscalationTracker(plan), torch.zeros(n, dtype=torch.bool)
        for i in torch.randperm(n, generator=torch.Generator().manual_seed(ARRIVAL_SEED)).tolist():
            esc[i] = tracker(float(first.conf[i]))
    else:
        esc = first.conf <= plan.threshold
    preds = first.preds.clone()
    if esc.any():
        second = run_pass(model, list(_subset_batches(batches, esc)), plan.second_heads, n)
        preds[esc] = second.preds[esc]
    tokens = first.tokens
    escalated_tokens = [t for t, e in zip(tokens, esc.tolist()) if e]  # these pay the second pass too
    flops = (sum(input_flops(shape, plan.first_heads, tokens)) + sum(input_flops(shape, plan.second_heads, escalated_tokens))
             ) / sum(input_flops(shape, None, tokens))
    total, second_counts = shape.total_heads, plan.second_heads or [shape.n_heads] * shape.n_layers
    escalated = float(esc.float().mean())
    heads_ratio = sum(plan.first_heads) / total + escalated * sum(second_counts) / total
    return preds, heads_ratio, flops, escalated


def _subset_batches(batches, keep: torch.Tensor):
    for idx, ids, mask, y in batches:
        sel = [j for j, i in enumerate(idx) if keep[i]]
        if sel:
            T = int(mask[sel].sum(1).max())
            yield [idx[j] for j in sel], ids[sel, :T], mask[sel, :T], y[sel]
