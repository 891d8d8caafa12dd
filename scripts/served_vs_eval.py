"""What is served is what is evaluated, on real data: each named plan's answers through the service's
engine (Engine.run, one text per model batch, in dihs eval's arrival order) against dihs eval's
run_cascade on the same held-out texts of the task the bundle was trained on.

    python scripts/served_vs_eval.py BUNDLE N "cascade 0.5" "cascade 0.25"

N: the first N held-out texts. tests/test_served_cascade.py asserts the same on a tiny model.
"""

import sys

import torch

from dihs_model.bundle import load_bundle
from dihs_model.cascade import EscalationTracker, arrival_order, run_cascade
from dihs_model.data import load_split
from loadtests.common import task_of
from service.engine import Engine, Item
from service.load import LoadConfig, LoadTracker
from service.metrics import NullMetrics

torch.set_num_threads(1)

b = load_bundle(sys.argv[1])
n = int(sys.argv[2])
test = load_split(*task_of(None, "text", "label", sys.argv[1])).test
ex = test.subset(list(range(n)))
e = Engine(b, "x", LoadTracker(LoadConfig(0.25, 32)), NullMetrics())
batches = list(b.batches(ex, 64))
for i, p in enumerate(e.plans):
    if p is None or e.plan_name(i) not in sys.argv[3:]:
        continue
    ev = run_cascade(b.model, batches, p, n)
    e.trackers[i] = EscalationTracker(p)
    e.controller.choose = lambda pr, i=i: i
    served = {}
    for k in arrival_order(n):
        (served[k],) = e.run([Item(ex.texts[k])])
    acc_s = sum(b.labels.index(served[k]["label"]) == ex.labels[k] for k in range(n)) / n
    acc_e = float((ev.preds == torch.tensor(ex.labels)).float().mean())
    agree = sum(b.labels.index(served[k]["label"]) == int(ev.preds[k]) for k in range(n)) / n
    fl = sum(served[k]["flops_ratio"] for k in range(n)) / n
    print(
        f"{e.plan_name(i)}: served acc {acc_s:.4f} eval acc {acc_e:.4f} answers agree {agree:.4f}; "
        f"escalated served {sum(s['escalated'] for s in served.values()) / n:.3f} eval {ev.escalated:.3f}; "
        f"mean per-text FLOPs ratio served {fl:.3f}, eval (FLOPs-weighted) {ev.flops_ratio:.3f}"
    )
