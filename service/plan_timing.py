"""How long each plan takes on this replica: its passes timed on batches drawn from the calibration
split's text lengths, a cascade's second pass weighted by how many texts of a batch escalate. The
load controller (controller.py) picks plans by these times."""

from __future__ import annotations

import math
import random
import statistics

from dihs_model.bench import budget_costs
from dihs_model.budget import Budget
from dihs_model.passes import chunks_for

from .controller import batch_seconds


def sample_batches(
    tokens: list[int], batch: int, max_length: int, texts: int = 8, seed: int = 0
) -> list[list[int]]:
    """Batches of `batch` token counts drawn (seeded, with replacement) from these, each at most the
    model's max length: what a batch of that size may hold; as many batches as make `texts` texts
    (at least one), so small batches, whose time varies most with their texts, are averaged over more."""
    draws = max(1, texts // batch)
    rng = random.Random(seed + batch)
    xs = [max(1, min(t, max_length)) for t in tokens]
    return [rng.choices(xs, k=batch) for _ in range(draws)]


def _batch_seconds(model, budget: Budget | None, lengths: list[int], device) -> float:
    """One batch of these lengths at `budget`, in the chunks forward_grouped runs it in."""
    return sum(
        budget_costs(model, [budget], len(run), max(lengths[i] for i in run), repeats=1)[0] * len(run)
        for run in chunks_for(lengths, budget, model.shape, device)
    )


def measure_plan_times(
    model, plans, trackers, tokens: list[int], max_length: int, max_batch: int, device
) -> list[dict[int, float]]:
    """Seconds per batch of each plan, at batch sizes 1, 2, 4, ... up to max_batch: its passes timed
    on batches of that size drawn from `tokens` (sample_batches; the mean over the draws); a
    cascade's second pass as expected over how many texts of the batch escalate (binomial in the
    plan's escalated share, from its tracker)."""
    sizes = sorted({min(2**k, max_batch) for k in range(max_batch.bit_length() + 1)})
    budgets = list(
        {
            (None if b is None else b.key): b
            for p in plans
            for b in ([None] if p is None else [p.first, p.second])
        }.values()
    )
    times = {
        (None if x is None else x.key): {
            b: statistics.mean(
                _batch_seconds(model, x, lengths, device) for lengths in sample_batches(tokens, b, max_length)
            )
            for b in sizes
        }
        for x in budgets
    }
    out = []
    for p, tracker in zip(plans, trackers):
        if p is None:
            out.append(times[None])
            continue
        second = times[None if p.second is None else p.second.key]
        out.append(
            {
                b: times[p.first.key][b]
                + sum(
                    math.comb(b, k)
                    * tracker.share**k
                    * (1 - tracker.share) ** (b - k)
                    * batch_seconds(second, k)
                    for k in range(1, b + 1)
                )
                for b in sizes
            }
        )
    return out
