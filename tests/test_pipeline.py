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


def _early_plan(tiny_checkpoint, tmp_path) -> TrainPlan:
    return TrainPlan(
        data=str(write_reviews_csv(tmp_path / "reviews.csv", n=60)),
        out=tmp_path / "final",
        base_model=str(tiny_checkpoint),
        train=TrainConfig(min_epoch_examples=0, epochs=1, batch_size=8, lr=3e-3),
        early_out=tmp_path / "early",
    )


def test_the_early_bundle_carries_the_width_trainings_progress_to_the_end(tiny_checkpoint, tmp_path):
    from dihs_model.data import load_split, split_calibration
    from dihs_model.robust import ROBUST_MAX_EPOCHS
    from dihs_model.train_progress import read_progress

    torch.set_num_threads(1)
    plan = _early_plan(tiny_checkpoint, tmp_path)
    train_bundle(plan, torch.device("cpu"), progress=False)
    record = read_progress(tmp_path / "early")
    epochs = json.loads((tmp_path / "final" / "dihs.json").read_text())["budget_robust"]["epochs"]
    fit, _ = split_calibration(load_split(plan.data).train)
    steps = plan.train.steps_per_epoch(len(fit))
    assert record["status"] == "done" and record["total"] == ROBUST_MAX_EPOCHS * steps
    assert record["done"] == epochs * steps and record["error"] is None


def test_a_width_training_that_fails_says_so_in_the_early_bundle(tiny_checkpoint, tmp_path, monkeypatch):
    import dihs_model.pipeline as pipeline
    from dihs_model.train_progress import read_progress

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline, "budget_robust", broken)
    torch.set_num_threads(1)
    with pytest.raises(RuntimeError, match="disk full"):
        train_bundle(_early_plan(tiny_checkpoint, tmp_path), torch.device("cpu"), progress=False)
    assert read_progress(tmp_path / "early")["status"] == "failed"
    assert read_progress(tmp_path / "early")["error"] == "RuntimeError: disk full"
    assert (tmp_path / "early" / "dihs.json").is_file() and not (tmp_path / "final").exists()
