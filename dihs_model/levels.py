"""The budget ladder: a few fixed width budgets (levels) that requests are mapped to.

A small ladder lets batches group by level (one sliced forward per group) and lets a GPU keep
one graph per level. Each level is a FLOPs target turned into heads and FFN neurons per layer by
the bundle's allocation (budget.py); its FLOPs ratio is measured at the calibration split's lengths.
"""

from __future__ import annotations

import torch

from .budget import Allocator, Budget

LADDER = (1.0, 0.75, 0.5, 0.35, 0.25)  # FLOPs targets


def build_ladder(allocator: Allocator, targets: tuple[float, ...] = LADDER) -> list[dict]:
    """Level records for dihs.json (budget counts and their measured ratios)."""
    return [allocator(t).to_meta(allocator.shape, allocator.tokens, target_flops_ratio=t) for t in targets]


class LadderPolicy:
    """A bundle's ladder, complexity scorer and policy together: the budget decision for encoded
    inputs, shared by the service's engine and `dihs explain`."""

    def __init__(self, meta: dict, tokenizer, policy=None):
        from .complexity import ComplexityScorer
        from .policy import PolicyConfig

        self.levels = meta["levels"]
        self.budgets = [Budget.from_meta(lv) for lv in self.levels]
        self.ratios = [lv["flops_ratio"] for lv in self.levels]
        self.scorer = ComplexityScorer.from_meta(meta, tokenizer)
        self.policy = policy or PolicyConfig.from_meta(meta)

    def decide(
        self, ids: torch.Tensor, mask: torch.Tensor, pressure: float, limits: list[tuple[str, float, float]]
    ):
        """(complexity signals, decisions) per input; limits: (mode, min_ratio, max_ratio) per input."""
        from .policy import choose_level

        signals = self.scorer.signals(ids, mask)
        return signals, [
            choose_level(self.ratios, s["score"], pressure, mode, lo, hi, self.policy)
            for s, (mode, lo, hi) in zip(signals, limits)
        ]

    def budget_of(self, level: int) -> Budget | None:
        """The budget of a level (None: the full model, its bit-exact path)."""
        return None if level == 0 else self.budgets[level]
