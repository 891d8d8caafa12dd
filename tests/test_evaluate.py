"""`dihs eval`'s runs: each distinct head selection runs once, and sharing runs changes no row."""

from dihs_model.data import Examples
from dihs_model.evaluate import evaluate, predict, static_selection
from tests.conftest import tiny_calibrated_bundle


def test_each_distinct_selection_runs_once_and_rows_equal_separate_runs(tmp_path):
    bundle = tiny_calibrated_bundle(tmp_path)
    texts = ["good great fun", "bad awful dull", "love the movie", "hate the plot", "fun fun", "dull plot"] * 12
    ex = Examples(texts, [1, 0, 1, 0, 1, 0] * 12, ["neg", "pos"])
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
