"""The DIHS confidence cascade: thresholds hit the target mean heads on the calibration split,
and running a plan counts both passes."""

import random

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dihs_model.cascade import TRACK_WARMUP, CascadePlan, EscalationTracker, Passes, fit_plans, run_cascade, run_pass
from tests.conftest import random_batch, tiny_classifier


def _batches(n_batches=25, B=8):
    out = []
    for i in range(n_batches):
        ids, mask = random_batch(B=B, T=10, seed=i, pad=False)
        y = torch.randint(0, 3, (B,), generator=torch.Generator().manual_seed(100 + i))
        out.append((list(range(i * B, (i + 1) * B)), ids, mask, y))
    return out


def _confident_tiny():
    """A tiny model whose confidences spread out (a random init outputs near-uniform ties)."""
    model = tiny_classifier()
    with torch.no_grad():
        model.classifier.weight.mul_(10.0)
    return model


def test_thresholds_hit_the_target_mean_heads_on_the_calibration_split():
    model = _confident_tiny()
    batches = _batches()
    labels = torch.cat([b[3] for b in batches])
    scores = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)).sort(dim=1, descending=True).values
    plans = fit_plans(Passes(model, batches, len(labels)), labels, scores, (0.75, 0.5, 0.4, 0.3))
    assert [p.target_ratio for p in plans] == [0.75, 0.5, 0.4, 0.3]
    for p in plans:
        assert p.first_ratio <= p.target_ratio + 1e-9
        assert p.second_ratio > p.first_ratio
        assert abs(p.first_ratio + p.calib_escalated * p.second_ratio - p.target_ratio) <= 0.02, p
        preds, heads_ratio, flops_ratio, escalated = run_cascade(model, batches, p, model.shape, len(labels),
                                                                 track=False)
        assert abs(heads_ratio - p.target_ratio) <= 0.02  # same inputs: same fractions
        assert abs(heads_ratio - (p.first_ratio + escalated * p.second_ratio)) < 1e-9
        acc = float((preds == labels).float().mean())
        assert abs(acc - p.calib_accuracy) < 1e-9
        full = run_pass(model, batches, None, len(labels)).preds
        assert abs(float((preds == full).float().mean()) - p.calib_agreement) < 1e-9


def test_escalated_inputs_get_the_full_model_answer():
    model = tiny_classifier()
    batches = _batches(4)
    n = 32
    full = run_pass(model, batches, None, n)
    first = run_pass(model, batches, [1, 1, 1], n)
    everyone = CascadePlan(1.25, [1, 1, 1], 0.25, threshold=float("inf"), calib_escalated=1.0, calib_accuracy=0.0)
    preds, heads_ratio, _, esc = run_cascade(model, batches, everyone, model.shape, n)
    assert torch.equal(preds, full.preds) and esc == 1.0 and heads_ratio == 1.25
    nobody = CascadePlan(0.25, [1, 1, 1], 0.25, threshold=-1.0, calib_escalated=0.0, calib_accuracy=0.0)
    preds, heads_ratio, flops_ratio, esc = run_cascade(model, batches, nobody, model.shape, n)
    assert torch.equal(preds, first.preds) and esc == 0.0 and flops_ratio < 1.0


def test_escalation_to_a_middle_budget_gives_that_budgets_answer_and_cost():
    model = _confident_tiny()
    batches = _batches(4)
    n = 32
    middle = run_pass(model, batches, [2, 2, 2], n)
    plan = CascadePlan(0.75, [1, 1, 1], 0.25, threshold=float("inf"), calib_escalated=1.0, calib_accuracy=0.0,
                       second_heads=[2, 2, 2], second_ratio=0.5)
    preds, heads_ratio, flops_ratio, esc = run_cascade(model, batches, plan, model.shape, n)
    assert torch.equal(preds, middle.preds) and esc == 1.0 and abs(heads_ratio - 0.75) < 1e-9
    assert flops_ratio > 1.0  # the first pass's FFN work is paid again by every escalated input


def test_plans_load_only_for_the_current_confidence_and_default_to_an_all_heads_second_pass():
    from dihs_model.cascade import plan_from_meta

    old = {"target_ratio": 0.5, "first_heads": [1, 1, 1], "first_ratio": 0.25, "threshold": 0.7,
           "calib_escalated": 0.25, "calib_accuracy": 0.9}
    current = {"cascade": {"confidence": "logit_margin", "plans": [old]}}
    plan = plan_from_meta(current, 0.5)
    assert plan.second_heads is None and plan.second_ratio == 1.0
    assert plan_from_meta(current, 0.3) is None
    # thresholds on the max probability (the first bundles) mean nothing for a margin: recalibrate
    assert plan_from_meta({"cascade": {"plans": [old]}}, 0.5) is None


def test_tied_confidences_never_give_a_plan_off_its_target():
    """A model whose every input has the same margin: a threshold escalates all inputs or none, so
    only plans whose budgets add up to the target (all) or equal it (none) may be kept."""
    model = _confident_tiny()
    with torch.no_grad():
        model.classifier.weight.zero_()
    batches = _batches()
    labels = torch.cat([b[3] for b in batches])
    scores = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)).sort(dim=1, descending=True).values
    for p in fit_plans(Passes(model, batches, len(labels)), labels, scores, (0.75, 0.5, 0.4, 0.3)):
        assert p.calib_escalated in (0.0, 1.0)
        assert abs(p.first_ratio + p.calib_escalated * p.second_ratio - p.target_ratio) <= 0.02, p


def test_each_budget_runs_once_however_often_it_is_asked_for():
    model = tiny_classifier()
    batches = _batches(2)
    calls = []
    forward = model.forward
    model.forward = lambda *a, **kw: calls.append(kw.get("heads")) or forward(*a, **kw)
    passes = Passes(model, batches, 16)
    first = passes([1, 1, 1])
    assert passes([1, 1, 1]) is first and passes(None) is passes(None)
    assert calls == [[1, 1, 1]] * len(batches) + [None] * len(batches)


def test_a_prefix_given_as_head_lists_runs_once_as_counts_with_the_same_answers():
    model = _confident_tiny()
    batches = _batches(3)
    passes = Passes(model, batches, 24)
    as_lists = passes([[0, 1], [0], [0, 1, 2]])
    assert passes([2, 1, 3]) is as_lists
    sliced = run_pass(model, batches, [[0, 1], [0], [0, 1, 2]], 24)  # the head-list path, run directly
    assert torch.equal(sliced.preds, as_lists.preds)
    assert torch.allclose(sliced.conf, as_lists.conf, atol=1e-5)
    assert passes([[1, 0], [0], [0, 1, 2]]) is not as_lists  # not a prefix: its own run


def _plan(target, first, second, threshold):
    return CascadePlan(target, [1, 1, 1], first, threshold, calib_escalated=0.0, calib_accuracy=0.0,
                       second_ratio=second)


def test_the_tracker_holds_the_escalated_share_when_traffic_is_less_confident_than_calibration():
    """Threshold calibrated to escalate 25 % of N(0, 1) confidences; traffic comes from N(-1, 1):
    the fixed threshold would escalate ~63 % (and overspend heads), the tracker ~25 %."""
    plan = _plan(0.5, 0.25, 1.0, threshold=-0.6745)  # the 25 % quantile of N(0, 1)
    rng = random.Random(0)
    confs = [rng.gauss(-1.0, 1.0) for _ in range(5000)]
    tracker = EscalationTracker(plan)
    decisions = [tracker(c) for c in confs]
    fixed = sum(c <= plan.threshold for c in confs) / len(confs)
    assert fixed > 0.6
    assert abs(sum(decisions[TRACK_WARMUP:]) / len(decisions[TRACK_WARMUP:]) - 0.25) <= 0.02


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=1, max_size=300), st.integers(0, 299),
       st.floats(0.08, 0.5), st.floats(0.0, 1.0))
def test_a_tracked_decision_depends_only_on_inputs_before_it(confs, cut, first, share):
    """No look-ahead: changing what comes later never changes an earlier decision."""
    plan = _plan(first + share * 1.0, first, 1.0, threshold=0.0)
    cut = min(cut, len(confs))
    a, b = EscalationTracker(plan), EscalationTracker(plan)
    da = [a(c) for c in confs]
    db = [b(c) for c in confs[:cut] + [-x for x in confs[cut:]]]
    assert da[:cut] == db[:cut]


def test_tracked_runs_spend_the_target_on_the_inputs_they_see():
    model = _confident_tiny()
    batches = _batches()
    labels = torch.cat([b[3] for b in batches])
    scores = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)).sort(dim=1, descending=True).values
    for p in fit_plans(Passes(model, batches, len(labels)), labels, scores, (0.75, 0.5, 0.4, 0.3)):
        shifted = CascadePlan(**{**p.__dict__, "threshold": p.threshold + 100.0})  # calibrated elsewhere
        _, fixed_ratio, _, _ = run_cascade(model, batches, shifted, model.shape, len(labels), track=False)
        _, tracked_ratio, _, _ = run_cascade(model, batches, shifted, model.shape, len(labels))
        assert abs(fixed_ratio - (p.first_ratio + p.second_ratio)) < 1e-9  # the stale threshold escalates all
        # the first TRACK_WARMUP of the 200 inputs follow the stale threshold; the rest hold the share
        share = (p.target_ratio - p.first_ratio) / p.second_ratio
        expected = p.first_ratio + (TRACK_WARMUP + share * (len(labels) - TRACK_WARMUP)) / len(labels) * p.second_ratio
        assert abs(tracked_ratio - expected) <= 0.03
