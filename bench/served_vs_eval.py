"""What is served is what is evaluated, on real data: each named plan through the service's engine
(Engine.run, one text per model batch, in dihs eval's arrival order) against `dihs eval`'s
run_cascade on the same held-out texts of the task the bundle was trained on, in one dtype.

    python bench/served_vs_eval.py BUNDLE --texts 1289 --dtype bfloat16 "cascade 0.5" "cascade 0.25"

A plan is reached as a request reaches it: every plan admitted (PlanController.admit) and the
text's min and max FLOPs ratio both set to the plan's target. tests/test_served_cascade.py asserts
the same on a tiny model in every dtype; this is the check on a trained bundle (prints JSON).
"""

from __future__ import annotations

import argparse
import json

import torch

from dihs_model.bundle import load_bundle
from dihs_model.cascade import arrival_order, run_cascade
from dihs_model.data import load_split
from loadtests.common import task_of
from service.engine import Engine
from service.load import LoadConfig, LoadTracker
from service.metrics import NullMetrics
from service.routing import Item


def compare(bundle_path: str, texts: int, dtype: str, plans: list[str]) -> list[dict]:
    bundle = load_bundle(bundle_path)
    test = load_split(*task_of(None, "text", "label", bundle_path)).test
    ex = test.subset(list(range(min(texts, len(test)))))
    n = len(ex)
    engine = Engine(bundle, "x", LoadTracker(LoadConfig(0.25, 32)), NullMetrics(), dtype=dtype)
    engine.controller.admit([True] * len(engine.plans))
    batches = list(bundle.batches(ex, 64))
    labels = torch.tensor(ex.labels)
    out = []
    for i, plan in enumerate(engine.plans):
        if plan is None or engine.plan_name(i) not in plans:
            continue
        evaluated = run_cascade(engine.model, batches, plan, n)
        engine.trackers[i] = type(engine.trackers[i])(plan)  # a fresh tracker, as evaluation starts with
        t = plan.target_flops_ratio
        served = {k: engine.run([Item(ex.texts[k], min_ratio=t, max_ratio=t)])[0] for k in arrival_order(n)}
        preds = torch.tensor([bundle.labels.index(served[k]["label"]) for k in range(n)])
        assert all(s["plan"] == engine.plan_name(i) for s in served.values()), engine.plan_name(i)
        out.append(
            {
                "plan": engine.plan_name(i),
                "dtype": engine.dtype,
                "texts": n,
                "answers_agree": float((preds == evaluated.preds).float().mean()),
                "served_accuracy": float((preds == labels).float().mean()),
                "eval_accuracy": float((evaluated.preds == labels).float().mean()),
                "served_escalated": sum(s["escalated"] for s in served.values()) / n,
                "eval_escalated": evaluated.escalated,
                "served_mean_flops_ratio": sum(s["flops_ratio"] for s in served.values()) / n,
                "eval_flops_ratio": evaluated.flops_ratio,  # FLOPs-weighted over the texts' lengths
            }
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("plans", nargs="+", help='plan names as the service gives them, e.g. "cascade 0.5"')
    p.add_argument("--texts", type=int, default=10**9, help="the first N held-out texts (default all)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, int8 or auto (what serve picks)")
    a = p.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(compare(a.bundle, a.texts, a.dtype, a.plans), indent=1))


if __name__ == "__main__":
    main()
