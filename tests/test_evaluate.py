"""`dihs eval`'s runs: each distinct head selection runs once, and sharing runs changes no row."""

import pytest

from dihs_model.data import Examples
from dihs_model.evaluate import evaluate, predict, static_selection
from tests.conftest import tiny_calibrated_bundle


def _examples() -> Examples:
    texts = ["good great fun", "bad awful dull", "love the movie", "hate the plot", "fun fun", "dull plot"] * 12
    return Examples(texts, [1, 0, 1, 0, 1, 0] * 12, ["neg", "pos"])


def test_each_distinct_selection_runs_once_and_rows_equal_separate_runs(tmp_path):
    bundle = tiny_calibrated_bundle(tmp_path)
    ex = _examples()
    n_batches = len(list(bundle.batches(ex, 64)))
    calls = []
    forward = bundle.model.forward
    bundle.model.forward = lambda *a, **kw: calls.append(repr(kw.get("heads"))) or forward(*a, **kw)
    policies = ("dense", "static-michel", "static-fisher")
    res = evaluate(bundle, ex, "t", policies, progress=False)
    assert calls.count("None") == n_batches  # dense and both 1.0 rows: one dense run
    assert len(calls) == n_batches * len(set(calls))
    bundle.model.forward = forward
    for r in res["rows"]:
        preds, flops = predict(bundle, ex, static_selection(bundle, r["policy"], r["target_heads_ratio"]))
        assert r["accuracy"] == sum(int(p == y) for p, y in zip(preds, ex.labels)) / len(ex)
        assert r["flops_ratio"] == flops


def test_rows_below_full_heads_are_compared_with_dense_and_dihs_with_static_on_the_same_inputs(tmp_path):
    bundle = tiny_calibrated_bundle(tmp_path)
    ex = _examples()
    res = evaluate(bundle, ex, "t", ("dense", "static-michel", "static-fisher", "dihs"), progress=False)
    dense = next(r for r in res["rows"] if r["policy"] == "dense")
    below = [r for r in res["rows"] if r["target_heads_ratio"] < 1.0]
    assert any(r["policy"] == "dihs" for r in below)
    assert all("vs_dense" not in r for r in res["rows"] if r["target_heads_ratio"] >= 1.0)
    for r in below:  # paired against dense, and dihs against each static policy at its target
        assert r["vs_dense"]["accuracy_diff"] == pytest.approx(r["accuracy"] - dense["accuracy"])
        if r["policy"] == "dihs":
            static = {s["policy"]: s for s in below if s["target_heads_ratio"] == r["target_heads_ratio"]
                      and s["policy"].startswith("static-")}
            assert set(r["vs_static"]) == set(static) == {"static-michel", "static-fisher"}
            for name, s in static.items():
                assert r["vs_static"][name]["accuracy_diff"] == pytest.approx(r["accuracy"] - s["accuracy"])
