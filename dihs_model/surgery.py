"""Pure head surgery: which heads a layer keeps, and the weight slices that compute only those.

A layer's head choice is either an int k (the first k heads: the fast path, plain views of the
weights because heads are stored in importance order) or a sequence of head indices (any subset:
gathered copies, used by random/static baselines and tests). Nothing here mutates its inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Union

import torch
from torch import nn

from .arch import EncoderShape, encoder_parts

HeadChoice = Union[int, Sequence[int]]
Selection = Sequence[HeadChoice]  # one HeadChoice per layer


def head_count(choice: HeadChoice) -> int:
    return choice if isinstance(choice, int) else len(choice)


def _row_index(heads: Sequence[int], head_dim: int, device: torch.device) -> torch.Tensor:
    idx = torch.as_tensor(list(heads), dtype=torch.long, device=device)
    return (idx[:, None] * head_dim + torch.arange(head_dim, device=device)).reshape(-1)


def qkv_rows(
    weight: torch.Tensor, bias: torch.Tensor | None, choice: HeadChoice, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows of a Q/K/V projection ([heads*head_dim, C]) that produce the chosen heads."""
    if isinstance(choice, int):
        n = choice * head_dim
        return weight[:n], None if bias is None else bias[:n]
    idx = _row_index(choice, head_dim, weight.device)
    return weight.index_select(0, idx), None if bias is None else bias.index_select(0, idx)


def output_cols(weight: torch.Tensor, choice: HeadChoice, head_dim: int) -> torch.Tensor:
    """Columns of the O projection ([C, heads*head_dim]) that read the chosen heads."""
    if isinstance(choice, int):
        return weight[:, : choice * head_dim]
    return weight.index_select(1, _row_index(choice, head_dim, weight.device))


def reorder_heads(model: nn.Module, order: Sequence[Sequence[int]]) -> nn.Module:
    """A copy of `model` (with an `encoder`) whose layer l has its heads in the order `order[l]`.

    The input is untouched. Permuting heads is function-preserving: Q/K/V rows and O columns move
    together.
    """
    model = copy.deepcopy(model)
    parts = encoder_parts(model.encoder)
    hd = parts.shape.head_dim
    with torch.no_grad():
        for layer, perm in zip(parts.layers, order, strict=True):
            assert sorted(perm) == list(range(parts.shape.n_heads)), f"not a permutation: {perm}"
            idx = _row_index(perm, hd, layer.query.weight.device)
            for lin in (layer.query, layer.key, layer.value):
                lin.weight.copy_(lin.weight.index_select(0, idx))
                lin.bias.copy_(lin.bias.index_select(0, idx))
            layer.output.weight.copy_(layer.output.weight.index_select(1, idx))
    return model


def allocate_heads(scores: torch.Tensor, ratio: float, min_per_layer: int = 1) -> list[list[int]]:
    """Keep round(ratio * L*H) heads by global ranking of `scores` [L, H] (Michel 2019).

    Every layer keeps at least its `min_per_layer` best heads. Returns sorted head indices per
    layer; when scores are descending within each layer the result is a prefix per layer.
    """
    L, H = scores.shape
    assert 0.0 <= ratio <= 1.0, ratio
    n_keep = max(round(ratio * L * H), L * min_per_layer)
    keep = torch.zeros(L, H, dtype=torch.bool)
    ranked_in_layer = scores.argsort(dim=1, descending=True, stable=True)
    keep.scatter_(1, ranked_in_layer[:, :min_per_layer], True)
    rest = scores.masked_fill(keep, float("-inf")).flatten()
    extra = rest.argsort(descending=True, stable=True)[: n_keep - int(keep.sum())]
    keep.view(-1)[extra] = True
    return [torch.nonzero(row).flatten().tolist() for row in keep]


def as_prefix(selection: Selection) -> list[int] | None:
    """Per-layer head counts if every layer's choice is a prefix, else None."""
    counts = []
    for choice in selection:
        if isinstance(choice, int):
            counts.append(choice)
        elif list(choice) == list(range(len(choice))):
            counts.append(len(choice))
        else:
            return None
    return counts


def encoder_flops(shape: EncoderShape, heads_per_layer: Sequence[int], seq_len: int) -> float:
    """Analytic multiply-add FLOPs (x2) of the encoder layers for one sequence."""
    T, C, F, d = seq_len, shape.hidden, shape.ffn, shape.head_dim
    total = 0.0
    for k in heads_per_layer:
        a = k * d
        total += 2 * T * C * a * 4  # Q, K, V and O projections
        total += 2 * T * T * a * 2  # scores and attention-weighted values
        total += 2 * T * C * F * 2  # feed-forward
    return total


def input_flops(shape: EncoderShape, heads: Selection | None, tokens: Sequence[int]) -> list[float]:
    """Analytic FLOPs of `heads` (None: all) for each input, from its token count."""
    counts = [shape.n_heads] * shape.n_layers if heads is None else [head_count(c) for c in heads]
    return [encoder_flops(shape, counts, int(t)) for t in tokens]


def flops_ratio(shape: EncoderShape, heads: Selection | None, tokens: Sequence[int]) -> float:
    """FLOPs of `heads` over inputs of these token counts, relative to all heads."""
    return sum(input_flops(shape, heads, tokens)) / sum(input_flops(shape, None, tokens))
