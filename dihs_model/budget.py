"""The Budget type: per layer, how many attention heads and FFN neurons run, and what that costs.

Heads and neurons are stored in importance order (surgery.py), so a budget is a per-layer prefix
count of each: a view of one weight set. Its cost is analytic FLOPs (multiply-adds x 2 of the
encoder layers' matmuls) for an input's real token count; every ratio the project reports is a
FLOPs ratio unless it says otherwise.

Allocation turns a target FLOPs ratio into a budget, two ways (compared in `dihs eval`):
- `uniform`: one width multiplier for every layer (DynaBERT): the same head count per layer and
  the neuron count that makes up the target exactly;
- `global`: units (heads and neurons) of the whole encoder ranked by importance per FLOP, kept
  greedily until the target is spent (Kwon et al. 2022's criterion, Michel 2019's global ranking).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .arch import EncoderShape

ALLOCATIONS = ("global", "uniform")
# measured: one width multiplier beat the global ranking (README "Width budgets")
DEFAULT_ALLOCATION = "uniform"


FULL_NAME = "f100"  # the full model's name wherever a budget is named (levels, passes, answers)


def budget_name(budget: Budget | None) -> str:
    """A budget's name; None, the full model, is FULL_NAME."""
    return FULL_NAME if budget is None else budget.name


@dataclass(frozen=True)
class Budget:
    name: str
    heads: tuple[int, ...]  # per layer: the first k heads run
    neurons: tuple[int, ...]  # per layer: the first n FFN intermediate units run

    def __post_init__(self):
        object.__setattr__(self, "heads", tuple(int(k) for k in self.heads))
        object.__setattr__(self, "neurons", tuple(int(n) for n in self.neurons))
        assert len(self.heads) == len(self.neurons), (self.heads, self.neurons)

    @classmethod
    def full(cls, shape: EncoderShape, name: str = FULL_NAME) -> Budget:
        return cls(name, (shape.n_heads,) * shape.n_layers, (shape.ffn,) * shape.n_layers)

    @classmethod
    def from_meta(cls, d: dict) -> Budget:
        return cls(d["name"], d["heads"], d["neurons"])

    @property
    def key(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """What the compute depends on (two names for the same counts run once)."""
        return self.heads, self.neurons

    def is_full(self, shape: EncoderShape) -> bool:
        return all(k == shape.n_heads for k in self.heads) and all(n == shape.ffn for n in self.neurons)

    def check(self, shape: EncoderShape) -> None:
        """ValueError (one line) if this budget does not fit `shape`."""
        if len(self.heads) != shape.n_layers:
            raise ValueError(
                f"budget {self.name!r} has {len(self.heads)} layers; the model has {shape.n_layers}"
            )
        if not all(0 <= k <= shape.n_heads for k in self.heads) or not all(
            0 <= n <= shape.ffn for n in self.neurons
        ):
            raise ValueError(f"budget {self.name!r} keeps more heads or neurons than a layer has")

    def flops(self, shape: EncoderShape, tokens: int) -> float:
        return encoder_flops(shape, self.heads, self.neurons, tokens)

    def flops_ratio(self, shape: EncoderShape, tokens: Sequence[int]) -> float:
        """FLOPs of this budget over inputs of these token counts, relative to the full model."""
        full = Budget.full(shape)
        return sum(self.flops(shape, int(t)) for t in tokens) / sum(full.flops(shape, int(t)) for t in tokens)

    def heads_ratio(self, shape: EncoderShape) -> float:
        return sum(self.heads) / shape.total_heads

    def neurons_ratio(self, shape: EncoderShape) -> float:
        return sum(self.neurons) / (shape.ffn * shape.n_layers)

    def counts_meta(self) -> dict:
        """The budget as dihs.json stores it inside a plan: name and counts."""
        return {"name": self.name, "heads": list(self.heads), "neurons": list(self.neurons)}

    def to_meta(self, shape: EncoderShape, tokens: Sequence[int], **extra) -> dict:
        """The level record in dihs.json: counts and the ratios measured at these token counts."""
        return {
            **self.counts_meta(),
            **extra,
            "flops_ratio": round(self.flops_ratio(shape, tokens), 4),
            "heads_ratio": round(self.heads_ratio(shape), 4),
            "neurons_ratio": round(self.neurons_ratio(shape), 4),
        }


def head_flops(shape: EncoderShape, tokens: int) -> float:
    """One head in one layer: its Q/K/V rows, O columns, scores and weighted values."""
    T, C, d = tokens, shape.hidden, shape.head_dim
    return 2 * T * C * d * 4 + 2 * T * T * d * 2


def neuron_flops(shape: EncoderShape, tokens: int) -> float:
    """One FFN intermediate unit in one layer: its row of the first linear and column of the second."""
    return 2 * tokens * shape.hidden * 2


def unit_costs(shape: EncoderShape, tokens: Sequence[int]) -> tuple[float, float]:
    """(one head's, one neuron's) FLOPs in one layer, summed over inputs of these token counts."""
    return sum(head_flops(shape, int(t)) for t in tokens), sum(neuron_flops(shape, int(t)) for t in tokens)


def encoder_flops(shape: EncoderShape, heads: Sequence[int], neurons: Sequence[int], tokens: int) -> float:
    """Analytic FLOPs of the encoder layers for one sequence of `tokens` tokens."""
    return sum(heads) * head_flops(shape, tokens) + sum(neurons) * neuron_flops(shape, tokens)


def level_name(target: float) -> str:
    return f"f{round(target * 100)}"


def allocate(
    shape: EncoderShape,
    target: float,
    tokens: Sequence[int],
    head_scores: torch.Tensor | None = None,
    neuron_scores: torch.Tensor | None = None,
    method: str = DEFAULT_ALLOCATION,
    name: str | None = None,
    min_heads: int = 1,
) -> Budget:
    """A budget spending `target` of the full model's FLOPs over inputs of these token counts.

    global: head_scores [L, H] and neuron_scores [L, F], descending within each layer (stored order),
    in the same units (the loss change a mask gradient estimates); every layer keeps `min_heads`.
    """
    assert method in ALLOCATIONS, method
    assert 0.0 < target <= 1.0, target
    name = name or level_name(target)
    if target >= 1.0:
        return Budget.full(shape, name)
    L, H, F = shape.n_layers, shape.n_heads, shape.ffn
    head_cost, neuron_cost = unit_costs(shape, tokens)
    spend = target * L * (H * head_cost + F * neuron_cost)
    if method == "uniform":
        k = max(min_heads, min(H, round(target * H)))
        n = max(0, min(F, round((spend / L - k * head_cost) / neuron_cost)))
        return Budget(name, (k,) * L, (n,) * L)
    assert head_scores is not None and neuron_scores is not None, "global allocation needs importance scores"
    heads, neurons = [min_heads] * L, [0] * L
    spend -= L * min_heads * head_cost
    # every unit's importance per FLOP; within a layer the stored order is descending, so taking the
    # best units first keeps every layer's choice a prefix
    units = [
        (float(head_scores[layer, p]) / head_cost, 0, layer)
        for layer in range(L)
        for p in range(min_heads, H)
    ]
    units += [
        (float(neuron_scores[layer, p]) / neuron_cost, 1, layer) for layer in range(L) for p in range(F)
    ]
    units.sort(key=lambda u: u[0], reverse=True)
    for _, kind, layer in units:
        cost = head_cost if kind == 0 else neuron_cost
        if cost > spend:
            continue  # a head that no longer fits: neurons may still fill the rest
        spend -= cost
        if kind == 0:
            heads[layer] += 1
        else:
            neurons[layer] += 1
    return Budget(name, heads, neurons)


def heads_only(shape: EncoderShape, heads: Sequence[int], name: str) -> Budget:
    """A budget that removes heads only (all FFN neurons run): the old head budgets."""
    return Budget(name, heads, (shape.ffn,) * shape.n_layers)


class Allocator:
    """Targets -> budgets for one bundle: its importance (stored order), calibration lengths and method."""

    def __init__(
        self,
        shape: EncoderShape,
        tokens: Sequence[int],
        method: str = DEFAULT_ALLOCATION,
        head_scores: torch.Tensor | None = None,
        neuron_scores: torch.Tensor | None = None,
    ):
        self.shape, self.tokens, self.method = shape, list(tokens), method
        self.head_scores, self.neuron_scores = head_scores, neuron_scores

    @classmethod
    def from_meta(cls, meta: dict, shape: EncoderShape, method: str | None = None) -> Allocator:
        scorer = meta["order_by"]
        imp = meta["importance"]
        return cls(
            shape,
            meta["calibration"]["tokens"],
            method or meta["allocation"],
            torch.tensor(imp["heads"][scorer]),
            torch.tensor(imp["neurons"][scorer]),
        )

    def __call__(self, target: float, name: str | None = None) -> Budget:
        return allocate(
            self.shape, target, self.tokens, self.head_scores, self.neuron_scores, self.method, name
        )

    def ratio(self, budget: Budget) -> float:
        """The budget's FLOPs ratio at the calibration lengths."""
        return budget.flops_ratio(self.shape, self.tokens)
