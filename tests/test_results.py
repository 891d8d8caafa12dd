"""service/results.py: one text's cost sums every pass it ran, its Result fields come from its last
pass, and its per-text metrics are recorded from those fields."""

import math

import torch

from dihs_model.budget import Budget
from service.metrics import NullMetrics
from service.results import Served, pass_cost, record_result, result_fields, rounded
from tests.test_surgery import _minilm_shape

SHAPE = _minilm_shape()  # 6 layers x 12 heads, 1536 FFN neurons
HALF = Budget("f50", (6,) * 6, (768,) * 6)


def test_a_cascade_costs_both_its_passes():
    one = pass_cost(SHAPE, [HALF], 40)
    two = pass_cost(SHAPE, [HALF, None], 40)
    assert one["heads"] == {"active": 36, "total": 72, "ratio": 0.5, "per_layer": [6] * 6}
    assert two["heads"]["active"] == 36 + 72 and two["heads"]["ratio"] == 1.5
    assert two["neurons"]["per_layer"] == [768 + 1536] * 6
    assert [p["budget"] for p in two["passes"]] == ["f50", "f100"]
    full = pass_cost(SHAPE, [None], 40)["flops_ratio"]
    assert full == 1.0 and 0.4 < one["flops_ratio"] < 0.6
    assert math.isclose(two["flops_ratio"], one["flops_ratio"] + 1.0, abs_tol=2e-4)


def test_the_result_is_the_last_pass_with_the_gate_rounded():
    s = Served(torch.tensor([0.0, 2.0]), [HALF, None], "escalated", "cascade 0.5", 0.123456, -math.inf, True)
    r = result_fields(s, ["neg", "pos"], SHAPE, {"score": 0.3}, 0.54321, False, 12)
    assert r["label"] == "pos" and r["level"] == "f100" and r["escalated"] and r["plan"] == "cascade 0.5"
    assert r["margin"] == 0.1235 and r["threshold"] is None and r["pressure"] == 0.5432
    assert math.isclose(sum(r["probabilities"].values()), 1.0, abs_tol=1e-5)
    assert rounded(None) is None and rounded(math.inf) is None and rounded(0.00004) == 0.0


def test_record_result_logs_each_per_text_metric_once():
    s = Served(torch.tensor([1.0, 0.0]), [HALF], "fixed budget")
    r = result_fields(s, ["neg", "pos"], SHAPE, {"score": 0.7}, 0.0, True, 5)
    m = NullMetrics()
    record_result(m, r)
    names = [name for name, _, _ in m.log]
    assert sorted(names) == sorted(
        [
            "dihs_active_heads",
            "dihs_active_heads_ratio",
            "dihs_active_neurons_ratio",
            "dihs_flops_ratio",
            "dihs_budget_level",
            "dihs_input_complexity",
        ]
    )
    assert ("dihs_budget_level", 1, {"level": "f50"}) in m.log and ("dihs_active_heads", 36, {}) in m.log
