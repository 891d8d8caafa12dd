"""Paired comparison of two policies' answers on the same inputs: is a gap in accuracy more than
the luck of which inputs were evaluated? Only the inputs the two answer differently carry
information: McNemar's exact test on them, and a normal 95% interval for the accuracy difference
(the mean of per-input differences in {-1, 0, 1}). At n = 2000 one input is 0.05 accuracy points."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.stats import binomtest

Z95 = 1.959964


def compare(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """a against b: accuracy difference (a - b), its 95% interval, the inputs only a gets right
    (`wins`) and only b gets right (`losses`), and McNemar's exact two-sided p-value."""
    if len(correct_a) != len(correct_b) or not correct_a:
        raise ValueError("compare needs two equally long, non-empty answer lists on the same inputs")
    wins = sum(1 for a, b in zip(correct_a, correct_b) if a and not b)
    losses = sum(1 for a, b in zip(correct_a, correct_b) if b and not a)
    return from_counts(wins, losses, len(correct_a))


def from_counts(wins: int, losses: int, n: int) -> dict:
    """`compare`'s result from its counts over n inputs; counts of independent test sets may be
    added (then n is their total): each set's discordant inputs are independent coins under equal
    accuracy."""
    diff = (wins - losses) / n
    half = Z95 * math.sqrt(max(0.0, (wins + losses) / n - diff * diff) / n)
    p = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    return {
        "accuracy_diff": diff,
        "ci95": [diff - half, diff + half],
        "wins": wins,
        "losses": losses,
        "p_value": float(p),
    }
