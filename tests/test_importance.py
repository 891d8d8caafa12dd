"""Importance scorers against brute force on a tiny model: heads and FFN neurons."""

import pytest
import torch
import torch.nn.functional as F

from dihs_model.budget import Allocator
from dihs_model.importance import (
    attention_scores,
    fisher_scores,
    mask_gradients,
    michel_scores,
    ordered,
    score_units,
    unit_order,
)
from dihs_model.levels import build_ladder
from tests.conftest import random_batch, tiny_classifier


def _batches(n=4, seed=0):
    out = []
    for i in range(n):
        ids, mask = random_batch(B=8, T=10, seed=seed + i)
        labels = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(seed + i))
        out.append((list(range(8)), ids, mask, labels))
    return out


def _loss(model, batches, head_mask, neuron_mask):
    return sum(
        F.cross_entropy(
            model(ids, m, head_mask=head_mask, neuron_mask=neuron_mask).logits, y, reduction="sum"
        )
        for _, ids, m, y in batches
    )


def test_mask_gradients_match_finite_differences_for_heads_and_neurons():
    model = tiny_classifier().double()
    batches = _batches(2)
    gh, gn = mask_gradients(model, batches)
    gh, gn = gh.sum(0), gn.sum(0)  # [L, H], [L, F]
    L, H = gh.shape
    Fn = gn.shape[1]
    eps = 1e-5
    ones_h, ones_n = torch.ones(L, H, dtype=torch.float64), torch.ones(L, Fn, dtype=torch.float64)
    with torch.no_grad():
        for layer in range(L):
            for h in range(H):
                e = torch.zeros(L, H, dtype=torch.float64)
                e[layer, h] = eps
                fd = (
                    _loss(model, batches, ones_h + e, ones_n) - _loss(model, batches, ones_h - e, ones_n)
                ) / (2 * eps)
                assert abs(fd.item() - gh[layer, h].item()) < 1e-6 * max(1.0, abs(fd.item()))
            for p in (0, 7, Fn - 1):
                e = torch.zeros(L, Fn, dtype=torch.float64)
                e[layer, p] = eps
                fd = (
                    _loss(model, batches, ones_h, ones_n + e) - _loss(model, batches, ones_h, ones_n - e)
                ) / (2 * eps)
                assert abs(fd.item() - gn[layer, p].item()) < 1e-6 * max(1.0, abs(fd.item()))


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.flatten().argsort().argsort().double(), b.flatten().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_michel_ranks_heads_like_the_loss_change_from_removing_them(seed):
    model = tiny_classifier(seed=seed)
    batches = _batches(4, seed)
    grads, _ = mask_gradients(model, batches)
    L, H = grads.shape[1:]
    # brute force: mean |loss change| per example when one head is masked out
    brute = torch.zeros(L, H)
    with torch.no_grad():
        base = torch.cat([F.cross_entropy(model(i, m).logits, y, reduction="none") for _, i, m, y in batches])
        for layer in range(L):
            for h in range(H):
                mask = torch.ones(L, H)
                mask[layer, h] = 0
                off = torch.cat(
                    [
                        F.cross_entropy(model(i, m, head_mask=mask).logits, y, reduction="none")
                        for _, i, m, y in batches
                    ]
                )
                brute[layer, h] = (off - base).abs().mean()
    assert _spearman(michel_scores(grads), brute) > 0.7


def test_score_shapes_and_ranges():
    model = tiny_classifier()
    batches = _batches(2)
    scores = score_units(model, batches, progress=False)
    L, H, Fn = model.shape.n_layers, model.shape.n_heads, model.shape.ffn
    assert {k: tuple(v.shape) for k, v in scores["heads"].items()} == {
        k: (L, H) for k in ("michel", "fisher", "attention")
    }
    assert {k: tuple(v.shape) for k, v in scores["neurons"].items()} == {
        k: (L, Fn) for k in ("michel", "fisher")
    }
    gh, gn = mask_gradients(model, batches)
    assert (
        torch.allclose(scores["neurons"]["fisher"], fisher_scores(gn))
        and (scores["neurons"]["michel"] >= 0).all()
    )
    a = attention_scores(model, batches)
    assert (a > 1 / 10 - 1e-6).all() and (a <= 1 + 1e-6).all()


def test_order_puts_scores_in_descending_stored_order_and_the_ladder_falls_in_flops():
    model = tiny_classifier()
    g = torch.Generator().manual_seed(0)
    raw = {
        "heads": {"michel": torch.rand(3, 4, generator=g)},
        "neurons": {"michel": torch.rand(3, 64, generator=g) * 0.1},
    }
    ho, no = unit_order(raw["heads"]["michel"]), unit_order(raw["neurons"]["michel"])
    now = ordered(raw, ho, no)
    for s in (now["heads"]["michel"], now["neurons"]["michel"]):
        assert (s[:, :-1] >= s[:, 1:]).all()
    ladder = build_ladder(
        Allocator(model.shape, [10] * 8, "global", now["heads"]["michel"], now["neurons"]["michel"])
    )
    assert (
        ladder[0]["heads"] == [4, 4, 4]
        and ladder[0]["neurons"] == [64, 64, 64]
        and ladder[0]["flops_ratio"] == 1.0
    )
    flops = [lv["flops_ratio"] for lv in ladder]
    assert flops == sorted(flops, reverse=True)
    assert all(abs(lv["flops_ratio"] - lv["target_flops_ratio"]) <= 0.02 for lv in ladder)
