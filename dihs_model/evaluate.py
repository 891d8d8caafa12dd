"""Accuracy vs FLOPs: every policy at every target FLOPs ratio, what a budget removes sliced away.

Policies:
- dense: the full model;
- static-heads: heads only (all FFN neurons run), a heads ratio equal to the target: the old
  head budgets, which cannot reach FLOPs targets under about 0.63 (their rows say what they spent);
- static-width: the width level the bundle's allocation gives for the target (heads and neurons);
- uniform-width: one width multiplier in every layer (DynaBERT), the other allocation;
- kwon: Kwon et al. 2022's Fisher mask search on the plainly fine-tuned weights (kwon.py);
- dihs: the confidence cascade over width budgets, both passes counted.
Every row carries its target, its measured FLOPs ratio (mean over the evaluated inputs at their real
lengths), heads and neurons ratios, accuracy and macro-F1; below 1.0, paired comparisons.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from sklearn.metrics import f1_score
from tqdm import tqdm

from .budget import Allocator, Budget, heads_only
from .bundle import Bundle
from .cascade import admission_report, has_current_plans, plan_from_meta, run_cascade
from .data import Examples
from .paired import compare
from .passes import Passes, run_pass
from .precision import dtype_name
from .surgery import allocate_heads, per_layer_normalized

TARGET_RATIOS = (1.0, 0.75, 0.5, 0.4, 0.3, 0.25)  # FLOPs
KWON_TARGETS = tuple(r for r in TARGET_RATIOS if r < 1.0)
POLICIES = ("dense", "static-heads", "static-width", "uniform-width", "kwon", "dihs")
BASELINES = ("static-heads", "static-width", "kwon")  # what each dihs row is compared with


def static_budget(bundle: Bundle, policy: str, ratio: float) -> Budget | None:
    """The budget a single-pass policy runs at `ratio` (None: the full model)."""
    shape = bundle.model.shape
    if policy == "dense" or ratio >= 1.0:
        return None
    if policy == "static-heads":
        # the order's scores, normalised per layer: the old head ladder (Michel 2019's global ranking)
        scores = per_layer_normalized(
            torch.tensor(bundle.meta["importance"]["heads"][bundle.meta["order_by"]])
        )
        return heads_only(shape, allocate_heads(scores, ratio), f"h{round(ratio * 100)}")
    if policy == "kwon":
        lv = next(lv for lv in bundle.meta["kwon"]["levels"] if abs(lv["target_flops_ratio"] - ratio) < 1e-9)
        return Budget.from_meta(lv)
    method = {"static-width": None, "uniform-width": "uniform"}[policy]
    return Allocator.from_meta(bundle.meta, shape, method)(ratio)


def predict(
    bundle: Bundle, ex: Examples, budget: Budget | None, batch_size: int = 64, batches: list | None = None
) -> tuple[list[int], float]:
    """Predicted label ids, and the FLOPs ratio of `budget` over these inputs.

    `batches` (from `bundle.batches(ex, ...)`) saves re-tokenizing when predicting many times.
    """
    res = run_pass(
        bundle.model, batches if batches is not None else bundle.batches(ex, batch_size), budget, len(ex)
    )
    full = Budget.full(bundle.model.shape)
    return res.preds.tolist(), (budget or full).flops_ratio(bundle.model.shape, res.tokens)


def level_accuracies(bundle: Bundle, ex: Examples) -> dict[str, float]:
    """Accuracy of each ladder level on `ex`."""
    batches = list(bundle.batches(ex, 64))
    out = {}
    for level in bundle.meta["levels"]:
        preds, _ = predict(bundle, ex, Budget.from_meta(level), batches=batches)
        out[level["name"]] = round(sum(int(p == y) for p, y in zip(preds, ex.labels)) / len(ex), 4)
    return out


def allocation_comparison(bundle: Bundle, ex: Examples) -> dict:
    """Both allocations at every target below 1.0 on `ex`: accuracy and FLOPs ratio of each."""
    shape = bundle.model.shape
    passes = Passes(bundle.model, list(bundle.batches(ex, 64)), len(ex))
    labels = torch.tensor(ex.labels)
    rows = []
    for method in ("global", "uniform"):
        allocator = Allocator.from_meta(bundle.meta, shape, method)
        for r in KWON_TARGETS:
            b = allocator(r)
            res = passes(b)
            rows.append(
                {
                    "allocation": method,
                    "target_flops_ratio": r,
                    "flops_ratio": round(b.flops_ratio(shape, res.tokens), 4),
                    "accuracy": round(float((res.preds == labels).float().mean()), 4),
                }
            )
    return {"split": "calibration", "n": len(ex), "weights": "plainly fine-tuned", "rows": rows}


def evaluate(
    bundle: Bundle,
    ex: Examples,
    task: str,
    policies=POLICIES,
    ratios=TARGET_RATIOS,
    progress: bool = True,
    max_accuracy_loss: float = 1.0,
) -> dict:
    """Every policy's row at every target; `auto_admission`: which plans `dihs serve` at this
    max_accuracy_loss admits on the bundle's calibration evidence (its 95% loss bound; 1: all)."""
    shape = bundle.model.shape
    full = Budget.full(shape)
    jobs = [(p, r) for p in policies for r in ratios if p != "dense" or r == 1.0]
    rows, correct = [], {}  # correct: (policy, target) -> per-input correctness, for paired comparisons
    batches = list(bundle.batches(ex, 64))  # tokenize once for every run
    passes = Passes(bundle.model, batches, len(ex))  # each distinct budget runs once (1.0 rows, first passes)
    kwon = Passes(bundle.kwon_model, batches, len(ex)) if bundle.kwon_model is not None else None
    for policy, ratio in tqdm(jobs, desc="eval", unit="run", disable=not progress):
        if policy == "kwon" and (kwon is None or ratio >= 1.0):
            continue  # no kwon weights (a bundle trained without budget-robust epochs): the row is left out
        if policy == "dihs" and ratio < 1.0:
            plan = plan_from_meta(bundle.meta, ratio)
            if plan is None:
                continue  # no plan for this target: recalibrate the bundle
            run = run_cascade(bundle.model, batches, plan, len(ex), first=passes(plan.first))
            pred_t, flops, heads_r, neurons_r = run.preds, run.flops_ratio, run.heads_ratio, run.neurons_ratio
        else:
            budget = static_budget(bundle, policy, ratio) or full
            res = (kwon if policy == "kwon" else passes)(budget)
            pred_t, flops = res.preds, budget.flops_ratio(shape, res.tokens)
            heads_r, neurons_r = budget.heads_ratio(shape), budget.neurons_ratio(shape)
        preds = pred_t.tolist()
        correct[(policy, ratio)] = [p == y for p, y in zip(preds, ex.labels)]
        rows.append(
            {
                "policy": policy,
                "target_flops_ratio": ratio,
                "flops_ratio": round(flops, 4),
                "heads_ratio": round(heads_r, 4),
                "neurons_ratio": round(neurons_r, 4),
                "accuracy": sum(correct[(policy, ratio)]) / len(ex),
                "macro_f1": float(
                    f1_score(
                        ex.labels,
                        preds,
                        average="macro",
                        labels=list(range(len(ex.label_names))),
                        zero_division=0,
                    )
                ),
            }
        )
    _add_comparisons(rows, correct)
    admission = admission_report(bundle.meta, max_accuracy_loss) if has_current_plans(bundle.meta) else []
    return {
        "task": task,
        "n": len(ex),
        "dtype": dtype_name(bundle.model),
        "rows": rows,
        "auto_admission": {"max_accuracy_loss": max_accuracy_loss, "plans": admission},
    }


def _add_comparisons(rows: list[dict], correct: dict) -> None:
    """Below 1.0, each row against dense and each dihs row against the baselines at its target,
    paired on the same inputs (paired.py): which gaps are more than the luck of the sample."""
    dense = next((c for (p, r), c in correct.items() if r >= 1.0), None)
    for row in rows:
        key = (row["policy"], row["target_flops_ratio"])
        if key[1] >= 1.0:
            continue
        if dense is not None:
            row["vs_dense"] = compare(correct[key], dense)
        if key[0] == "dihs":
            row["vs_static"] = {
                p: compare(correct[key], c) for (p, r), c in correct.items() if p in BASELINES and r == key[1]
            }


def plot_eval(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for policy in dict.fromkeys(r["policy"] for r in result["rows"]):
        rows = sorted((r for r in result["rows"] if r["policy"] == policy), key=lambda r: r["flops_ratio"])
        ax.plot([r["flops_ratio"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=policy)
    ax.set(
        xlabel="FLOPs computed / dense FLOPs (both cascade passes counted)",
        ylabel="accuracy",
        title=f"{result['task']}: accuracy vs FLOPs (n={result['n']})",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def write_json(obj: dict, out: Path) -> None:
    """Write atomically (temp file, then rename), so a reader never sees half a file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(out)
