"""The load controller: the most accurate plan whose measured capacity covers the arrival rate, capped
by pressure; monotone in both; plans that serve no more than a more accurate one never picked;
hysteresis so that it does not flap (injected clock, no Ray, no model)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from service.controller import ControllerConfig, PlanController, batch_seconds, capacity

PER_TEXT = [0.020, 0.012, 0.008, 0.006, 0.005, 0.002]  # seconds per text: full, cascades, one cheap pass
SIZES = (1, 2, 4, 8, 16)


def _times(per_text: float, overhead: float = 0.0) -> dict[int, float]:
    return {b: overhead + per_text * b for b in SIZES}


COSTS = [_times(c) for c in PER_TEXT]  # no overhead, so a plan's capacity is 1 / its cost per text


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _fed(rate: float, clock: Clock, cfg=ControllerConfig()) -> PlanController:
    c = PlanController(COSTS, cfg, clock)
    for k in range(int(rate * cfg.window_s)):  # rate texts/s over the last window
        clock.t = k / rate
        c.arrived(1)
    return c


def test_no_pressure_and_arrivals_the_full_model_serves_is_the_full_model():
    assert PlanController(COSTS, clock=Clock()).choose(0.0) == 0  # idle
    assert _fed(40, Clock()).choose(0.0) == 0  # 40 texts/s fit 0.85 x 50/s of the full model
    assert _fed(60, Clock()).choose(0.0) == 1  # 60 do not: the next plan before any queue builds


def test_one_request_at_a_time_is_no_demand_past_the_plan():
    """Requests that each arrived with none other in flight (a client waiting for every answer) make
    no arrival rate: their pace is the served plan's speed, so they never hold a cheap plan; one
    overlapping request in the window makes the rate count again."""
    clock = Clock()
    c = PlanController(COSTS, clock=clock)
    for k in range(400):  # 200 texts/s for 2 s, one request at a time: far past the full model's 50/s
        clock.t = k / 200
        c.arrived(1, overlapped=False)
    assert c.rate() == 0.0 and c.choose(0.0) == 0
    c.arrived(1, overlapped=True)
    assert c.rate() > 150 and c.choose(0.0) == len(COSTS) - 1
    clock.t += ControllerConfig().window_s + 0.01  # the overlapping one leaves the window
    c.arrived(1, overlapped=False)
    assert c.rate() == 0.0


def test_the_most_accurate_plan_that_fits_the_arrival_rate():
    clock = Clock()
    c = _fed(60, clock)  # 60 texts/s: 0.85 / 60 = 14 ms per text fits the 12 ms plan, not the 20 ms one
    assert abs(c.rate() - 60) < 1 and c.choose(0.01) == 1
    assert _fed(130, Clock()).choose(0.01) == 3  # 6.5 ms per text: the 6 ms plan
    assert _fed(2000, Clock()).choose(0.01) == len(COSTS) - 1  # nothing fits: the cheapest


@settings(max_examples=200, deadline=None)
@given(p1=st.floats(0, 1), p2=st.floats(0, 1), r1=st.floats(0, 3000), r2=st.floats(0, 3000))
def test_more_pressure_or_more_arrivals_never_pick_a_costlier_plan(p1, p2, r1, r2):
    c = PlanController(COSTS)
    (p1, p2), (r1, r2) = sorted((p1, p2)), sorted((r1, r2))
    assert c.wanted(p2, r1) >= c.wanted(p1, r1)
    assert c.wanted(p1, r2) >= c.wanted(p1, r1)


def test_cheaper_at_once_costlier_only_after_the_hold_and_no_flapping():
    clock, cfg = Clock(), ControllerConfig(hold_s=3.0)
    c = PlanController(COSTS, cfg, clock)
    assert c.choose(1.0) == len(COSTS) - 1  # overload: the cheapest at once
    for k in range(1, 6):  # the load eases for 2.5 s, then comes back: still the cheap plan
        clock.t = k * 0.5
        assert c.choose(0.2) == len(COSTS) - 1
    clock.t = 3.0
    assert c.choose(1.0) == len(COSTS) - 1
    for k in range(1, 8):  # wanted from 3.5 s on, for 3 s without a break: the costlier plan
        clock.t = 3.0 + k * 0.5
        got = c.choose(0.2)
    assert got == 1 == c.current  # pressure 0.2 over 6 plans: rung 1
    assert c.peek(1.0) == len(COSTS) - 1 and c.current == 1  # peek changes nothing


def test_capacity_is_the_best_rate_in_batches_within_the_limit():
    times = {1: 0.020, 4: 0.050, 16: 0.160}  # 50, 80 and 100 texts/s
    assert capacity(times, 0.075) == 4 / 0.050  # a batch of 16 takes longer than the limit
    assert capacity(times, 1.0) == 16 / 0.160
    assert capacity(times, 0.001) == 1 / 0.020  # nothing fits: the smallest batch's rate
    assert batch_seconds(times, 2) == 0.020 + (0.050 - 0.020) / 3
    assert batch_seconds(times, 0) == 0.0 and batch_seconds(times, 32) == 0.320


def test_a_plan_no_faster_than_a_more_accurate_one_is_never_picked():
    # plan 1 (a cascade whose two passes cost more than the full model at these batch sizes)
    costs = [_times(0.010), _times(0.011, 0.004), _times(0.004)]
    c = PlanController(costs)
    assert c.usable() == [0, 2]
    assert {c.wanted(p / 10, r) for p in range(11) for r in range(0, 400, 5)} == {0, 2}


@settings(max_examples=100, deadline=None)
@given(
    per_text=st.lists(st.floats(1e-4, 0.05), min_size=1, max_size=6),
    overhead=st.lists(st.floats(0, 0.02), min_size=6, max_size=6),
    p=st.floats(0, 1),
    r=st.floats(0, 5000),
)
def test_only_usable_plans_are_wanted(per_text, overhead, p, r):
    c = PlanController([_times(x, o) for x, o in zip(per_text, overhead)])
    caps = c.capacities()
    usable = c.usable()
    assert usable[0] == 0 and all(caps[a] < caps[b] for a, b in zip(usable, usable[1:]))
    assert c.wanted(p, r) in usable


def test_observed_overhead_is_added_per_text_to_every_plan():
    c = PlanController(COSTS, ControllerConfig(overhead_alpha=1.0))
    before = c.capacities()
    c.observed(1, 4, batch_seconds(COSTS[1], 4) + 4 * 0.003)  # served batches take 3 ms a text more
    assert abs(c.overhead_s - 0.003) < 1e-12
    after = c.capacities()
    assert all(a < b for a, b in zip(after, before))
    assert abs(1 / after[-1] - (PER_TEXT[-1] + 0.003)) < 1e-9  # the cheapest plan: (2 + 3) ms a text
    assert c.wanted(0.01, 40) >= PlanController(COSTS).wanted(0.01, 40)  # so a cheaper plan for the same rate
    c.observed(0, 1, 10.0)  # clamped: one stalled batch cannot blind the controller
    assert c.overhead_s == 0.05
    c.observed(0, 2, 0.0)  # faster than measured: no negative overhead
    assert c.overhead_s == 0.0


def test_an_overload_inflated_overhead_is_replaced_after_a_quiet_spell():
    """Back to back, one batch moves the estimate by overhead_alpha; the first batch after a quiet
    spell of several tau replaces it (an overload's estimate is not carried into the next load)."""
    clock, cfg = Clock(), ControllerConfig(overhead_alpha=0.1, overhead_tau_s=2.0)
    c = PlanController(COSTS, cfg, clock)
    c.observed(0, 4, batch_seconds(COSTS[0], 4) + 4 * 0.040)  # the first batch sets it: 40 ms a text
    assert abs(c.overhead_s - 0.040) < 1e-9
    clock.t = 0.01
    c.observed(0, 4, batch_seconds(COSTS[0], 4) + 4 * 0.001)  # right after: a tenth of the way to 1 ms
    assert abs(c.overhead_s - (0.9 * 0.040 + 0.1 * 0.001)) < 1e-6
    clock.t = 20.0  # ten time constants quiet
    c.observed(0, 4, batch_seconds(COSTS[0], 4) + 4 * 0.001)
    assert abs(c.overhead_s - 0.001) < 1e-5


def test_after_an_idle_hold_the_wanted_plan_is_taken_at_once():
    clock, cfg = Clock(), ControllerConfig(hold_s=3.0)
    c = PlanController(COSTS, cfg, clock)
    assert c.choose(1.0) == len(COSTS) - 1  # overload: the cheapest
    clock.t = 1.0
    assert c.peek(0.0) == len(COSTS) - 1  # eased 1 s later: the hold keeps the cheap plan
    clock.t = 4.0  # no batch for 4 s (> hold_s): the next one runs what the load asks for
    assert c.peek(0.0) == 0 and c.choose(0.0) == 0
