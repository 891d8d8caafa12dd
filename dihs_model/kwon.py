"""The retraining-free anchor: Kwon et al. 2022's Fisher mask search under a FLOPs budget, on the
plainly fine-tuned weights (no width training), as the `kwon` baseline of `dihs eval`.

For each number of heads kept (the globally best by Fisher information of their masks), the FLOPs
left are filled with the globally best FFN neurons; the search keeps the combination whose kept
Fisher information is largest (its pruned units' sum, the diagonal estimate of the loss increase,
is smallest). Units are stored in Fisher order per layer, so each mask is a prefix budget. Left
out: Kwon's mask rearrangement and least-squares mask tuning (steps 2 and 3 of the paper), so this
is the search alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .budget import Budget, level_name, unit_costs
from .importance import unit_order
from .surgery import reorder

SCORER = "fisher"


def _counts(scores: torch.Tensor, keep: int) -> list[int]:
    """Per-layer counts of the `keep` globally best units (scores descending within each layer)."""
    L = scores.shape[0]
    layer_of = torch.arange(L).repeat_interleave(scores.shape[1])
    best = scores.flatten().argsort(descending=True, stable=True)[:keep]
    return torch.bincount(layer_of[best], minlength=L).tolist()


def search(
    shape,
    head_scores: torch.Tensor,
    neuron_scores: torch.Tensor,
    tokens: Sequence[int],
    target: float,
    name: str | None = None,
) -> Budget:
    """The Fisher-best budget within `target` of the full model's FLOPs at these token counts."""
    L, H, F = shape.n_layers, shape.n_heads, shape.ffn
    hc, nc = unit_costs(shape, tokens)
    spend = target * L * (H * hc + F * nc)
    h_sorted = head_scores.flatten().sort(descending=True).values.cumsum(0)
    n_sorted = neuron_scores.flatten().sort(descending=True).values.cumsum(0)
    best, best_kept = None, float("-inf")
    for n_heads in range(0, L * H + 1):
        left = spend - n_heads * hc
        if left < 0:
            break
        n_neurons = min(L * F, int(left // nc))
        kept = (float(h_sorted[n_heads - 1]) if n_heads else 0.0) + (
            float(n_sorted[n_neurons - 1]) if n_neurons else 0.0
        )
        if kept > best_kept:
            best, best_kept = (n_heads, n_neurons), kept
    n_heads, n_neurons = best
    return Budget(
        name or level_name(target), _counts(head_scores, n_heads), _counts(neuron_scores, n_neurons)
    )


def attach_kwon(bundle, targets: Sequence[float]):
    """The bundle with its current (plainly fine-tuned, calibrated) weights kept, in Fisher order, as
    the kwon baseline, and the searched budgets for `targets` in meta["kwon"]."""
    imp, shape = bundle.meta["importance"], bundle.model.shape
    h_order = unit_order(torch.tensor(imp["heads"][SCORER]))
    n_order = unit_order(torch.tensor(imp["neurons"][SCORER]))
    hs = torch.tensor(imp["heads"][SCORER]).gather(1, torch.tensor(h_order))
    ns = torch.tensor(imp["neurons"][SCORER]).gather(1, torch.tensor(n_order))
    tokens = bundle.meta["calibration"]["tokens"]
    levels = [search(shape, hs, ns, tokens, t).to_meta(shape, tokens, target_flops_ratio=t) for t in targets]
    bundle.kwon_model = reorder(bundle.model, h_order, n_order)
    bundle.meta["kwon"] = {
        "method": "Kwon et al. 2022 Fisher mask search (no mask rearrangement or tuning) on the "
        "plainly fine-tuned weights",
        "scorer": SCORER,
        "levels": levels,
    }
    return bundle
