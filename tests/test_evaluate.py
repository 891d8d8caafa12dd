"""`dihs eval`'s runs: each distinct budget runs once, sharing runs changes no row, and every row
says what it spent in FLOPs."""

import pytest

from dihs_model.budget import Budget
from dihs_model.data import Examples
from dihs_model.evaluate import evaluate, predict, static_budget
from dihs_model.kwon import attach_kwon
from tests.conftest import tiny_calibrated_bundle


def _examples() -> Examples:
    texts = [
        "good great fun",
        "bad awful dull",
        "love the movie",
        "hate the plot",
        "fun fun",
        "dull plot",
    ] * 12
    return Examples(texts, [1, 0, 1, 0, 1, 0] * 12, ["neg", "pos"])


def test_each_distinct_budget_runs_once_and_rows_equal_separate_runs(tmp_path):
    bundle = tiny_calibrated_bundle(tmp_path)
    ex = _examples()
    n_batches = len(list(bundle.batches(ex, 64)))
    calls = []
    forward = bundle.model.forward
    bundle.model.forward = lambda *a, **kw: (
        calls.append(repr(kw.get("budget") and kw["budget"].key)) or forward(*a, **kw)
    )
    policies = ("dense", "static-heads", "static-width", "uniform-width")
    res = evaluate(bundle, ex, "t", policies, progress=False)
    assert calls.count("None") == n_batches  # dense and every 1.0 row: one dense run
    assert len(calls) == n_batches * len(set(calls))
    bundle.model.forward = forward
    shape = bundle.model.shape
    for r in res["rows"]:
        budget = static_budget(bundle, r["policy"], r["target_flops_ratio"])
        preds, flops = predict(bundle, ex, budget)
        assert r["accuracy"] == sum(int(p == y) for p, y in zip(preds, ex.labels)) / len(ex)
        assert r["flops_ratio"] == round(flops, 4)
        b = budget or Budget.full(shape)
        assert (r["heads_ratio"], r["neurons_ratio"]) == (
            round(b.heads_ratio(shape), 4),
            round(b.neurons_ratio(shape), 4),
        )
        if r["policy"] == "static-heads":
            assert r["neurons_ratio"] == 1.0  # heads only: the old budgets
        elif r["policy"] in ("static-width", "uniform-width"):
            assert (
                abs(r["flops_ratio"] - r["target_flops_ratio"]) <= 0.1
            )  # tiny lengths differ from calibration's


def test_rows_below_dense_are_compared_with_dense_and_dihs_with_every_baseline_on_the_same_inputs(tmp_path):
    bundle = attach_kwon(tiny_calibrated_bundle(tmp_path), (0.75, 0.5, 0.4, 0.3, 0.25))
    ex = _examples()
    res = evaluate(bundle, ex, "t", ("dense", "static-heads", "static-width", "kwon", "dihs"), progress=False)
    dense = next(r for r in res["rows"] if r["policy"] == "dense")
    below = [r for r in res["rows"] if r["target_flops_ratio"] < 1.0]
    assert any(r["policy"] == "dihs" for r in below) and any(r["policy"] == "kwon" for r in below)
    assert all("vs_dense" not in r for r in res["rows"] if r["target_flops_ratio"] >= 1.0)
    for r in below:  # paired against dense, and dihs against each baseline at its target
        assert r["vs_dense"]["accuracy_diff"] == pytest.approx(r["accuracy"] - dense["accuracy"])
        if r["policy"] == "dihs":
            base = {
                s["policy"]: s
                for s in below
                if s["target_flops_ratio"] == r["target_flops_ratio"] and s["policy"] != "dihs"
            }
            assert set(r["vs_static"]) == set(base) == {"static-heads", "static-width", "kwon"}
            for name, s in base.items():
                assert r["vs_static"][name]["accuracy_diff"] == pytest.approx(r["accuracy"] - s["accuracy"])


def test_kwon_runs_its_own_weights_and_budgets(tmp_path):
    bundle = attach_kwon(tiny_calibrated_bundle(tmp_path), (0.5,))
    ex = _examples()
    res = evaluate(bundle, ex, "t", ("kwon",), ratios=(0.5,), progress=False)
    (row,) = res["rows"]
    budget = Budget.from_meta(bundle.meta["kwon"]["levels"][0])
    from dihs_model.passes import run_pass

    preds = run_pass(bundle.kwon_model, list(bundle.batches(ex, 64)), budget, len(ex)).preds.tolist()
    assert row["accuracy"] == sum(int(p == y) for p, y in zip(preds, ex.labels)) / len(ex)
    # without the kwon weights the row is left out, not faked
    bundle.kwon_model = None
    assert evaluate(bundle, ex, "t", ("kwon",), ratios=(0.5,), progress=False)["rows"] == []
