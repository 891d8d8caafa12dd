"""Where each text of a batch goes: an auto text to the plan the load controller picks (moved to the
nearest admitted plan inside the text's FLOPs limits), every other text, and an auto text no plan
fits, to the ladder policy's level. No model call."""

from __future__ import annotations

from dataclasses import dataclass

from dihs_model.levels import LadderPolicy
from dihs_model.policy import Decision


@dataclass(frozen=True)
class Item:
    """One text and its budget limits: the unit the batcher groups."""

    text: str
    mode: str = "auto"
    min_ratio: float = 0.0
    max_ratio: float = 1.0


@dataclass(frozen=True)
class Route:
    """Where one item goes: a plan (an auto text whose limits a plan fits) or a ladder level."""

    plan: int | None = None  # index into the engine's plans
    note: str = ""  # why the plan differs from the controller's (the item's FLOPs caps)
    level: Decision | None = None  # the ladder policy's decision, for every other text

    @property
    def on_plan(self) -> bool:
        return self.plan is not None


class Router:
    """Routes for a batch: the controller's plan (or the one passed) for auto texts, within each
    text's limits and among the plans admission lets auto serve."""

    def __init__(self, ladder_policy: LadderPolicy, controller, plan_targets: list[float]):
        self.ladder_policy, self.controller, self.plan_targets = ladder_policy, controller, plan_targets

    def plan_for(self, item: Item, current: int) -> tuple[int, str] | None:
        """The plan an auto item runs: the controller's, moved to the nearest plan inside the item's
        [min_ratio, max_ratio] (a cheaper one first), with a note saying why it moved; None when no
        plan's target lies in that range (the item then runs a ladder level, as fixed does)."""
        admitted = self.controller.admitted
        inside = [
            i
            for i, t in enumerate(self.plan_targets)
            if admitted[i] and item.min_ratio - 1e-9 <= t <= item.max_ratio + 1e-9
        ]
        if not inside:
            return None
        if current in inside:
            return current, ""
        cheaper = [i for i in inside if i > current]
        if cheaper:
            return cheaper[0], f"; capped by max_flops_ratio {item.max_ratio:g}"
        return inside[-1], f"; raised to min_flops_ratio {item.min_ratio:g}"

    def routes(self, items: list[Item], enc, pressure: float, plan: int | None = None):
        """(complexity signals, each item's Route) for a tokenized batch at this load pressure."""
        signals, decisions = self.ladder_policy.decide(
            enc["input_ids"],
            enc["attention_mask"],
            pressure,
            [(it.mode, it.min_ratio, it.max_ratio) for it in items],
        )
        current = self.controller.peek(pressure) if plan is None else plan
        out = []
        for it, d in zip(items, decisions):
            chosen = self.plan_for(it, current) if it.mode == "auto" else None
            out.append(Route(level=d) if chosen is None else Route(*chosen))
        return signals, out
