"""service/plan_timing.py: seeded batches of calibration lengths, and each plan's seconds per batch
from its passes' times, a cascade's second pass weighted by the binomial count of escalated texts.
The pass timer is replaced by a cost model here, so the test checks the arithmetic, not a clock."""

import math

import pytest

import service.plan_timing as plan_timing
from dihs_model.cascade import EscalationTracker, candidate_plans
from service.plan_timing import measure_plan_times, sample_batches
from tests.conftest import tiny_calibrated_bundle


def test_sampled_batches_are_seeded_draws_of_the_calibration_lengths():
    tokens = [3, 10, 40, 90, 200]
    drawn = sample_batches(tokens, 4, 128, texts=12)
    assert drawn == sample_batches(tokens, 4, 128, texts=12) and len(drawn) == 3
    assert all(len(b) == 4 and set(b) <= {3, 10, 40, 90, 128} for b in drawn)  # never past the max length
    assert len({tuple(b) for b in drawn}) > 1
    assert len(sample_batches(tokens, 16, 128, texts=8)) == 1  # at least one batch


def _cost(model, budget, lengths, device) -> float:
    """A cost model in place of the timer: full model 1 ms a text, a budget by its heads' share."""
    share = 1.0 if budget is None else sum(budget.heads) / model.shape.total_heads
    return 1e-3 * share * len(lengths)


def test_a_cascade_costs_its_first_pass_and_the_expected_escalations(tmp_path, monkeypatch):
    bundle = tiny_calibrated_bundle(tmp_path)
    monkeypatch.setattr(plan_timing, "_batch_seconds", _cost)
    plans = candidate_plans(bundle.meta)
    trackers = [None if p is None else EscalationTracker(p) for p in plans]
    times = measure_plan_times(bundle.model, plans, trackers, [5, 9, 12], 32, 6, "cpu")
    assert [sorted(t) for t in times] == [[1, 2, 4, 6]] * len(plans)
    assert times[0] == {b: pytest.approx(1e-3 * b) for b in (1, 2, 4, 6)}
    total = bundle.model.shape.total_heads
    for p, tracker, t in zip(plans[1:], trackers[1:], times[1:]):
        first = sum(p.first.heads) / total
        second = 1.0 if p.second is None else sum(p.second.heads) / total
        for b in (1, 2, 4, 6):  # E[escalated texts] = b * share: linear, so the binomial sum is exact
            assert math.isclose(t[b], 1e-3 * b * (first + tracker.share * second), rel_tol=1e-9)
