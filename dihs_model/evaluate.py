"""Accuracy vs heads: every policy at every target heads ratio, heads removed by slicing."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from sklearn.metrics import f1_score
from tqdm import tqdm

from .bundle import Bundle
from .cascade import Passes, plan_from_meta, run_cascade, run_pass
from .data import Examples
from .paired import compare
from .surgery import Selection, allocate_heads, flops_ratio, head_count

TARGET_RATIOS = (1.0, 0.75, 0.5, 0.4, 0.3, 0.25)
POLICIES = ("dense", "random", "static-michel", "static-fisher", "static-attention", "dihs")
RANDOM_SEED = 0


def static_selection(bundle: Bundle, policy: str, ratio: float) -> Selection | None:
    """The heads a static policy keeps at `ratio` (None: all heads)."""
    if policy == "dense" or ratio >= 1.0:
        return None
    shape = bundle.model.shape
    if policy == "random":
        g = torch.Generator().manual_seed(RANDOM_SEED)
        scores = torch.rand(shape.n_layers, shape.n_heads, generator=g)
    else:
        scores = torch.tensor(bundle.meta["importance"][policy.removeprefix("static-")])
    return allocate_heads(scores, ratio)


def predict(bundle: Bundle, ex: Examples, heads: Selection | None, batch_size: int = 64,
            batches: list | None = None) -> tuple[list[int], float]:
    """Predicted label ids, and the analytic FLOPs ratio (this selection / dense) over these inputs.

    `batches` (from `bundle.batches(ex, ...)`) saves re-tokenizing when predicting many times.
    """
    res = run_pass(bundle.model, batches if batches is not None else bundle.batches(ex, batch_size), heads, len(ex))
    return res.preds.tolist(), flops_ratio(bundle.model.shape, heads, res.tokens)


def level_accuracies(bundle: Bundle, ex: Examples) -> dict[str, float]:
    """Accuracy of each ladder level (heads as stored: prefixes) on `ex`."""
    batches = list(bundle.batches(ex, 64))
    out = {}
    for level in bundle.meta["levels"]:
        preds, _ = predict(bundle, ex, level["heads"], batches=batches)
        out[level["name"]] = round(sum(int(p == y) for p, y in zip(preds, ex.labels)) / len(ex), 4)
    return out


def evaluate(bundle: Bundle, ex: Examples, task: str, policies=POLICIES, ratios=TARGET_RATIOS,
             progress: bool = True) -> dict:
    shape = bundle.model.shape
    jobs = [(p, r) for p in policies for r in ratios if p != "dense" or r == 1.0]
    rows, correct = [], {}  # correct: (policy, target) -> per-input correctness, for paired comparisons
    batches = list(bundle.batches(ex, 64))  # tokenize once for every run
    passes = Passes(bundle.model, batches, len(ex))  # each distinct selection runs once (1.0 rows, first passes)
    for policy, ratio in tqdm(jobs, desc="eval", unit="run", disable=not progress):
        if policy == "dihs" and ratio < 1.0:
            plan = plan_from_meta(bundle.meta, ratio)
            if plan is None:
                continue  # no plan for this target: recalibrate the bundle
            pred_t, heads_ratio, flops, _ = run_cascade(bundle.model, batches, plan, shape, len(ex),
                                                        first=passes(plan.first_heads))
        else:
            heads = None if policy == "dihs" else static_selection(bundle, policy, ratio)
            run = passes(heads)
            pred_t, flops = run.preds, flops_ratio(shape, heads, run.tokens)
            heads_ratio = 1.0 if heads is None else sum(head_count(c) for c in heads) / shape.total_heads
        preds = pred_t.tolist()
        correct[(policy, ratio)] = [p == y for p, y in zip(preds, ex.labels)]
        rows.append({
            "policy": policy, "target_heads_ratio": ratio, "heads_ratio": heads_ratio,
            "flops_ratio": flops,
            "accuracy": sum(correct[(policy, ratio)]) / len(ex),
            "macro_f1": float(f1_score(ex.labels, preds, average="macro", labels=list(range(len(ex.label_names))),
                                       zero_division=0)),
        })
    _add_comparisons(rows, correct)
    return {"task": task, "n": len(ex), "rows": rows}


def _add_comparisons(rows: list[dict], correct: dict) -> None:
    """Below 1.0, each row against dense and each dihs row against the static policies at its target,
    paired on the same inputs (paired.py): which gaps are more than the luck of the sample."""
    dense = next((c for (p, r), c in correct.items() if r >= 1.0), None)
    for row in rows:
        key = (row["policy"], row["target_heads_ratio"])
        if key[1] >= 1.0:
            continue
        if dense is not None:
            row["vs_dense"] = compare(correct[key], dense)
        if key[0] == "dihs":
            row["vs_static"] = {p: compare(correct[key], c) for (p, r), c in correct.items()
                                if p.startswith("static-") and r == key[1]}


def plot_eval(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for policy in dict.fromkeys(r["policy"] for r in result["rows"]):
        rows = sorted((r for r in result["rows"] if r["policy"] == policy), key=lambda r: r["heads_ratio"])
        ax.plot([r["heads_ratio"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=policy)
    ax.set(xlabel="heads computed / all heads", ylabel="accuracy",
           title=f"{result['task']}: accuracy vs attention heads (n={result['n']})")
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
