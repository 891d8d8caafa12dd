"""Budget-robust (width) epochs train the ladder and the cascade's first passes, the smallest every
step, and stop by the calibration split's measurements, saying why."""

import random

import pytest
import torch

from dihs_model.budget import Allocator, Budget
from dihs_model.data import Examples
from dihs_model.levels import build_ladder
from dihs_model.robust import TRAINED_RATIOS, train_budget_robust, trained_budgets
from dihs_model.train import TrainConfig, budget_robust_loss
from tests.conftest import random_batch, tiny_calibrated_bundle, tiny_classifier
from tests.test_surgery import _minilm_shape

TEXTS = ["good great fun", "bad awful dull", "love the movie", "hate the plot"] * 4
LABELS = [1, 0, 1, 0] * 4


@pytest.mark.parametrize("gap", [1.0, -1.0])
def test_epochs_run_while_the_smallest_level_trails_and_closes_in(tmp_path, gap):
    bundle = tiny_calibrated_bundle(tmp_path)
    ex = Examples(TEXTS, LABELS, ["neg", "pos"])
    cfg = TrainConfig(min_epoch_examples=0, batch_size=8, lr=3e-3)
    bundle, record = train_budget_robust(bundle, ex, ex, cfg, "michel", progress=False, max_epochs=3, gap=gap)
    epochs = record["per_epoch"]
    assert record["epochs"] == len(epochs) and 1 <= len(epochs) <= 3
    trails = [e["smallest_level_trails_by"] for e in epochs]
    names = [lv["name"] for lv in bundle.meta["levels"]]
    for e in epochs:  # the ladder's levels first, then the cascade plans' other pass budgets
        assert list(e["calibration_accuracy"])[: len(names)] == names and e["epochs"] == 1
    if gap >= 1.0:  # any trail is within a gap of 1.0: one epoch
        assert len(epochs) == 1
    else:  # never within: every epoch but the last closed in on the one before it
        assert all(b < a for a, b in zip(trails, trails[1:-1]))
        assert len(epochs) == 3 or trails[-1] >= trails[-2]


def test_the_epoch_kept_is_the_one_whose_smallest_level_trailed_least(tmp_path, monkeypatch):
    """Trails 0.3, 0.1, 0.2 (scripted on top of the real recalibration): the third epoch stops the
    training and is dropped; the bundle returned holds the second epoch's weights, untouched by the
    third (the sum of the weights, which reordering keeps, tells the epochs apart)."""
    from dihs_model import robust

    trails, sums, calibrate = iter([0.3, 0.1, 0.2]), [], robust.calibrate_bundle

    def scripted(bundle, *args, **kwargs):
        sums.append(_weight_sum(bundle.model))  # the epoch's trained weights
        out = calibrate(bundle, *args, **kwargs)
        acc, names = out.meta["cascade"]["level_accuracy"], [lv["name"] for lv in out.meta["levels"]]
        acc[names[0]], acc[names[-1]] = 1.0, 1.0 - next(trails)
        return out

    monkeypatch.setattr(robust, "calibrate_bundle", scripted)
    bundle = tiny_calibrated_bundle(tmp_path)
    ex = Examples(TEXTS, LABELS, ["neg", "pos"])
    bundle, record = train_budget_robust(
        bundle,
        ex,
        ex,
        TrainConfig(min_epoch_examples=0, batch_size=8, lr=3e-3),
        "michel",
        progress=False,
        max_epochs=3,
        gap=0.0,
    )
    assert record["epochs"] == 3 and record["kept_epoch"] == 2
    assert bundle.meta["cascade"]["level_accuracy"] == record["per_epoch"][1]["calibration_accuracy"]
    assert abs(_weight_sum(bundle.model) - sums[1]) < 1e-3 * abs(sums[1])
    assert abs(_weight_sum(bundle.model) - sums[2]) > 1e-6


def _weight_sum(model) -> float:
    return float(sum((p.detach().double() ** 2).sum() for p in model.parameters()))


def test_calibration_measures_every_level_from_the_passes_it_already_ran(tmp_path, monkeypatch):
    from dihs_model import passes
    from dihs_model.evaluate import level_accuracies

    calls, run_pass = [], passes.run_pass
    monkeypatch.setattr(
        passes,
        "run_pass",
        lambda model, batches, budget, n: (
            calls.append(None if budget is None else budget.key) or run_pass(model, batches, budget, n)
        ),
    )
    bundle = tiny_calibrated_bundle(tmp_path)
    assert len(calls) == len(set(calls)) and None in calls  # each budget once, the full model as None
    assert Budget.full(bundle.model.shape).key not in calls
    acc = bundle.meta["cascade"]["level_accuracy"]
    names = [lv["name"] for lv in bundle.meta["levels"]]
    assert list(acc)[: len(names)] == names  # the ladder's levels, then the plans' other pass budgets
    assert {k: acc[k] for k in names} == level_accuracies(bundle, Examples(TEXTS, LABELS, ["neg", "pos"]))
    plan_passes = {b["name"] for p in bundle.meta["cascade"]["plans"] for b in (p["first"], p["second"]) if b}
    assert set(acc) == set(names) | plan_passes


def test_epochs_train_the_smallest_budget_always_and_sample_the_ladder_and_first_passes():
    shape = _minilm_shape()
    g = torch.Generator().manual_seed(0)
    hs = torch.rand(6, 12, generator=g).sort(dim=1, descending=True).values
    ns = torch.rand(6, 1536, generator=g).sort(dim=1, descending=True).values * 0.05
    allocator = Allocator(shape, [40] * 20, "global", hs, ns)
    meta = {
        "levels": build_ladder(allocator),
        "order_by": "michel",
        "allocation": "global",
        "importance": {"heads": {"michel": hs.tolist()}, "neurons": {"michel": ns.tolist()}},
        "calibration": {"tokens": [40] * 20},
    }
    always, others = trained_budgets(meta, shape)
    smallest = allocator(min(TRAINED_RATIOS))
    assert [b.key for b in always] == [smallest.key]
    assert {b.key for b in others} == {allocator(r).key for r in TRAINED_RATIOS if r != min(TRAINED_RATIOS)}
    assert len(others) == len(TRAINED_RATIOS) - 1  # MiniLM's shape: all distinct, none the full model
    assert all(not b.is_full(shape) for b in others)


def test_each_step_trains_the_full_model_the_smallest_budget_and_one_sampled_other():
    model = tiny_classifier()
    calls, forward = [], model.forward
    model.forward = lambda *a, **kw: calls.append(kw.get("budget")) or forward(*a, **kw)
    ids, mask = random_batch(B=4, T=6, seed=0, pad=False)
    always = [Budget("s", (1, 1, 1), (8, 8, 8))]
    others = [Budget("a", (3, 3, 3), (48, 48, 48)), Budget("b", (2, 2, 2), (32, 32, 32))]
    loss_fn, rng = budget_robust_loss(always, others), random.Random(0)
    for _ in range(12):
        loss = loss_fn(model, ids, mask, torch.tensor([0, 1, 2, 0]), rng)
        assert loss.requires_grad and torch.isfinite(loss)
    steps = [calls[i : i + 3] for i in range(0, len(calls), 3)]
    assert len(steps) == 12 and all(s[0] is None and s[1:-1] == always and s[-1] in others for s in steps)
    assert {s[-1] for s in steps} == set(others)  # every other budget gets sampled
