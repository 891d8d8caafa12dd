"""The DIHS confidence cascade over width budgets: thresholds hit the target mean FLOPs on the
calibration split with both passes counted, and running a plan counts both passes."""

import random

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dihs_model.budget import Allocator, Budget
from dihs_model.cascade import (
    TRACK_WARMUP,
    CascadePlan,
    EscalationTracker,
    cascade_flops,
    fit_plans,
    plan_from_meta,
    run_cascade,
)
from dihs_model.passes import Passes, run_pass
from tests.conftest import random_batch, tiny_classifier

T = 10  # every test input has T real tokens: FLOPs ratios are then the same for every input


def _batches(n_batches=25, B=8):
    out = []
    for i in range(n_batches):
        ids, mask = random_batch(B=B, T=T, seed=i, pad=False)
        y = torch.randint(0, 3, (B,), generator=torch.Generator().manual_seed(100 + i))
        out.append((list(range(i * B, (i + 1) * B)), ids, mask, y))
    return out


def _confident_tiny():
    """A tiny model whose confidences spread out (a random init outputs near-uniform ties)."""
    model = tiny_classifier()
    with torch.no_grad():
        model.classifier.weight.mul_(10.0)
    return model


def _allocator(model, method="global"):
    g = torch.Generator().manual_seed(0)
    hs = torch.rand(3, 4, generator=g).sort(dim=1, descending=True).values
    ns = torch.rand(3, model.shape.ffn, generator=g).sort(dim=1, descending=True).values * 0.2
    return Allocator(model.shape, [T] * 50, method, hs, ns)


SMALL = Budget("s", (1, 1, 1), (8, 8, 8))
MIDDLE = Budget("m", (2, 2, 2), (32, 32, 32))


def test_thresholds_hit_the_target_mean_flops_on_the_calibration_split():
    model = _confident_tiny()
    batches = _batches()
    labels = torch.cat([b[3] for b in batches])
    plans = fit_plans(Passes(model, batches, len(labels)), labels, _allocator(model), (0.75, 0.5, 0.4, 0.3))
    assert [p.target_flops_ratio for p in plans] == [0.75, 0.5, 0.4, 0.3]
    for p in plans:
        assert p.first_ratio < p.target_flops_ratio and p.second_ratio > p.first_ratio
        assert abs(p.calib_flops_ratio - p.target_flops_ratio) <= 0.02, p
        run = run_cascade(model, batches, p, len(labels), track=False)
        assert abs(run.flops_ratio - p.calib_flops_ratio) < 1e-9  # same inputs: same cost
        # both passes counted: every input pays the first, the escalated ones the second too
        assert abs(run.flops_ratio - (p.first_ratio + run.escalated * p.second_ratio)) < 1e-6
        acc = float((run.preds == labels).float().mean())
        assert abs(acc - p.calib_accuracy) < 1e-9
        full = run_pass(model, batches, None, len(labels)).preds
        assert abs(float((run.preds == full).float().mean()) - p.calib_agreement) < 1e-9


def test_escalated_inputs_get_the_second_pass_answer_and_pay_both_passes():
    model = _confident_tiny()
    batches = _batches(4)
    n = 32
    full, first, middle = (run_pass(model, batches, b, n) for b in (None, SMALL, MIDDLE))
    everyone = CascadePlan(1.1, SMALL, 0.1, threshold=float("inf"), calib_escalated=1.0, calib_accuracy=0.0)
    run = run_cascade(model, batches, everyone, n)
    assert torch.equal(run.preds, full.preds) and run.escalated == 1.0 and run.flops_ratio > 1.0
    nobody = CascadePlan(0.25, SMALL, 0.1, threshold=-1e9, calib_escalated=0.0, calib_accuracy=0.0)
    run = run_cascade(model, batches, nobody, n)
    assert torch.equal(run.preds, first.preds) and run.escalated == 0.0
    assert abs(run.flops_ratio - SMALL.flops_ratio(model.shape, [T])) < 1e-9
    to_middle = CascadePlan(0.6, SMALL, 0.1, float("inf"), 1.0, 0.0, second=MIDDLE, second_ratio=0.5)
    run = run_cascade(model, batches, to_middle, n)
    assert torch.equal(run.preds, middle.preds)
    want = SMALL.flops_ratio(model.shape, [T]) + MIDDLE.flops_ratio(model.shape, [T])
    assert abs(run.flops_ratio - want) < 1e-9


def test_cascade_flops_count_what_each_input_ran_at_its_length():
    shape = tiny_classifier().shape
    full = Budget.full(shape)
    tokens, esc = [4, 40], [False, True]
    spent = SMALL.flops(shape, 4) + SMALL.flops(shape, 40) + full.flops(shape, 40)
    assert (
        abs(
            cascade_flops(shape, SMALL, None, tokens, esc)
            - spent / (full.flops(shape, 4) + full.flops(shape, 40))
        )
        < 1e-12
    )


def test_plans_round_trip_through_meta_and_load_only_for_the_current_confidence():
    plan = CascadePlan(0.5, SMALL, 0.1, 0.7, 0.4, 0.9, 0.95, MIDDLE, 0.5, 0.5)
    meta = {"cascade": {"confidence": "logit_margin", "plans": [plan.to_meta()]}}
    assert plan_from_meta(meta, 0.5) == plan
    assert plan_from_meta(meta, 0.3) is None
    assert (
        plan_from_meta({"cascade": {"plans": [plan.to_meta()]}}, 0.5) is None
    )  # other confidence: recalibrate


def test_tied_confidences_never_give_a_plan_off_its_target():
    """Every input has the same margin: a threshold escalates all inputs or none, so only plans
    whose budgets add up to the target (all) or equal it (none) may be kept."""
    model = _confident_tiny()
    with torch.no_grad():
        model.classifier.weight.zero_()
    batches = _batches()
    labels = torch.cat([b[3] for b in batches])
    for p in fit_plans(Passes(model, batches, len(labels)), labels, _allocator(model), (0.75, 0.5, 0.4, 0.3)):
        assert p.calib_escalated in (0.0, 1.0)
        assert abs(p.calib_flops_ratio - p.target_flops_ratio) <= 0.02, p


def test_each_budget_runs_once_however_often_it_is_asked_for():
    model = tiny_classifier()
    batches = _batches(2)
    calls = []
    forward = model.forward
    model.forward = lambda *a, **kw: calls.append(kw.get("budget")) or forward(*a, **kw)
    passes = Passes(model, batches, 16)
    first = passes(SMALL)
    assert passes(Budget("same counts, another name", SMALL.heads, SMALL.neurons)) is first
    assert passes(None) is passes(Budget.full(model.shape))
    assert calls == [SMALL] * len(batches) + [None] * len(batches)


def _plan(target, first, second, threshold):
    return CascadePlan(
        target, SMALL, first, threshold, calib_escalated=0.0, calib_accuracy=0.0, second_ratio=second
    )


def test_the_tracker_holds_the_escalated_share_when_traffic_is_less_confident_than_calibration():
    """Threshold calibrated to escalate 25 % of N(0, 1) confidences; traffic comes from N(-1, 1):
    the fixed threshold would escalate ~63 % (and overspend), the tracker ~25 %."""
    plan = _plan(0.5, 0.25, 1.0, threshold=-0.6745)  # the 25 % quantile of N(0, 1)
    rng = random.Random(0)
    confs = [rng.gauss(-1.0, 1.0) for _ in range(5000)]
    tracker = EscalationTracker(plan)
    decisions = [tracker(c) for c in confs]
    fixed = sum(c <= plan.threshold for c in confs) / len(confs)
    assert fixed > 0.6
    assert abs(sum(decisions[TRACK_WARMUP:]) / len(decisions[TRACK_WARMUP:]) - 0.25) <= 0.02


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-20, 20), min_size=1, max_size=300),
    st.integers(0, 299),
    st.floats(0.08, 0.5),
    st.floats(0.0, 1.0),
)
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
    for p in fit_plans(Passes(model, batches, len(labels)), labels, _allocator(model), (0.75, 0.5, 0.4, 0.3)):
        shifted = CascadePlan(**{**p.__dict__, "threshold": p.threshold + 100.0})  # calibrated elsewhere
        fixed = run_cascade(model, batches, shifted, len(labels), track=False)
        tracked = run_cascade(model, batches, shifted, len(labels))
        assert (
            abs(fixed.flops_ratio - (p.first_ratio + p.second_ratio)) < 1e-6
        )  # the stale threshold escalates all
        # the first TRACK_WARMUP of the 200 inputs follow the stale threshold; the rest hold the share
        share = (p.target_flops_ratio - p.first_ratio) / p.second_ratio
        expected = (
            p.first_ratio
            + (TRACK_WARMUP + share * (len(labels) - TRACK_WARMUP)) / len(labels) * p.second_ratio
        )
        assert abs(tracked.flops_ratio - expected) <= 0.03


def test_candidate_plans_carry_their_paired_calibration_counts(tmp_path):
    """auto's candidates: full, cascades by falling target, the cheapest pass alone; each with the
    calibration split's paired counts against the full model, which admission bounds."""
    import copy

    from dihs_model.cascade import candidate_plans, plan_evidence
    from tests.conftest import tiny_calibrated_bundle

    bundle = tiny_calibrated_bundle(tmp_path)
    meta = copy.deepcopy(bundle.meta)
    plans = candidate_plans(meta)
    single = plans[-1]
    assert plans[0] is None and single.threshold == float("-inf")
    assert (
        single.calib_accuracy == meta["cascade"]["level_accuracy"][single.first.name]
    )  # recorded at calibration
    targets = [p.target_flops_ratio for p in plans[1:-1]]
    assert targets == sorted(targets, reverse=True) and len(targets) == len(meta["cascade"]["plans"])
    n = meta["cascade"]["calibration_examples"]
    full_acc = meta["cascade"]["level_accuracy"]["f100"]
    for p in plans[1:]:
        e = plan_evidence(meta, p)
        assert e.calib_n == n and 0 <= e.calib_worse + e.calib_better <= n
        # the counts are the accuracy gap: (only full right) - (only plan right) = n * (full - plan)
        assert e.calib_worse - e.calib_better == round(n * (full_acc - p.calib_accuracy))
        assert e.calib_worse + e.calib_better <= round(
            n * (1 - p.calib_agreement)
        )  # discordant answers differ
    # a bundle calibrated before the counts were stored: its disagreements bound the loss instead;
    # a single pass with no comparison stored has no evidence
    for p in meta["cascade"]["plans"]:
        p.pop("calib_full_only"), p.pop("calib_plan_only")
    del meta["cascade"]["level_paired"]
    old = candidate_plans(meta)
    assert all(plan_evidence(meta, p).calib_worse == round((1 - p.calib_agreement) * n) for p in old[1:-1])
    assert plan_evidence(meta, old[-1]).texts == 0 and not plan_evidence(meta, old[-1]).admitted(0.5)
