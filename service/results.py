"""One text's answer: what its passes gave (Served), what they cost (pass_cost), the protocol.Result
fields made of both (result_fields), the per-text metrics of a result (record_result) and the
per-batch metrics (record_batch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dihs_model.budget import Budget


@dataclass(frozen=True)
class Served:
    """What one text's passes gave: its answer's logits, the passes run in order (None: the full
    model), why, and for a cascade the first pass's margin, the threshold it met and whether it
    escalated."""

    logits: torch.Tensor
    passes: list[Budget | None]
    reason: str
    plan: str | None = None  # auto texts: the plan's name
    margin: float | None = None
    threshold: float | None = None
    escalated: bool = False


def rounded(x: float | None) -> float | None:
    """A margin or threshold as a Result shows it: 4 decimals, None where unset or infinite."""
    return None if x is None or not math.isfinite(x) else round(x, 4)


def pass_cost(shape, passes: list[Budget | None], tokens: int) -> dict:
    """What the passes an input ran cost it: heads and neurons summed per layer, FLOPs of them all
    over the full model's at its length, and each pass."""
    full = Budget.full(shape)
    passes = [b or full for b in passes]
    heads = [sum(x) for x in zip(*(b.heads for b in passes))]
    neurons = [sum(x) for x in zip(*(b.neurons for b in passes))]
    heads_total, neurons_total = shape.total_heads, shape.ffn * shape.n_layers
    dense = full.flops(shape, tokens)
    return {
        "heads": {
            "active": sum(heads),
            "total": heads_total,
            "ratio": round(sum(heads) / heads_total, 4),
            "per_layer": heads,
        },
        "neurons": {
            "active": sum(neurons),
            "total": neurons_total,
            "ratio": round(sum(neurons) / neurons_total, 4),
            "per_layer": neurons,
        },
        "flops_ratio": round(sum(b.flops(shape, tokens) for b in passes) / dense, 4),
        "passes": [
            {
                "budget": b.name,
                "flops_ratio": round(b.flops(shape, tokens) / dense, 4),
                "heads": list(b.heads),
                "neurons": list(b.neurons),
            }
            for b in passes
        ],
    }


def result_fields(
    s: Served, labels: list[str], shape, signal: dict, pressure: float, truncated: bool, tokens: int
) -> dict:
    """The protocol.Result fields of one served text."""
    cost = pass_cost(shape, s.passes, tokens)
    p = s.logits.softmax(-1)
    return {
        "label": labels[int(p.argmax())],
        "probabilities": {name: round(float(x), 6) for name, x in zip(labels, p)},
        **cost,
        "plan": s.plan,
        "margin": rounded(s.margin),
        "threshold": rounded(s.threshold),
        "escalated": s.escalated,
        "complexity": signal["score"],
        "pressure": round(pressure, 4),
        "level": cost["passes"][-1]["budget"],
        "reason": s.reason,
        "truncated": truncated,
    }


def record_result(metrics, r: dict) -> None:
    """The per-text metrics of one result."""
    metrics.record("dihs_active_heads", r["heads"]["active"])
    metrics.record("dihs_active_heads_ratio", min(1.0, r["heads"]["ratio"]))
    metrics.record("dihs_active_neurons_ratio", min(1.0, r["neurons"]["ratio"]))
    metrics.record("dihs_flops_ratio", r["flops_ratio"])
    metrics.record("dihs_budget_level", 1, level=r["level"])
    metrics.record("dihs_input_complexity", r["complexity"])


def record_batch(metrics, size: int, pressure: float, target: float, plan_costs: dict[str, float]) -> None:
    """The per-batch metrics: its size, the load pressure, the plan's FLOPs target, and each plan's
    cost per text (re-set every batch: Ray's agent drops a gauge left unset)."""
    metrics.record("dihs_batch_size", size)
    metrics.record("dihs_load_pressure", pressure)
    metrics.record("dihs_plan_flops_target", target)
    for name, cost in plan_costs.items():
        metrics.record("dihs_plan_cost_seconds", cost, plan=name)
