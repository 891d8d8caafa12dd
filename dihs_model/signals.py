"""Which complexity signal predicts a small budget's errors best, and what it costs.

Measured on the calibration split (held out from training) against the errors of the 25 %-FLOPs
width budget: the AUROC with which each signal ranks the inputs that budget gets wrong first (0.5 is
chance), and its cost as a share of the dense forward's FLOPs.

- length, subword rate and their mean (`complexity.py`): token statistics, no model call;
- probe after layer k: 1 - max probability of a logistic-regression probe on the mean-pooled
  hidden state after k full-head layers (two-fold cross-fitted on the calibration split);
- small pass at r: minus the top-two logit margin of the model at r of the FLOPs: the cascade's signal,
  whose work is also the answer for every input it does not escalate.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold

from .budget import Allocator
from .passes import Passes

PROBE_LAYERS = (1, 2)
SMALL_PASS_RATIOS = (0.1, 0.25)  # FLOPs
REFERENCE_RATIO = 0.25  # the budget whose errors every signal is scored against


def _auroc(wrong: np.ndarray, risk: np.ndarray) -> float | None:
    return float(roc_auc_score(wrong, risk)) if 0 < wrong.sum() < len(wrong) else None


@torch.no_grad()
def _pooled(model, batches, n: int, k: int) -> np.ndarray:
    feats = np.zeros((n, model.shape.hidden), dtype=np.float32)
    for idx, ids, mask, _ in batches:
        x = model.hidden(ids, mask, n_layers=k)
        m = mask.unsqueeze(-1).to(x.dtype)
        feats[idx] = ((x * m).sum(1) / m.sum(1).clamp_min(1.0)).float().cpu().numpy()
    return feats


def _probe_confidence(feats: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """Max probability of a probe fitted on the other fold, per input (None: too few examples)."""
    conf = np.zeros(len(labels))
    for fit_idx, held_idx in KFold(2, shuffle=True, random_state=0).split(feats):
        if len(set(labels[fit_idx])) < 2:
            return None
        probe = LogisticRegression(max_iter=2000).fit(feats[fit_idx], labels[fit_idx])
        conf[held_idx] = probe.predict_proba(feats[held_idx]).max(1)
    return conf


def signal_report(passes: Passes, labels: torch.Tensor, allocator: Allocator, scorer) -> dict:
    """{signal: {"auroc", "flops_share"}} on the passes' (calibration) batches."""
    model, batches = passes.model, passes.batches
    n, shape = len(labels), model.shape
    y = labels.numpy()
    wrong = passes(allocator(REFERENCE_RATIO)).preds.numpy() != y
    tokens = np.zeros(n)
    cheap = {"length": np.zeros(n), "subword_rate": np.zeros(n), "length_and_subword": np.zeros(n)}
    for idx, ids, mask, _ in batches:
        for i, s in zip(idx, scorer.signals(ids.cpu(), mask.cpu())):
            tokens[i] = s["tokens"]
            cheap["length"][i], cheap["subword_rate"][i] = s["length_percentile"], s["subword_percentile"]
            cheap["length_and_subword"][i] = s["score"]
    report = {name: {"auroc": _auroc(wrong, v), "flops_share": 0.0} for name, v in cheap.items()}
    for k in PROBE_LAYERS:
        conf = _probe_confidence(_pooled(model, batches, n, k), y)
        report[f"probe_after_layer_{k}"] = {
            "auroc": None if conf is None else _auroc(wrong, 1 - conf),
            "flops_share": round(k / shape.n_layers, 4),
        }
    for r in SMALL_PASS_RATIOS:
        budget = allocator(r)
        small = passes(budget)
        share = budget.flops_ratio(shape, tokens.astype(int).tolist())
        report[f"small_pass_{share:.2f}"] = {
            "auroc": _auroc(wrong, -small.conf.numpy()),  # conf: the logit margin
            "flops_share": round(share, 4),
        }
    return {
        "reference": f"errors at {REFERENCE_RATIO:.0%} of the FLOPs",
        "errors": int(wrong.sum()),
        "n": n,
        "signals": {
            k: {
                "auroc": None if v["auroc"] is None else round(v["auroc"], 4),
                "flops_share": v["flops_share"],
            }
            for k, v in report.items()
        },
    }
