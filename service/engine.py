"""The inference engine of a model replica: one batch in, tokenized once; auto texts run the plan
the load controller picks (the full model, a confidence cascade over width budgets, or one cheap
pass), fixed and dense texts their ladder level; one sliced forward per budget group
(dihs_model.passes.forward_grouped). Plain Python (no Ray, no HTTP): the replica's Batcher
(service/batcher.py) feeds it model batches; backend.EngineBackend is what the HTTP routes call.
"""

from __future__ import annotations

import time

import torch

from dihs_model.budget import budget_name
from dihs_model.bundle import Bundle
from dihs_model.cascade import EscalationTracker, candidate_plans, cascade_batch, plan_evidence, plan_label
from dihs_model.device import pick_device
from dihs_model.dtype_choice import choose_dtype
from dihs_model.levels import LadderPolicy
from dihs_model.meta import not_servable, width_training_in_progress
from dihs_model.passes import forward_grouped
from dihs_model.policy import PolicyConfig
from dihs_model.precision import prepare, with_dtype

from .controller import ControllerConfig, PlanController
from .explainer import explain_at
from .load import LoadTracker
from .plan_admission import PlanAdmission
from .plan_timing import measure_plan_times
from .reasons import PlanReasons
from .results import Served, record_batch, record_result, result_fields
from .routing import Item, Router
from .shadow import Shadows

PHASES = ("tokenize", "decide", "forward", "results")  # what Engine.run times, in order


class Engine:
    """auto texts run the plan the controller picks for the current load (controller.py): the full
    model, a confidence cascade over width budgets (first pass; the least confident, by the plan's
    live EscalationTracker, also run the second pass), or the cheapest first pass alone, the same
    plans and gate as `dihs eval`'s dihs rows (dihs_model.cascade). fixed texts run the largest
    ladder level within their cap, dense texts the full model."""

    def __init__(
        self,
        bundle: Bundle,
        model_name: str,
        load: LoadTracker,
        metrics,
        device: str = "cpu",
        dtype: str = "auto",
        policy: PolicyConfig | None = None,
        max_batch_size: int = 16,
        controller: ControllerConfig = ControllerConfig(),
        clock=time.monotonic,
        shadow_share: float = 0.0,
        agreement_file=None,
        bundle_id: str = "",
        max_dtype_disagreement: float = 0.01,
    ):
        problem = not_servable(bundle.meta)
        if problem:
            raise ValueError(problem)
        self.bundle, self.model_name, self.load, self.metrics = bundle, model_name, load, metrics
        self.device = pick_device(device)
        bundle.model.eval().to(self.device)
        self.dtype_choice = choose_dtype(bundle, self.device, dtype, max_dtype_disagreement, max_batch_size)
        self.dtype = self.dtype_choice.dtype
        self.model = with_dtype(bundle.model, self.dtype)  # same slices in any dtype
        self.shape = self.model.shape
        self.ladder_policy = LadderPolicy(bundle.meta, bundle.tokenizer, policy)
        self.levels, self.ladder = self.ladder_policy.levels, self.ladder_policy.ratios
        self.budget_of = self.ladder_policy.budget_of
        self.plans = candidate_plans(bundle.meta)
        self.plan_targets = [1.0 if p is None else p.target_flops_ratio for p in self.plans]
        self.trackers = [None if p is None else EscalationTracker(p) for p in self.plans]
        prepare(
            self.model,
            [self.budget_of(i) for i in range(len(self.levels))]
            + [b for p in self.plans if p is not None for b in (p.first, p.second)],
        )  # int8: pack every slice now
        self.plan_times = measure_plan_times(
            self.model,
            self.plans,
            self.trackers,
            bundle.meta["calibration"]["tokens"],
            bundle.max_length,
            max_batch_size,
            self.device,
        )
        self.plan_costs = [t[max(t)] / max(t) for t in self.plan_times]  # seconds per text at a full batch
        # an early bundle's plans are the plainly fine-tuned model's slices: the full model only, no
        # shadow evidence, until the width-trained bundle is swapped in (replica.watch_upgrade)
        early = width_training_in_progress(bundle.meta)
        self.admission = PlanAdmission(
            [self.plan_name(i) for i in range(len(self.plans))],
            [None] + [plan_evidence(bundle.meta, p) for p in self.plans[1:]],
            controller.max_accuracy_loss,
            agreement_file,
            bundle_id,
            clock=clock,
            early=early,
        )
        self.controller = PlanController(self.plan_times, controller, clock, self.admission.admitted())
        self.router = Router(self.ladder_policy, self.controller, self.plan_targets)
        self.reason = PlanReasons(model_name, self.controller, self.admission)
        self.shadows = Shadows(self, 0.0 if early else shadow_share, clock)

    @property
    def early(self) -> bool:
        """An early bundle (`dihs train --early-out`): auto serves the full model only (admission's)."""
        return self.admission.early

    def shadow(self) -> None:
        """Shadow passes on the last full-model batch (shadow.py); the batcher calls it when idle."""
        self.shadows.run()

    @torch.inference_mode()
    def probe(self, text: str = "health probe: is the model answering") -> None:
        """One text through the full model and the cheapest ladder level, recording no metric (health
        checks and warm-up call it): raises if a forward fails or gives non-finite scores."""
        enc = self.tokenize([Item(text)])
        for budget in (None, self.budget_of(len(self.levels) - 1)):
            (logits,) = forward_grouped(
                self.model, enc["input_ids"], enc["attention_mask"], [budget], self.device
            )
            if not torch.isfinite(logits).all():
                raise RuntimeError(f"the model gives non-finite scores at {budget_name(budget)}")

    def plan_name(self, i: int) -> str:
        return plan_label(self.plans[i])

    def tokenize(self, items: list[Item]):
        """The whole batch through the tokenizer at once (right-padded to its longest text)."""
        return self.bundle.tokenizer(
            [it.text for it in items],
            padding=True,
            truncation=True,
            max_length=self.bundle.max_length,
            return_tensors="pt",
        )

    def decide(self, items: list[Item], pressure: float, enc=None, plan: int | None = None):
        """Tokens, complexity signals and each item's Route: a plan for auto items whose limits a plan
        fits, else the ladder policy's level. No model call."""
        enc = self.tokenize(items) if enc is None else enc
        signals, routes = self.router.routes(items, enc, pressure, plan)
        return enc, signals, routes

    def explain(self, item: Item, attention: bool = True) -> dict:
        """The explanation of what run([item]) would serve now: the same plan and gate (read, not
        updated: the tracker's current threshold), the same last pass, label and reason.

        Reads the published load pressure and the current plan without updating them; records no
        serving metrics."""
        return explain_at(self, item, self.load.published, attention)

    @torch.inference_mode()
    def run(self, items: list[Item], timing: dict | None = None) -> list[dict]:
        """Results in the order of `items` (their arrival order), as protocol.Result fields;
        `timing` (if given) gets the seconds of each of PHASES for this batch."""
        t0 = time.perf_counter()
        enc = self.tokenize(items)
        t1 = time.perf_counter()
        pressure = self.load.pressure()
        plan = self.controller.choose(pressure)
        enc, signals, routes = self.decide(items, pressure, enc, plan)
        t2 = time.perf_counter()
        ids, mask = enc["input_ids"], enc["attention_mask"]
        served: list[Served | None] = [None] * len(items)
        levels = [i for i, r in enumerate(routes) if not r.on_plan]
        budgets = [self.budget_of(routes[i].level.level) for i in levels]
        if levels:
            outs = forward_grouped(self.model, ids[levels], mask[levels], budgets, self.device)
            for i, b, logits in zip(levels, budgets, outs):
                served[i] = Served(logits, [b], routes[i].level.reason)
        for p in sorted({r.plan for r in routes if r.on_plan}):
            rows = [i for i, r in enumerate(routes) if r.plan == p]
            notes = [routes[i].note for i in rows]
            for i, s in zip(rows, self._run_plan(p, ids[rows], mask[rows], notes, pressure)):
                served[i] = s
        t3 = time.perf_counter()
        record_batch(
            self.metrics,
            len(items),
            pressure,
            self.plan_targets[plan],
            {self.plan_name(i): cost + self.controller.overhead_s for i, cost in enumerate(self.plan_costs)},
        )
        tokens = mask.sum(1).tolist()
        results = [
            result_fields(
                served[i],
                self.bundle.labels,
                self.shape,
                signals[i],
                pressure,
                bool(enc.encodings[i].overflowing),
                int(tokens[i]),
            )
            for i in range(len(items))
        ]
        for r in results:
            record_result(self.metrics, r)
        t4 = time.perf_counter()
        if all(r.plan == plan for r in routes):  # a batch all on the controller's plan
            self.controller.observed(plan, len(items), t4 - t0)
        full_rows = [i for i, r in enumerate(routes) if r.plan == 0]
        self.shadows.after_batch(
            plan == 0 and pressure == 0.0,
            t4 - t0,
            ids[full_rows],
            mask[full_rows],
            [int(served[i].logits.argmax()) for i in full_rows],
        )
        if timing is not None:
            timing.update(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)))
        return results

    def auto_status(self) -> dict:
        """Which plans auto serves and why (the config route and the start-up log)."""
        return self.admission.report()

    def _run_plan(self, p: int, ids, mask, notes: list[str], pressure: float) -> list[Served]:
        """These rows on plan p: the full model, or its cascade under the plan's live tracker."""
        plan, name = self.plans[p], self.plan_name(p)
        if plan is None:
            outs = forward_grouped(self.model, ids, mask, [None] * len(notes), self.device)
            return [
                Served(logits, [None], self.reason(None, name, pressure, note), plan=name)
                for logits, note in zip(outs, notes)
            ]
        out = cascade_batch(self.model, ids, mask, plan, self.trackers[p], self.device)
        served = []
        for k, note in enumerate(notes):
            m, thr, esc = out.margins[k], out.thresholds[k], out.escalated[k]
            passes = [plan.first, plan.second] if esc else [plan.first]
            reason = self.reason(plan, name, pressure, note, m, thr, esc)
            served.append(Served(out.logits[k], passes, reason, name, m, thr, esc))
            if esc:
                self.metrics.record("dihs_escalations", 1)
        return served
