"""Train a bundle end to end: fine-tune, calibrate, the kwon baseline, budget-robust (width) epochs,
held-out accuracy, save.

What `dihs train` does, as a library call: the CLI parses flags into a TrainPlan, calls
`train_bundle` and prints. Progress notes go to `log` (the CLI passes a stderr printer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .robust import ROBUST_MAX_EPOCHS
from .train import TrainConfig, fine_tune
from .train_progress import TrainProgress


@dataclass(frozen=True)
class TrainPlan:
    data: str
    out: Path
    base_model: str | None = None  # None: the packaged encoder (bundle.default_base_model)
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = 128
    train: TrainConfig = field(default_factory=TrainConfig)
    calibrate: bool = True
    order_by: str = "michel"
    budget_robust: bool | None = None  # None: on when calibrating
    force: bool = False
    early_out: Path | None = None  # also write the calibrated fine-tuned bundle here, before width training
    # what serving does not need: the kwon baseline's weights, the allocation comparison and the
    # held-out accuracy of every level before and after width training (82 s at 2 idle threads on
    # election-tweets, bench/train_stages.py)
    report: bool = False

    @property
    def robust(self) -> bool:
        return self.calibrate if self.budget_robust is None else self.budget_robust

    def problem(self) -> str | None:
        """Why this plan cannot run (a flag combination), or None."""
        if self.budget_robust and not self.calibrate:
            return (
                "--budget-robust needs the head and neuron order that calibration finds: drop --no-calibrate"
            )
        if self.early_out is not None and not self.robust:
            return "--early-out is the bundle before width training: drop --no-budget-robust / --no-calibrate"
        if self.early_out is not None and Path(self.early_out).resolve() == Path(self.out).resolve():
            return "--early-out must be another folder than --out (the service swaps one for the other)"
        return None


def _quiet(_: str) -> None:
    pass


def train_bundle(plan: TrainPlan, device, progress: bool = True, log: Callable[[str], None] = _quiet) -> dict:
    """Train, calibrate, make budget-robust, evaluate on the held-out split and save to plan.out.

    Raises BundleError (bundle exists, bad checkpoint) and DataError (bad data) before slow work
    starts. Returns the saved bundle's `eval` record (data, split, n, dense_accuracy).
    """
    from .bundle import BundleError, check_checkpoint, default_base_model, new_bundle, save_bundle
    from .calibrate import calibrate_bundle
    from .data import load_split, split_calibration

    problem = plan.problem()
    if problem:
        raise ValueError(problem)
    if plan.out.exists() and not plan.force:
        raise BundleError(f"{plan.out} exists; pass --force to replace it")
    base_model = plan.base_model or default_base_model()
    check_checkpoint(base_model)
    split = load_split(plan.data, plan.text_column, plan.label_column)
    fit, calib = split_calibration(split.train)
    log(
        f"task {split.name}: {len(fit)} train / {len(calib)} calibration / "
        f"{len(split.test)} held-out examples, {len(split.train.label_names)} classes"
    )
    bundle = new_bundle(base_model, split.train.label_names, plan.max_length, device)
    bundle.meta["train"] = fine_tune(bundle, fit, plan.train, progress=progress)
    bundle.meta["data"] = {
        "spec": plan.data,
        "text_column": plan.text_column,
        "label_column": plan.label_column,
    }
    progress_file = None
    if plan.calibrate:
        # width training recounts the dtype agreement for the epoch it keeps: the full model's is
        # all the early bundle needs
        agreement = "full" if plan.robust else "all"
        bundle = calibrate_bundle(bundle, calib, plan.order_by, progress=progress, dtypes=agreement)
        if plan.early_out is not None and plan.robust:  # servable now: `make run` answers from here on
            early = replace(bundle, meta={**bundle.meta, "width_training": "in progress"}, kwon_model=None)
            save_bundle(early, plan.early_out, force=True)
            progress_file = TrainProgress(
                plan.early_out, ROBUST_MAX_EPOCHS * plan.train.steps_per_epoch(len(fit))
            )
            log(f"early bundle (fine-tuned, calibrated; width training next) written to {plan.early_out}")
    try:
        bundle = _finish(bundle, fit, calib, split, plan, progress, log, progress_file)
    except BaseException as e:  # the service serving the early bundle reads why it stays early
        if progress_file is not None:
            progress_file.failed(e)
        raise
    if progress_file is not None:
        progress_file.finished()
    return bundle.meta["eval"]


def _finish(bundle, fit, calib, split, plan: TrainPlan, progress: bool, log, progress_file):
    """After calibration: the --report stages, width training, the held-out record, saving."""
    from .bundle import save_bundle
    from .evaluate import KWON_TARGETS, allocation_comparison, predict
    from .kwon import attach_kwon

    if plan.calibrate and plan.report:  # on the plainly fine-tuned weights: both allocations, kwon
        bundle.meta["allocation_comparison"] = allocation_comparison(bundle, calib)
        if plan.robust:
            bundle = attach_kwon(bundle, KWON_TARGETS)
    if plan.robust:
        on_step = None if progress_file is None else progress_file.step
        bundle = budget_robust(bundle, fit, calib, split.test, plan, progress, log, on_step)
    preds, _ = predict(bundle, split.test, None)
    acc = sum(int(p == y) for p, y in zip(preds, split.test.labels)) / len(split.test)
    bundle.meta["eval"] = {
        "data": split.name,
        "split": "held-out",
        "n": len(split.test),
        "dense_accuracy": acc,
    }
    save_bundle(bundle, plan.out, force=plan.force)
    return bundle


def budget_robust(
    bundle,
    fit,
    calib,
    test,
    plan: TrainPlan,
    progress: bool = True,
    log: Callable[[str], None] = _quiet,
    on_step: Callable[[int], None] | None = None,
):
    """Budget-robust epochs (robust.py); with plan.report, per-level held-out accuracy before and
    after goes into the bundle."""
    from .evaluate import level_accuracies
    from .robust import train_budget_robust

    before = level_accuracies(bundle, test) if plan.report else None
    bundle, record = train_budget_robust(
        bundle, fit, calib, plan.train, plan.order_by, progress=progress, on_step=on_step
    )
    bundle.meta["budget_robust"] = record
    kept = f"budget-robust ({record['epochs']} epochs, epoch {record['kept_epoch']} kept)"
    if plan.report:
        after = level_accuracies(bundle, test)
        record.update(held_out_accuracy_before=before, held_out_accuracy_after=after)
        log(f"{kept}: held-out accuracy per level {before} -> {after}")
    else:
        calib_acc = record["per_epoch"][record["kept_epoch"] - 1]["calibration_accuracy"]
        log(f"{kept}: calibration accuracy per level {calib_acc}")
    return bundle
