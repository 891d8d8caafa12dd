"""service/reasons.py: the reason an auto text gets names the pressure, the plan and, for a cascade,
the gate's verdict; the full model under pressure says why no cheaper plan ran."""

from types import SimpleNamespace

from dihs_model.budget import Budget
from service.reasons import PlanReasons

FIRST = Budget("f25", (1, 1), (8, 8))
CASCADE = SimpleNamespace(first=FIRST, second=None, threshold=0.4)
SINGLE = SimpleNamespace(first=FIRST, second=None, threshold=float("-inf"))


def _reasons(admitted=(True, True), early=False, progress=""):
    admission = SimpleNamespace(early=early, progress=progress, max_accuracy_loss=0.005)
    return PlanReasons("m", SimpleNamespace(admitted=list(admitted)), admission)


def test_the_full_model_says_why_it_ran():
    assert _reasons()(None, "full", 0.0) == "no load pressure: full model"
    assert _reasons()(None, "full", 0.5, "; raised to min_flops_ratio 0.9") == (
        "load pressure 0.50: full model; raised to min_flops_ratio 0.9"
    )
    none = _reasons(admitted=(True, False))(None, "full", 0.5)
    assert (
        "no cheaper plan admitted" in none and "max_accuracy_loss 0.005" in none and "/v2/models/m/" in none
    )
    assert "width training in progress (this is" in _reasons(early=True)(None, "full", 0.5)
    far = _reasons(early=True, progress="120 of at most 435 steps")(None, "full", 0.5)
    assert "width training in progress: 120 of at most 435 steps (this is" in far


def test_a_cascade_gives_the_gate_verdict_and_a_single_pass_its_budget():
    up = _reasons()(CASCADE, "cascade 0.3", 0.8, "", 0.1, 0.4, True)
    assert up == (
        "load pressure 0.80 and arrival rate -> plan cascade 0.3: "
        "first pass f25 margin 0.100 <= threshold 0.400: escalated to f100"
    )
    answered = _reasons()(CASCADE, "cascade 0.3", 0.8, "", 0.9, 0.4, False)
    assert answered.endswith("first pass f25 margin 0.900 > threshold 0.400: answered")
    assert (
        _reasons()(SINGLE, "single f25", 1.0)
        == "load pressure 1.00 and arrival rate -> plan single f25: one pass at f25"
    )
