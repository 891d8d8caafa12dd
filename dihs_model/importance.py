"""Head importance on a calibration set, and the head order it implies.

- michel:    E_x |dL(x)/dm_h|, normalised per layer (Michel et al. 2019, "Are Sixteen Heads
             Really Better than One?"): a first-order estimate of the loss change from removing h.
- fisher:    sum_x (dL(x)/dm_h)^2, the Fisher information of the head mask (Kwon et al. 2022).
- attention: mean over tokens of the head's maximum attention weight, the "confidence" of
             Voita et al. 2019; needs no labels.

m is a head-mask variable at 1 (all heads on); gradients are per example ([B, L, H] masks).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .budgeted import BudgetedClassifier
from .device import model_device

SCORERS = ("michel", "fisher", "attention")
Batch = tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]  # (indices, ids, mask, labels)


def mask_gradients(model: BudgetedClassifier, batches: Iterable[Batch]) -> torch.Tensor:
    """Per-example gradient of the loss w.r.t. the head mask: [N, L, H]."""
    L, H = model.shape.n_layers, model.shape.n_heads
    grads = []
    for _, ids, mask, labels in batches:
        m = torch.ones(ids.shape[0], L, H, device=model_device(model), requires_grad=True)
        loss = F.cross_entropy(model(ids, mask, head_mask=m).logits, labels, reduction="sum")
        (g,) = torch.autograd.grad(loss, m)
        grads.append(g)
    return torch.cat(grads)


def michel_scores(grads: torch.Tensor) -> torch.Tensor:
    score = grads.abs().mean(0)  # [L, H]
    return score / score.norm(dim=1, keepdim=True).clamp_min(1e-12)


def fisher_scores(grads: torch.Tensor) -> torch.Tensor:
    return grads.pow(2).sum(0)


@torch.no_grad()
def attention_scores(model: BudgetedClassifier, batches: Iterable[Batch]) -> torch.Tensor:
    """Mean (over real query tokens of all examples) of each head's max attention weight: [L, H]."""
    total, tokens = None, 0.0
    for _, ids, mask, _ in batches:
        att = model(ids, mask, output_attentions=True).attentions  # L x [B, H, T, T]
        conf = torch.stack([a.max(dim=-1).values for a in att], dim=1)  # [B, L, H, T]
        real = mask[:, None, None, :].to(conf.dtype)
        s = (conf * real).sum(dim=(0, 3))
        total = s if total is None else total + s
        tokens += float(mask.sum())
    return total / tokens


def score_heads(model: BudgetedClassifier, batches: list[Batch], progress: bool = True) -> dict[str, torch.Tensor]:
    """All three scores, [L, H] CPU tensors each, for the heads in their current stored positions."""
    was_training = model.training
    model.eval()
    it = tqdm(batches, desc="calibrate", unit="batch", disable=not progress)
    grads = mask_gradients(model, it)
    scores = {"michel": michel_scores(grads), "fisher": fisher_scores(grads),
              "attention": attention_scores(model, batches)}
    model.train(was_training)
    return {name: s.cpu() for name, s in scores.items()}


def head_order(scores: torch.Tensor) -> list[list[int]]:
    """Per layer, head positions from most to least important."""
    return scores.argsort(dim=1, descending=True, stable=True).tolist()


def calibrate_bundle(bundle, examples, order_by: str = "michel", max_examples: int = 512,
                     batch_size: int = 32, progress: bool = True):
    """Score heads on `examples`, store the heads in `order_by` order, and rebuild the ladder.

    Returns a new Bundle (the input bundle's model is not modified).
    """
    from .bundle import Bundle
    from .complexity import ComplexityScorer
    from .levels import build_ladder
    from .surgery import reorder_heads

    assert order_by in SCORERS, order_by
    step = max(1, len(examples) // max_examples)
    sample = examples.subset(list(range(0, len(examples), step))[:max_examples])
    batches = list(bundle.batches(sample, batch_size))
    scores = score_heads(bundle.model, batches, progress)
    tokens = [(ids.cpu(), m.cpu()) for _, ids, m, _ in batches]  # token statistics are CPU work, as in serving
    order = head_order(scores[order_by])
    perm = torch.tensor(order)
    ordered = {name: s.gather(1, perm) for name, s in scores.items()}
    old = bundle.meta["head_order"]
    meta = {
        **bundle.meta,
        "head_order": [[old[l][p] for p in row] for l, row in enumerate(order)],
        "order_by": order_by,
        "importance": {name: s.tolist() for name, s in ordered.items()},
        "calibration": {"examples": len(sample)},
        "levels": build_ladder(ordered[order_by]),
    }
    scorer = ComplexityScorer.fit(bundle.tokenizer, tokens)
    meta["complexity"] = scorer.to_meta()
    out = Bundle(reorder_heads(bundle.model, order), bundle.tokenizer, meta)
    meta["cascade"] = fit_cascade(out, examples, ordered[order_by], scorer, batch_size)
    return out


def fit_cascade(bundle, examples, ordered_scores: torch.Tensor, scorer, batch_size: int = 32) -> dict:
    """The DIHS cascade plans for every target ratio, how well each complexity signal predicts a
    small budget's errors (signals.py), and each ladder level's accuracy, on all calibration examples."""
    from .cascade import TARGETS, Passes, fit_plans, plans_to_meta
    from .signals import signal_report

    labels = torch.tensor(examples.labels)
    passes = Passes(bundle.model, list(bundle.batches(examples, batch_size)), len(labels))
    plans = fit_plans(passes, labels, ordered_scores, TARGETS)
    meta = plans_to_meta(plans, len(labels), signal_report(passes, labels, ordered_scores, scorer))
    # the ladder's budgets are among the plans' budgets, so these passes already ran (all heads: None)
    full = [bundle.model.shape.n_heads] * bundle.model.shape.n_layers
    meta["level_accuracy"] = {
        lv["name"]: round(float((passes(None if lv["heads"] == full else lv["heads"]).preds == labels).float().mean()), 4)
        for lv in bundle.meta["levels"]}
    return meta
