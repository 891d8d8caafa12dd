"""service/routing.py: an auto text runs the controller's plan, moved to the nearest admitted plan
inside its FLOPs limits (a cheaper one first) with a note, or a ladder level when no plan fits."""

from types import SimpleNamespace

from service.routing import Item, Router

TARGETS = [1.0, 0.5, 0.3, 0.15]  # full, two cascades, the single cheapest pass


def _router(admitted=(True, True, True, True)):
    return Router(None, SimpleNamespace(admitted=list(admitted)), TARGETS)


def test_the_controllers_plan_when_the_limits_allow_it():
    assert _router().plan_for(Item("a"), 2) == (2, "")


def test_a_cap_moves_to_the_next_cheaper_plan_and_a_floor_to_the_cheapest_above_it():
    assert _router().plan_for(Item("a", max_ratio=0.5), 0) == (1, "; capped by max_flops_ratio 0.5")
    assert _router().plan_for(Item("a", min_ratio=0.4), 3) == (1, "; raised to min_flops_ratio 0.4")
    # a plan admission has withdrawn is skipped
    assert _router((True, False, True, True)).plan_for(Item("a", max_ratio=0.6), 0) == (
        2,
        "; capped by max_flops_ratio 0.6",
    )


def test_no_admitted_plan_inside_the_limits_means_a_ladder_level():
    assert _router().plan_for(Item("a", min_ratio=0.6, max_ratio=0.9), 0) is None
    assert _router((True, True, False, True)).plan_for(Item("a", min_ratio=0.2, max_ratio=0.4), 1) is None
