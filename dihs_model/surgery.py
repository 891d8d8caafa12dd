"""Pure surgery: prefix slices of heads and FFN neurons, and reorderings that make any choice a prefix.

Heads and neurons are stored in importance order, so a budget keeps the first k heads and the
first n neurons of every layer: plain views of one weight set (nothing is copied per request).
Reordering is function-preserving: a head's Q/K/V rows and O columns move together; a neuron's
row and bias in the first FFN linear and its column in the second move together. Nothing here
mutates its inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .arch import encoder_parts


def qkv_rows(weight: torch.Tensor, bias: torch.Tensor | None, k: int, head_dim: int):
    """Rows of a Q/K/V projection ([heads*head_dim, C]) that produce the first k heads: views."""
    n = k * head_dim
    return weight[:n], None if bias is None else bias[:n]


def output_cols(weight: torch.Tensor, k: int, head_dim: int) -> torch.Tensor:
    """Columns of the O projection ([C, heads*head_dim]) that read the first k heads: a view."""
    return weight[:, : k * head_dim]


def ffn_slices(ffn_in: nn.Linear, ffn_out: nn.Linear, n: int):
    """(first-linear rows, their bias, second-linear columns) of the first n FFN neurons: views."""
    return ffn_in.weight[:n], ffn_in.bias[:n], ffn_out.weight[:, :n]


def _head_rows(heads: Sequence[int], head_dim: int, device: torch.device) -> torch.Tensor:
    idx = torch.as_tensor(list(heads), dtype=torch.long, device=device)
    return (idx[:, None] * head_dim + torch.arange(head_dim, device=device)).reshape(-1)


def reorder(
    model: nn.Module,
    head_order: Sequence[Sequence[int]] | None = None,
    neuron_order: Sequence[Sequence[int]] | None = None,
) -> nn.Module:
    """A copy of `model` (with an `encoder`) whose layer l stores head head_order[l][p] and neuron
    neuron_order[l][p] at position p (None: leave that kind as it is). The input is untouched."""
    model = copy.deepcopy(model)
    parts = encoder_parts(model.encoder)
    hd = parts.shape.head_dim
    with torch.no_grad():
        for li, layer in enumerate(parts.layers):
            if head_order is not None:
                perm = head_order[li]
                assert sorted(perm) == list(range(parts.shape.n_heads)), f"not a permutation: {perm}"
                idx = _head_rows(perm, hd, layer.query.weight.device)
                for lin in (layer.query, layer.key, layer.value):
                    lin.weight.copy_(lin.weight.index_select(0, idx))
                    lin.bias.copy_(lin.bias.index_select(0, idx))
                layer.output.weight.copy_(layer.output.weight.index_select(1, idx))
            if neuron_order is not None:
                idx = torch.as_tensor(
                    list(neuron_order[li]), dtype=torch.long, device=layer.ffn_in.weight.device
                )
                assert sorted(idx.tolist()) == list(range(parts.shape.ffn)), (
                    "not a permutation of the neurons"
                )
                layer.ffn_in.weight.copy_(layer.ffn_in.weight.index_select(0, idx))
                layer.ffn_in.bias.copy_(layer.ffn_in.bias.index_select(0, idx))
                layer.ffn_out.weight.copy_(layer.ffn_out.weight.index_select(1, idx))
    return model


def per_layer_normalized(scores: torch.Tensor) -> torch.Tensor:
    """Scores [L, N] divided by their layer's L2 norm (Michel 2019 ranks heads across layers so)."""
    return scores / scores.norm(dim=1, keepdim=True).clamp_min(1e-12)


def allocate_heads(scores: torch.Tensor, ratio: float, min_per_layer: int = 1) -> list[int]:
    """Per-layer counts keeping round(ratio * L*H) heads by global ranking of `scores` [L, H], which
    are descending within each layer (stored order); every layer keeps `min_per_layer`."""
    L, H = scores.shape
    assert 0.0 <= ratio <= 1.0, ratio
    assert bool((scores[:, :-1] >= scores[:, 1:]).all()), "scores must be in stored (descending) order"
    n_keep = max(round(ratio * L * H), L * min_per_layer)
    counts = [min_per_layer] * L
    rest = [(float(scores[layer, p]), layer) for layer in range(L) for p in range(min_per_layer, H)]
    rest.sort(key=lambda u: u[0], reverse=True)  # stable: ties keep layer and position order
    for _, layer in rest[: n_keep - L * min_per_layer]:
        counts[layer] += 1
    return counts
