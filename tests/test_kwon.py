"""The kwon baseline: Fisher mask search under a FLOPs budget, against brute force on a tiny shape."""

import itertools

import torch

from dihs_model.arch import EncoderShape
from dihs_model.budget import Budget
from dihs_model.kwon import search

SHAPE = EncoderShape(
    n_layers=2, n_heads=3, head_dim=4, hidden=12, ffn=4, attn_dropout=0.0, hidden_dropout=0.0
)
TOKENS = [6, 9]


def _kept(b: Budget, hs: torch.Tensor, ns: torch.Tensor) -> float:
    return sum(float(hs[layer, :k].sum()) for layer, k in enumerate(b.heads)) + sum(
        float(ns[layer, :n].sum()) for layer, n in enumerate(b.neurons)
    )


def test_search_keeps_the_most_fisher_information_that_fits_the_flops_target():
    g = torch.Generator().manual_seed(0)
    hs = torch.rand(2, 3, generator=g).sort(1, descending=True).values
    ns = torch.rand(2, 4, generator=g).sort(1, descending=True).values
    for target in (0.9, 0.6, 0.4, 0.2):
        b = search(SHAPE, hs, ns, TOKENS, target)
        assert b.flops_ratio(SHAPE, TOKENS) <= target + 1e-9
        # brute force over every prefix budget that fits
        best = max(
            _kept(c, hs, ns)
            for c in (
                Budget("c", h, n)
                for h in itertools.product(range(4), repeat=2)
                for n in itertools.product(range(5), repeat=2)
            )
            if c.flops_ratio(SHAPE, TOKENS) <= target + 1e-9
        )
        assert abs(_kept(b, hs, ns) - best) < 1e-6, target
