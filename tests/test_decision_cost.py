"""`decision_cost` times the budget decision next to the dense forward it steers."""

import math

from dihs_model.decision_cost import decision_cost
from tests.conftest import tiny_calibrated_bundle


def test_decision_cost_reports_each_decision_beside_the_dense_forward(tmp_path):
    bundle = tiny_calibrated_bundle(tmp_path)
    result = decision_cost(bundle, seq_lens=(8, 16, 10_000), warmup=1, repeats=3)
    # 10_000 tokens is past the bundle's max_length: timed at max_length, once
    assert [r["seq_len"] for r in result["rows"]] == [8, 16, bundle.max_length]
    for r in result["rows"]:
        for key in ("dense_forward_ms", "complexity_and_policy_ms", "cascade_gate_ms"):
            assert r[key] > 0
        assert math.isclose(
            r["complexity_and_policy_share"],
            r["complexity_and_policy_ms"] / r["dense_forward_ms"],
            rel_tol=1e-2,
            abs_tol=1e-4,
        )
