"""The calibrate stage: score heads and FFN neurons, store both in importance order, build the
width ladder, fit the cascade plans, report the complexity signals and count where int8 and
bfloat16 answer differently from float32 (dtype_choice.py), on the calibration split.
"""

from __future__ import annotations

import torch

from .budget import DEFAULT_ALLOCATION, Allocator, Budget
from .importance import NEURON_SCORERS, ordered, score_units, unit_order
from .levels import build_ladder
from .surgery import reorder


def sample_of(examples, max_examples: int):
    step = max(1, len(examples) // max_examples)
    return examples.subset(list(range(0, len(examples), step))[:max_examples])


def calibrate_bundle(
    bundle,
    examples,
    order_by: str = "michel",
    max_examples: int = 512,
    batch_size: int = 32,
    progress: bool = True,
    allocation: str = DEFAULT_ALLOCATION,
    dtypes: str = "all",
):
    """Score heads and neurons on `examples`, store both in `order_by` order, rebuild the ladder and
    the cascade plans, and count the texts int8 and bfloat16 answer differently
    (dtype_choice.measure_agreement) on every plan auto may serve (dtypes "all"), on the full model
    only ("full": an early bundle's) or not at all ("none"). Returns a new Bundle (the input
    bundle's model is not modified)."""
    assert dtypes in ("all", "full", "none"), dtypes
    from .bundle import Bundle
    from .complexity import ComplexityScorer
    from .dtype_choice import measure_agreement

    assert order_by in NEURON_SCORERS, order_by
    sample = sample_of(examples, max_examples)
    batches = list(bundle.batches(sample, batch_size))
    scores = score_units(bundle.model, batches, progress)
    token_batches = [
        (ids.cpu(), m.cpu()) for _, ids, m, _ in batches
    ]  # token statistics are CPU work, as in serving
    tokens = [int(t) for _, m in token_batches for t in m.sum(1).tolist()]
    h_order, n_order = unit_order(scores["heads"][order_by]), unit_order(scores["neurons"][order_by])
    now = ordered(scores, h_order, n_order)
    old_h, old_n = bundle.meta["head_order"], bundle.meta["neuron_order"]
    shape = bundle.model.shape
    allocator = Allocator(shape, tokens, allocation, now["heads"][order_by], now["neurons"][order_by])
    meta = {
        **bundle.meta,
        "head_order": [[old_h[layer][p] for p in row] for layer, row in enumerate(h_order)],
        "neuron_order": [[old_n[layer][p] for p in row] for layer, row in enumerate(n_order)],
        "order_by": order_by,
        "allocation": allocation,
        "importance": {kind: {name: s.tolist() for name, s in by.items()} for kind, by in now.items()},
        "calibration": {"examples": len(sample), "tokens": tokens},
        "levels": build_ladder(allocator),
    }
    scorer = ComplexityScorer.fit(bundle.tokenizer, token_batches)
    meta["complexity"] = scorer.to_meta()
    out = Bundle(reorder(bundle.model, h_order, n_order), bundle.tokenizer, meta, bundle.kwon_model)
    meta["cascade"] = fit_cascade(out, examples, allocator, scorer, batch_size)
    if dtypes != "none":
        meta["dtype_agreement"] = measure_agreement(out, examples, batch_size, full_only=dtypes == "full")
    else:  # counts of the weights before these would be stale
        meta.pop("dtype_agreement", None)
    return out


def fit_cascade(bundle, examples, allocator: Allocator, scorer, batch_size: int = 32) -> dict:
    """The DIHS cascade plans for every target, how well each complexity signal predicts a small
    budget's errors (signals.py), and the accuracy of each ladder level and of each plan's passes,
    on all calibration examples."""
    from .cascade import TARGETS, fit_plans, paired_counts, plans_to_meta
    from .passes import Passes
    from .signals import signal_report

    labels = torch.tensor(examples.labels)
    passes = Passes(bundle.model, list(bundle.batches(examples, batch_size)), len(labels))
    plans = fit_plans(passes, labels, allocator, TARGETS)
    meta = plans_to_meta(plans, len(labels), signal_report(passes, labels, allocator, scorer))
    budgets = [Budget.from_meta(lv) for lv in bundle.meta["levels"]]
    budgets += [b for p in plans for b in (p.first, p.second) if b is not None]
    meta["level_accuracy"] = {
        b.name: round(float((passes(b).preds == labels).float().mean()), 4) for b in budgets
    }
    full = passes(None).preds  # the single-pass plan's bound needs its paired counts too
    meta["level_paired"] = {b.name: list(paired_counts(full, passes(b).preds, labels)) for b in budgets}
    return meta
