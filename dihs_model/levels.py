"""The budget ladder: a few fixed head budgets (levels) that requests are mapped to.

A small ladder lets batches group by level (one sliced forward per group) and lets a GPU keep
one graph per level. Each level keeps, per layer, a prefix of the importance-ordered heads,
allocated by global ranking (Michel 2019), so layers that matter more keep more heads.
"""

from __future__ import annotations

import torch

from .surgery import allocate_heads, as_prefix

LADDER = (1.0, 0.75, 0.5, 0.35, 0.25)


def prefix_counts(ordered_scores: torch.Tensor, ratio: float) -> list[int]:
    """Per-layer head counts keeping `ratio` of all heads, from scores [L, H] descending in each layer."""
    heads = as_prefix(allocate_heads(ordered_scores, ratio))
    assert heads is not None, "scores must be in stored (importance) order"
    return heads


def build_ladder(ordered_scores: torch.Tensor, ratios: tuple[float, ...] = LADDER) -> list[dict]:
    """Levels from scores [L, H] that are already descending within each layer."""
    total = ordered_scores.numel()
    levels = []
    for ratio in ratios:
        heads = prefix_counts(ordered_scores, ratio)
        levels.append({"name": f"h{round(ratio * 100)}", "target_ratio": ratio,
                       "heads": heads, "heads_ratio": sum(heads) / total})
    return levels


class LadderPolicy:
    """A bundle's ladder, complexity scorer and policy together: the budget decision for encoded
    inputs, shared by the service's engine and `dihs explain`."""

    def __init__(self, meta: dict, tokenizer, policy=None):
        from .complexity import ComplexityScorer
        from .policy import PolicyConfig

        self.levels = meta["levels"]
        self.ratios = [lv["heads_ratio"] for lv in self.levels]
        self.scorer = ComplexityScorer.from_meta(meta, tokenizer)
        self.policy = policy or PolicyConfig.from_meta(meta)

    def decide(self, ids: torch.Tensor, mask: torch.Tensor, pressure: float, limits: list[tuple[str, float, float]]):
        """(complexity signals, decisions) per input; limits: (mode, min_ratio, max_ratio) per input."""
        from .policy import choose_level

        signals = self.scorer.signals(ids, mask)
        return signals, [choose_level(self.ratios, s["score"], pressure, mode, lo, hi, self.policy)
                         for s, (mode, lo, hi) in zip(signals, limits)]

    def heads_of(self, level: int) -> list[int] | None:
        """The per-layer head counts of a level (None: the full model, its bit-exact path)."""
        return None if level == 0 else self.levels[level]["heads"]
