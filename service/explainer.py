"""`explain` of what the engine would serve an item at a given load pressure: the same route, plan
and gate as Engine.run (the tracker's current threshold, read, not updated), the same last pass,
label and reason, with the heads' and neurons' attributions (dihs_model.explain). Records no
serving metrics."""

from __future__ import annotations

from dihs_model.budget import budget_name
from dihs_model.explain import explain
from dihs_model.passes import forward_grouped, margin

from .results import pass_cost, rounded


def explain_at(engine, item, pressure: float, attention: bool = True) -> dict:
    """What engine.run([item]) would serve at `pressure` (`dihs explain --pressure`: a replica that
    has just started, at that pressure), explained."""
    enc, signals, (route,) = engine.decide([item], pressure)
    tokens = int(enc["attention_mask"].sum())
    common = {"signal": signals[0], "pressure": pressure, "attention": attention, "model": engine.model}
    if not route.on_plan:
        dec = route.level
        budget = engine.budget_of(dec.level)
        name = engine.levels[dec.level]["name"]
        exp = explain(engine.bundle, item.text, budget, level=name, reason=dec.reason, **common)
        return {
            **exp,
            **pass_cost(engine.shape, [budget], tokens),
            "plan": None,
            "margin": None,
            "threshold": None,
            "escalated": False,
        }
    plan, name = engine.plans[route.plan], engine.plan_name(route.plan)
    budget, m, thr, esc = None, None, None, False
    if plan is not None:
        (logits,) = forward_grouped(
            engine.model, enc["input_ids"], enc["attention_mask"], [plan.first], engine.device
        )
        m, thr = float(margin(logits[None])[1][0]), engine.trackers[route.plan].threshold
        esc = m <= thr
        budget = plan.second if esc else plan.first
    reason = engine.reason(plan, name, pressure, route.note, m, thr, esc)
    exp = explain(engine.bundle, item.text, budget, level=budget_name(budget), reason=reason, **common)
    passes = [None] if plan is None else [plan.first, plan.second] if esc else [plan.first]
    return {
        **exp,
        **pass_cost(engine.shape, passes, tokens),
        "plan": name,
        "margin": rounded(m),
        "escalated": esc,
        "threshold": rounded(thr),
    }
