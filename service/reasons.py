"""Why an auto text ran what it ran, in words: a Result's `reason` for a text on a plan."""

from __future__ import annotations

from dihs_model.budget import budget_name


class PlanReasons:
    """The reason for a text on plan `p`: the load pressure, the plan the controller chose (or why
    the full model: no pressure, an early bundle, no cheaper plan admitted yet) and, for a cascade,
    the gate's verdict: the first pass's margin against the live threshold."""

    def __init__(self, model_name: str, controller, admission):
        self.model_name, self.controller, self.admission = model_name, controller, admission

    def __call__(
        self,
        plan,
        name: str,
        pressure: float,
        note: str = "",
        margin: float | None = None,
        threshold: float | None = None,
        escalated: bool = False,
    ) -> str:
        if plan is None:
            if pressure <= 0:
                return "no load pressure: full model" + note
            if self.admission.early:
                far = f": {self.admission.progress}" if self.admission.progress else ""
                return (
                    f"load pressure {pressure:.2f}: full model, width training in progress{far} (this is "
                    "`dihs train`'s early bundle; the width-trained one is swapped in when written)" + note
                )
            if not any(self.controller.admitted[1:]):
                return (
                    f"load pressure {pressure:.2f}: full model, no cheaper plan admitted (none has a 95% "
                    f"accuracy-loss bound within max_accuracy_loss {self.admission.max_accuracy_loss:g} "
                    f"yet: /v2/models/{self.model_name}/config says on how many texts)" + note
                )
            return f"load pressure {pressure:.2f}: full model" + note
        load = f"load pressure {pressure:.2f} and arrival rate -> plan {name}"
        if plan.threshold == float("-inf"):
            return f"{load}: one pass at {plan.first.name}{note}"
        gate = (
            f"first pass {plan.first.name} margin {margin:.3f} <= threshold {threshold:.3f}: "
            f"escalated to {budget_name(plan.second)}"
            if escalated
            else f"first pass {plan.first.name} margin {margin:.3f} > threshold {threshold:.3f}: answered"
        )
        return f"{load}: {gate}{note}"
