"""Budget-robust epochs train the ladder and the cascade's first passes, and stop by the calibration
split's measurements, saying why."""

import random

import pytest
import torch

from dihs_model.data import Examples
from dihs_model.levels import build_ladder, prefix_counts
from dihs_model.robust import CASCADE_TRAINED_RATIOS, train_budget_robust, trained_budgets
from dihs_model.train import TrainConfig, budget_robust_loss
from tests.conftest import random_batch, tiny_calibrated_bundle, tiny_classifier

TEXTS = ["good great fun", "bad awful dull", "love the movie", "hate the plot"] * 4
LABELS = [1, 0, 1, 0] * 4


@pytest.mark.parametrize("gap", [1.0, -1.0])
def test_epochs_run_while_the_smallest_level_trails_and_closes_in(tmp_path, gap):
    bundle = tiny_calibrated_bundle(tmp_path)
    ex = Examples(TEXTS, LABELS, ["neg", "pos"])
    cfg = TrainConfig(batch_size=8, lr=3e-3)
    bundle, record = train_budget_robust(bundle, ex, ex, cfg, "michel", progress=False, max_epochs=3, gap=gap)
    epochs = record["per_epoch"]
    assert record["epochs"] == len(epochs) and 1 <= len(epochs) <= 3
    trails = [e["smallest_level_trails_by"] for e in epochs]
    names = [lv["name"] for lv in bundle.meta["levels"]]
    for e in epochs:
        assert list(e["calibration_accuracy"]) == names and e["epochs"] == 1
    if gap >= 1.0:  # any trail is within a gap of 1.0: one epoch
        assert len(epochs) == 1
    else:  # never within: every epoch but the last closed in on the one before it
        assert all(b < a for a, b in zip(trails, trails[1:-1]))
        assert len(epochs) == 3 or trails[-1] >= trails[-2]


def test_calibration_measures_every_level_from_the_passes_it_already_ran(tmp_path, monkeypatch):
    from dihs_model import cascade
    from dihs_model.evaluate import level_accuracies

    calls, run_pass = [], cascade.run_pass
    monkeypatch.setattr(cascade, "run_pass", lambda model, batches, heads, n: calls.append(
        None if heads is None else tuple(heads)) or run_pass(model, batches, heads, n))
    bundle = tiny_calibrated_bundle(tmp_path)
    shape = bundle.model.shape
    assert len(calls) == len(set(calls)) and None in calls  # each budget once, the full model as None
    assert (shape.n_heads,) * shape.n_layers not in calls
    acc = bundle.meta["cascade"]["level_accuracy"]
    assert acc == level_accuracies(bundle, Examples(TEXTS, LABELS, ["neg", "pos"]))
    assert list(acc) == [lv["name"] for lv in bundle.meta["levels"]]


def test_epochs_train_the_ladder_and_the_cascades_first_passes_each_once():
    scores = torch.rand(6, 12, generator=torch.Generator().manual_seed(0)).sort(dim=1, descending=True).values
    meta = {"levels": build_ladder(scores), "importance": {"michel": scores.tolist()}, "order_by": "michel"}
    always, others = trained_budgets(meta)
    smallest = meta["levels"][-1]["heads"]
    assert always == [smallest]
    wanted = [lv["heads"] for lv in meta["levels"][1:-1]] + [prefix_counts(scores, r) for r in CASCADE_TRAINED_RATIOS]
    assert others == [h for i, h in enumerate(wanted) if h not in wanted[:i] and h != smallest]
    assert len(others) == len(wanted)  # MiniLM's shape: all distinct, none the full model
    assert all(sum(h) < scores.numel() for h in others)
    # sandwich: the smallest first pass moves from the sampled budgets to every step
    always_s, others_s = trained_budgets(meta, sandwich=True)
    first = prefix_counts(scores, CASCADE_TRAINED_RATIOS[-1])
    assert always_s == [smallest, first] and others_s == [h for h in others if h != first]


def test_each_step_trains_the_full_model_the_smallest_budget_and_one_sampled_other():
    model = tiny_classifier()
    calls, forward = [], model.forward
    model.forward = lambda *a, **kw: calls.append(kw.get("heads")) or forward(*a, **kw)
    ids, mask = random_batch(B=4, T=6, seed=0, pad=False)
    others = [[3, 3, 3], [2, 2, 2]]
    for always in ([[1, 1, 1]], [[1, 1, 1], [0, 1, 1]]):  # the smallest level; with --sandwich a first pass too
        calls.clear()
        loss_fn, rng = budget_robust_loss(always, others), random.Random(0)
        for _ in range(12):
            loss = loss_fn(model, ids, mask, torch.tensor([0, 1, 2, 0]), rng)
            assert loss.requires_grad and torch.isfinite(loss)
        k = len(always) + 2
        steps = [calls[i:i + k] for i in range(0, len(calls), k)]
        assert len(steps) == 12 and all(s[0] is None and s[1:-1] == always and s[-1] in others for s in steps)
        assert {tuple(s[-1]) for s in steps} == {tuple(h) for h in others}  # every other budget gets sampled
