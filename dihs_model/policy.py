"""(complexity, load pressure, the request's own limits) -> a level of the budget ladder.

Pure and deterministic. Monotone: more complexity never lowers the budget, more pressure never
raises it. At zero pressure every request gets the full model; under pressure the budget falls
toward the ladder's smallest level, and complex inputs keep more FLOPs than simple ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("auto", "fixed", "dense")


@dataclass(frozen=True)
class PolicyConfig:
    protect: float = 0.5  # share of the cut that a maximally complex input is spared

    @classmethod
    def from_meta(cls, meta: dict) -> PolicyConfig:
        """Spare complex inputs only as far as complexity predicts errors: protect = 2 (AUROC - 0.5),
        clamped to [0, 1], from the complexity score's AUROC for the small budget's errors on the
        calibration split (signals.py). A signal at chance gets no say; bundles without the
        measurement keep the old default."""
        try:
            auroc = meta["cascade"]["signals"]["signals"]["length_and_subword"]["auroc"]
        except (KeyError, TypeError):
            return cls()
        return cls() if auroc is None else cls(protect=min(1.0, max(0.0, 2.0 * (auroc - 0.5))))


@dataclass(frozen=True)
class Decision:
    level: int  # index into the ladder (0 = full)
    desired_ratio: float
    reason: str


def desired_ratio(
    complexity: float, pressure: float, floor: float, cfg: PolicyConfig = PolicyConfig()
) -> float:
    """FLOPs ratio wanted before snapping to the ladder: 1 at no pressure, `floor` at full pressure
    for c = 0."""
    c, p = min(1.0, max(0.0, complexity)), min(1.0, max(0.0, pressure))
    return 1.0 - p * (1.0 - floor) * (1.0 - cfg.protect * c)


def choose_level(
    ladder_ratios: list[float],
    complexity: float,
    pressure: float,
    mode: str = "auto",
    min_ratio: float = 0.0,
    max_ratio: float = 1.0,
    cfg: PolicyConfig = PolicyConfig(),
) -> Decision:
    """ladder_ratios: FLOPs ratio of each level, descending (level 0 is the full model).

    The chosen level's ratio is <= max_ratio and >= min_ratio whenever the ladder has such a
    level; callers validate that (see `limits_error`).
    """
    assert mode in MODES, mode
    assert all(a > b for a, b in zip(ladder_ratios, ladder_ratios[1:])), ladder_ratios
    allowed = [i for i, r in enumerate(ladder_ratios) if min_ratio - 1e-9 <= r <= max_ratio + 1e-9]
    assert allowed, "no ladder level within the request's limits"
    top, bottom = allowed[0], allowed[-1]
    if mode == "dense":
        return Decision(0, 1.0, "dense requested: the full model")
    if mode == "fixed":
        return Decision(
            top, ladder_ratios[top], f"fixed budget: the largest level within max_flops_ratio {max_ratio:g}"
        )
    want = desired_ratio(complexity, pressure, ladder_ratios[-1], cfg)
    # smallest level that still gives at least the wanted ratio (round the budget up, never down)
    level = max((i for i, r in enumerate(ladder_ratios) if r >= want - 1e-9), default=0)
    level = min(max(level, top), bottom)
    why = (
        "no load pressure: full model"
        if pressure <= 0
        else (
            f"load pressure {pressure:.2f} with input complexity {complexity:.2f} "
            f"wants {want:.0%} of the FLOPs"
        )
    )
    if level == top and want > ladder_ratios[top] + 1e-9:
        why += f"; capped by max_flops_ratio {max_ratio:g}"
    elif level == bottom and want < ladder_ratios[bottom] - 1e-9 and bottom != len(ladder_ratios) - 1:
        why += f"; raised to min_flops_ratio {min_ratio:g}"
    return Decision(level, want, why + f" -> {ladder_ratios[level]:.0%} of the FLOPs")


def limits_error(ladder_ratios: list[float], min_ratio: float, max_ratio: float) -> str | None:
    """A message saying what to fix when no ladder level fits [min_ratio, max_ratio], else None."""
    if min_ratio > max_ratio:
        return f"min_flops_ratio {min_ratio:g} is above max_flops_ratio {max_ratio:g}"
    if not any(min_ratio - 1e-9 <= r <= max_ratio + 1e-9 for r in ladder_ratios):
        levels = ", ".join(f"{r:.3g}" for r in ladder_ratios)
        return f"no budget level lies in [{min_ratio:g}, {max_ratio:g}]; the levels are {levels}"
    return None


def is_finite_ratio(x: float) -> bool:
    return math.isfinite(x) and 0.0 <= x <= 1.0
