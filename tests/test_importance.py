"""Importance scorers against brute force on a tiny model."""

import pytest
import torch
import torch.nn.functional as F

from dihs_model.importance import (attention_scores, fisher_scores, head_order, mask_gradients,
                                   michel_scores)
from dihs_model.levels import build_ladder
from tests.conftest import random_batch, tiny_classifier


def _batches(n=4, seed=0):
    out = []
    for i in range(n):
        ids, mask = random_batch(B=8, T=10, seed=seed + i)
        labels = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(seed + i))
        out.append((list(range(8)), ids, mask, labels))
    return out


def _loss(model, batches, head_mask, reduction="sum"):
    return sum(F.cross_entropy(model(ids, m, head_mask=head_mask).logits, y, reduction=reduction)
               for _, ids, m, y in batches)


def test_mask_gradient_matches_finite_differences():
    model = tiny_classifier().double()
    batches = _batches(2)
    g = mask_gradients(model, batches).sum(0)  # [L, H]
    L, H = g.shape
    eps = 1e-5
    with torch.no_grad():
        for l in range(L):
            for h in range(H):
                e = torch.zeros(L, H, dtype=torch.float64)
                e[l, h] = eps
                ones = torch.ones(L, H, dtype=torch.float64)
                fd = (_loss(model, batches, ones + e) - _loss(model, batches, ones - e)) / (2 * eps)
                assert abs(fd.item() - g[l, h].item()) < 1e-6 * max(1.0, abs(fd.item()))


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.flatten().argsort().argsort().double(), b.flatten().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_michel_ranks_heads_like_the_loss_change_from_removing_them(seed):
    model = tiny_classifier(seed=seed)
    batches = _batches(4, seed)
    grads = mask_gradients(model, batches)
    L, H = grads.shape[1:]
    # brute force: mean |loss change| per example when one head is masked out
    brute = torch.zeros(L, H)
    with torch.no_grad():
        base = torch.cat([F.cross_entropy(model(i, m).logits, y, reduction="none") for _, i, m, y in batches])
        for l in range(L):
            for h in range(H):
                mask = torch.ones(L, H)
                mask[l, h] = 0
                off = torch.cat([F.cross_entropy(model(i, m, head_mask=mask).logits, y, reduction="none")
                                 for _, i, m, y in batches])
                brute[l, h] = (off - base).abs().mean()
    assert _spearman(grads.abs().mean(0), brute) > 0.7
    # Michel's per-layer normalisation keeps the within-layer order
    assert michel_scores(grads).argsort(1).tolist() == grads.abs().mean(0).argsort(1).tolist()


def test_score_shapes_and_ranges():
    model = tiny_classifier()
    batches = _batches(2)
    grads = mask_gradients(model, batches)
    m, f = michel_scores(grads), fisher_scores(grads)
    assert torch.allclose(m.norm(dim=1), torch.ones(m.shape[0]), atol=1e-5)
    assert (f >= 0).all() and torch.allclose(f, (grads**2).sum(0))
    a = attention_scores(model, batches)
    assert a.shape == m.shape and (a > 1 / 10 - 1e-6).all() and (a <= 1 + 1e-6).all()


def test_order_and_ladder_are_prefixes():
    scores = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    order = head_order(scores)
    ordered = scores.gather(1, torch.tensor(order))
    assert (ordered[:, :-1] >= ordered[:, 1:]).all()
    ladder = build_ladder(ordered)
    assert ladder[0]["heads"] == [4, 4, 4]
    totals = [sum(level["heads"]) for level in ladder]
    assert totals == sorted(totals, reverse=True) and min(min(lv["heads"]) for lv in ladder) >= 1
