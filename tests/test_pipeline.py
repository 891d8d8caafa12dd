"""dihs_model.pipeline: a bundle trained end to end by one library call (what `dihs train` runs)."""

import json

import pytest
import torch

from dihs_model.bundle import BundleError
from dihs_model.pipeline import TrainPlan, train_bundle
from dihs_model.train import TrainConfig
from tests.conftest import write_reviews_csv


def test_train_bundle_writes_a_calibrated_bundle_and_returns_its_held_out_record(tiny_checkpoint, tmp_path):
    torch.set_num_threads(1)
    data = write_reviews_csv(tmp_path / "reviews.csv", n=60)
    notes = []
    plan = TrainPlan(
        data=str(data),
        out=tmp_path / "b",
        base_model=str(tiny_checkpoint),
        train=TrainConfig(min_epoch_examples=0, epochs=1, batch_size=8, lr=3e-3),
        budget_robust=False,
    )
    record = train_bundle(plan, torch.device("cpu"), progress=False, log=notes.append)
    meta = json.loads((tmp_path / "b" / "dihs.json").read_text())
    assert meta["eval"] == record and record["split"] == "held-out" and 0 <= record["dense_accuracy"] <= 1
    assert "levels" in meta and "budget_robust" not in meta
    assert notes and notes[0].startswith("task ")
    with pytest.raises(BundleError, match="exists; pass --force"):
        train_bundle(plan, torch.device("cpu"), progress=False)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"calibrate": False, "budget_robust": True}, "needs the head and neuron order"),
    ],
)
def test_a_plan_that_cannot_run_says_why_before_any_work(kw, message, tmp_path):
    plan = TrainPlan(data="election-tweets", out=tmp_path / "b", **kw)
    assert message in plan.problem()
    with pytest.raises(ValueError, match=message):
        train_bundle(plan, torch.device("cpu"), progress=False)
    assert not (tmp_path / "b").exists()
