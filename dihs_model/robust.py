"""Budget-robust training over width (DynaBERT-style, `train.budget_robust_loss`): epochs in which
the full model, the smallest budget and one sampled budget learn together, the smaller ones
distilled from the full model, each epoch followed by recalibration (the head and neuron orders
move), until the ladder's smallest level trails the full model by at most ROBUST_GAP on the
calibration split, stops closing in, or ROBUST_MAX_EPOCHS have run. The epoch kept is the one whose
smallest level trailed least (an epoch that stopped closing in is measured, then dropped: one such
third epoch took the smallest level from 0.905 to 0.866 on election-tweets' calibration split).

The budgets trained are the ladder's levels and the cascade's first passes: the smallest first
pass every step (the slimmable "sandwich rule": always the full and the smallest width), one of
the others sampled per step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

from .budget import Allocator, Budget
from .calibrate import calibrate_bundle
from .cascade import FIRST_PASS_RATIOS
from .dtype_choice import measure_agreement
from .levels import LADDER
from .train import TrainConfig, budget_robust_loss, fine_tune

ROBUST_GAP = 0.02  # accuracy the smallest level may trail the full one by on the calibration split
ROBUST_MAX_EPOCHS = 3
ROBUST_LR_SCALE = 0.3  # of the fine-tuning learning rate: the model is already trained
TRAINED_RATIOS = tuple(sorted(set(LADDER[1:]) | set(FIRST_PASS_RATIOS), reverse=True))  # FLOPs


def trained_budgets(meta: dict, shape) -> tuple[list[Budget], list[Budget]]:
    """(the budgets every step trains: the smallest; the budgets one of which each step samples)."""
    allocator = Allocator.from_meta(meta, shape)
    budgets = [allocator(r) for r in TRAINED_RATIOS]
    distinct = [b for i, b in enumerate(budgets) if b.key not in {c.key for c in budgets[:i]}]
    return distinct[-1:], distinct[:-1]


def train_budget_robust(
    bundle,
    fit,
    calib,
    cfg: TrainConfig,
    order_by: str,
    progress: bool = True,
    max_epochs: int = ROBUST_MAX_EPOCHS,
    gap: float = ROBUST_GAP,
    on_step: Callable[[int], None] | None = None,
):
    """Returns the recalibrated bundle of the epoch whose smallest level trailed least, and a record
    of every epoch (calibration accuracy per level) and of the one kept. `on_step(k)`: k steps of at
    most max_epochs * cfg.steps_per_epoch(len(fit)) are done."""
    epochs, kept = [], None
    per_epoch = cfg.steps_per_epoch(len(fit))
    for k in range(max_epochs):
        always, others = trained_budgets(bundle.meta, bundle.model.shape)
        summary = fine_tune(
            bundle,
            fit,
            replace(cfg, epochs=1, lr=cfg.lr * ROBUST_LR_SCALE, seed=cfg.seed + k),
            progress=progress,
            loss_fn=budget_robust_loss(always, others),
            desc=f"budget-robust {k + 1}",
            on_step=None if on_step is None else lambda step, k=k: on_step(k * per_epoch + step),
        )
        bundle = calibrate_bundle(
            bundle, calib, order_by, progress=progress, allocation=bundle.meta["allocation"], dtypes="none"
        )  # the dtype agreement only of the epoch kept, below
        acc = bundle.meta["cascade"]["level_accuracy"]  # measured on `calib` by the recalibration
        trail = round(acc[bundle.meta["levels"][0]["name"]] - acc[bundle.meta["levels"][-1]["name"]], 4)
        epochs.append({**summary, "calibration_accuracy": acc, "smallest_level_trails_by": trail})
        if kept is None or trail < epochs[kept[0]]["smallest_level_trails_by"]:
            kept = (
                k,
                replace(bundle, model=copy.deepcopy(bundle.model)),
            )  # the next epoch trains bundle.model
        if trail <= gap or (len(epochs) > 1 and trail >= epochs[-2]["smallest_level_trails_by"]):
            break
    kept_bundle = kept[1]
    kept_bundle.meta["dtype_agreement"] = measure_agreement(kept_bundle, calib)
    return kept_bundle, {
        "epochs": len(epochs),
        "kept_epoch": kept[0] + 1,
        "stop_when_smallest_level_trails_by_at_most": gap,
        "max_epochs": max_epochs,
        "trained_flops_ratios": list(TRAINED_RATIOS),
        "per_epoch": epochs,
    }
