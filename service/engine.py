"""The inference engine of a model replica: one batch in, tokenized once; auto texts run the plan
the load controller picks (the full model, a confidence cascade over width budgets, or one cheap
pass), fixed and dense texts their ladder level; one sliced forward per budget group
(dihs_model.passes.forward_grouped). Plain Python (no Ray, no HTTP): the replica's Batcher
(service/batcher.py) feeds it model batches; EngineBackend is what the HTTP routes call.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from dataclasses import dataclass

import torch

from dihs_model.bench import budget_costs
from dihs_model.budget import Budget, budget_name
from dihs_model.bundle import Bundle
from dihs_model.cascade import EscalationTracker, candidate_plans, cascade_batch, plan_evidence, plan_label
from dihs_model.device import pick_device
from dihs_model.dtype_choice import choose_dtype
from dihs_model.levels import LadderPolicy
from dihs_model.meta import not_servable, width_training_in_progress
from dihs_model.passes import chunks_for, forward_grouped, margin
from dihs_model.policy import Decision, PolicyConfig
from dihs_model.precision import prepare, with_dtype

from .controller import ControllerConfig, PlanController, batch_seconds
from .load import LoadTracker
from .plan_admission import PlanAdmission
from .shadow import Shadows

PHASES = ("tokenize", "decide", "forward", "results")  # what Engine.run times, in order


@dataclass(frozen=True)
class ModelInfo:
    """What the HTTP routes need to know of the served model (validation, v2 metadata)."""

    name: str
    labels: list[str]
    ladder: list[float]
    total_heads: int
    max_length: int
    dtype: str = "float32"  # the number format the model runs in (precision.DTYPES)
    dtype_choice: dict | None = None  # why that one (dtype_choice.DtypeChoice.report)


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

    plan: int | None = None  # index into Engine.plans
    note: str = ""  # why the plan differs from the controller's (the item's FLOPs caps)
    level: Decision | None = None  # the ladder policy's decision, for every other text

    @property
    def on_plan(self) -> bool:
        return self.plan is not None


def sample_batches(
    tokens: list[int], batch: int, max_length: int, texts: int = 8, seed: int = 0
) -> list[list[int]]:
    """Batches of `batch` token counts drawn (seeded, with replacement) from these, each at most the
    model's max length: what a batch of that size may hold; as many batches as make `texts` texts
    (at least one), so small batches, whose time varies most with their texts, are averaged over more."""
    draws = max(1, texts // batch)
    rng = random.Random(seed + batch)
    xs = [max(1, min(t, max_length)) for t in tokens]
    return [rng.choices(xs, k=batch) for _ in range(draws)]


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
        problem = not_servable(bundle.meta, "the bundle")
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
        self.total_heads = self.shape.total_heads
        self.plans = candidate_plans(bundle.meta)
        self.plan_targets = [1.0 if p is None else p.target_flops_ratio for p in self.plans]
        self.trackers = [None if p is None else EscalationTracker(p) for p in self.plans]
        prepare(
            self.model,
            [self.budget_of(i) for i in range(len(self.levels))]
            + [b for p in self.plans if p is not None for b in (p.first, p.second)],
        )  # int8: pack every slice now
        self.plan_times = self._measure(max_batch_size)
        self.plan_costs = [t[max(t)] / max(t) for t in self.plan_times]  # seconds per text at a full batch
        self.admission = PlanAdmission(
            [self.plan_name(i) for i in range(len(self.plans))],
            [None] + [plan_evidence(bundle.meta, p) for p in self.plans[1:]],
            controller.max_accuracy_loss,
            agreement_file,
            bundle_id,
            clock=clock,
        )
        self.controller = PlanController(self.plan_times, controller, clock, self.admission.admitted())
        # an early bundle's plans are the plainly fine-tuned model's slices: the full model only, no
        # shadow evidence, until the width-trained bundle is swapped in (replica.watch_upgrade)
        self.early = width_training_in_progress(bundle.meta)
        if self.early:
            self.controller.admit([True] + [False] * (len(self.plans) - 1))
        self.shadows = Shadows(self, 0.0 if self.early else shadow_share, clock)

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

    def _measure(self, max_batch: int) -> list[dict[int, float]]:
        """Seconds per batch of each plan on this replica, at batch sizes 1, 2, 4, ... up to max_batch:
        its passes timed on batches of that size drawn from the calibration split's text lengths
        (sample_batches; the mean over the draws), in the chunks forward_grouped runs them in; a
        cascade's second pass as expected over how many texts of the batch escalate (binomial in the
        plan's escalated share)."""
        tokens = self.bundle.meta["calibration"]["tokens"]
        sizes = sorted({min(2**k, max_batch) for k in range(max_batch.bit_length() + 1)})
        budgets = list(
            {
                (None if b is None else b.key): b
                for p in self.plans
                for b in ([None] if p is None else [p.first, p.second])
            }.values()
        )
        times: dict = {}
        for x in budgets:
            times[None if x is None else x.key] = {
                b: statistics.mean(
                    self._batch_seconds(x, lengths)
                    for lengths in sample_batches(tokens, b, self.bundle.max_length)
                )
                for b in sizes
            }
        out = []
        for p, tracker in zip(self.plans, self.trackers):
            if p is None:
                out.append(times[None])
                continue
            second = times[None if p.second is None else p.second.key]
            out.append(
                {
                    b: times[p.first.key][b]
                    + sum(
                        math.comb(b, k)
                        * tracker.share**k
                        * (1 - tracker.share) ** (b - k)
                        * batch_seconds(second, k)
                        for k in range(1, b + 1)
                    )
                    for b in sizes
                }
            )
        return out

    def _batch_seconds(self, budget: Budget | None, lengths: list[int]) -> float:
        return sum(
            budget_costs(self.model, [budget], len(run), max(lengths[i] for i in run), repeats=1)[0]
            * len(run)
            for run in chunks_for(lengths, budget, self.shape, self.device)
        )

    def plan_name(self, i: int) -> str:
        return plan_label(self.plans[i])

    def info(self, model_name: str) -> ModelInfo:
        """What the HTTP front needs to know of this model (validation, v2 metadata)."""
        return ModelInfo(
            model_name,
            self.bundle.labels,
            self.ladder,
            self.total_heads,
            self.bundle.max_length,
            self.dtype,
            self.dtype_choice.report(),
        )

    def tokenize(self, items: list[Item]):
        """The whole batch through the tokenizer at once (right-padded to its longest text)."""
        return self.bundle.tokenizer(
            [it.text for it in items],
            padding=True,
            truncation=True,
            max_length=self.bundle.max_length,
            return_tensors="pt",
        )

    def _plan_for(self, item: Item, current: int) -> tuple[int, str] | None:
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

    def decide(self, items: list[Item], pressure: float, enc=None, plan: int | None = None):
        """Tokens, complexity signals and each item's Route: a plan for auto items whose limits a plan
        fits, else the ladder policy's level. No model call."""
        enc = self.tokenize(items) if enc is None else enc
        signals, decisions = self.ladder_policy.decide(
            enc["input_ids"],
            enc["attention_mask"],
            pressure,
            [(it.mode, it.min_ratio, it.max_ratio) for it in items],
        )
        current = self.controller.peek(pressure) if plan is None else plan
        out = []
        for it, d in zip(items, decisions):
            chosen = self._plan_for(it, current) if it.mode == "auto" else None
            out.append(Route(level=d) if chosen is None else Route(*chosen))
        return enc, signals, out

    def _plan_reason(
        self,
        i: int,
        pressure: float,
        note: str,
        margin: float | None,
        threshold: float | None,
        escalated: bool,
    ) -> str:
        p = self.plans[i]
        if p is None:
            if pressure <= 0:
                return "no load pressure: full model" + note
            if self.early:
                return (
                    f"load pressure {pressure:.2f}: full model, width training in progress (this is "
                    "`dihs train`'s early bundle; the width-trained one is swapped in when written)" + note
                )
            if not any(self.controller.admitted[1:]):
                return (
                    f"load pressure {pressure:.2f}: full model, no cheaper plan admitted (none has a 95% "
                    f"accuracy-loss bound within max_accuracy_loss {self.admission.max_accuracy_loss:g} "
                    f"yet: /v2/models/{self.model_name}/config says on how many texts)" + note
                )
            return f"load pressure {pressure:.2f}: full model" + note
        load = f"load pressure {pressure:.2f} and arrival rate -> plan {self.plan_name(i)}"
        if p.threshold == float("-inf"):
            return f"{load}: one pass at {p.first.name}{note}"
        second = budget_name(p.second)
        gate = (
            f"first pass {p.first.name} margin {margin:.3f} <= threshold {threshold:.3f}: "
            f"escalated to {second}"
            if escalated
            else f"first pass {p.first.name} margin {margin:.3f} > threshold {threshold:.3f}: answered"
        )
        return f"{load}: {gate}{note}"

    def explain(self, item: Item, attention: bool = True) -> dict:
        """The explanation of what run([item]) would serve now: the same plan and gate (read, not
        updated: the tracker's current threshold), the same last pass, label and reason.

        Reads the published load pressure and the current plan without updating them; records no
        serving metrics."""
        return self.explain_at(item, self.load.published, attention)

    def explain_at(self, item: Item, pressure: float, attention: bool = True) -> dict:
        """`explain` at a given load pressure (`dihs explain --pressure`: a replica that has just
        started, at that pressure)."""
        from dihs_model.explain import explain

        enc, signals, (route,) = self.decide([item], pressure)
        tokens = int(enc["attention_mask"].sum())
        if not route.on_plan:
            dec = route.level
            budget = self.budget_of(dec.level)
            exp = explain(
                self.bundle,
                item.text,
                budget,
                level=self.levels[dec.level]["name"],
                reason=dec.reason,
                signal=signals[0],
                pressure=pressure,
                attention=attention,
                model=self.model,
            )
            return {
                **exp,
                **self._cost([budget], tokens),
                "plan": None,
                "margin": None,
                "threshold": None,
                "escalated": False,
            }
        i, note = route.plan, route.note
        plan, budget, m, thr, esc = self.plans[i], None, None, None, False
        if plan is not None:
            (logits,) = forward_grouped(
                self.model, enc["input_ids"], enc["attention_mask"], [plan.first], self.device
            )
            m, thr = float(margin(logits[None])[1][0]), self.trackers[i].threshold
            esc = m <= thr
            budget = plan.second if esc else plan.first
        name = budget_name(budget)
        exp = explain(
            self.bundle,
            item.text,
            budget,
            level=name,
            reason=self._plan_reason(i, pressure, note, m, thr, esc),
            signal=signals[0],
            pressure=pressure,
            attention=attention,
            model=self.model,
        )
        passes = [None] if plan is None else [plan.first, plan.second] if esc else [plan.first]
        return {
            **exp,
            **self._cost(passes, tokens),
            "plan": self.plan_name(i),
            "margin": None if m is None else round(m, 4),
            "escalated": esc,
            "threshold": None if thr is None or not math.isfinite(thr) else round(thr, 4),
        }

    def _cost(self, passes: list[Budget | None], tokens: int) -> dict:
        """What the passes an input ran cost it: heads and neurons summed per layer, FLOPs of them all
        over the full model's at its length, and each pass."""
        shape, full = self.shape, Budget.full(self.shape)
        passes = [b or full for b in passes]
        heads = [sum(x) for x in zip(*(b.heads for b in passes))]
        neurons = [sum(x) for x in zip(*(b.neurons for b in passes))]
        neurons_total = shape.ffn * shape.n_layers
        dense = full.flops(shape, tokens)
        return {
            "heads": {
                "active": sum(heads),
                "total": self.total_heads,
                "ratio": round(sum(heads) / self.total_heads, 4),
                "per_layer": heads,
            },
            "neurons": {
                "active": sum(neurons),
                "total": neurons_total,
                "ratio": round(sum(neurons) / neurons_total, 4),
                "per_layer": neurons,
            },
            "flops_ratio": round(sum(b.flops(shape, tokens) for b in passes) / dense, 4),
            "passes": [
                {
                    "budget": b.name,
                    "flops_ratio": round(b.flops(shape, tokens) / dense, 4),
                    "heads": list(b.heads),
                    "neurons": list(b.neurons),
                }
                for b in passes
            ],
        }

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
        served: list[dict | None] = [None] * len(items)
        levels = [i for i, r in enumerate(routes) if not r.on_plan]
        if levels:
            budgets = [self.budget_of(routes[i].level.level) for i in levels]
            for i, b, logits in zip(
                levels, budgets, forward_grouped(self.model, ids[levels], mask[levels], budgets, self.device)
            ):
                d = routes[i].level
                served[i] = {
                    "logits": logits,
                    "passes": [b],
                    "margin": None,
                    "threshold": None,
                    "escalated": False,
                    "plan": None,
                    "reason": d.reason,
                }
        for p in sorted({r.plan for r in routes if r.on_plan}):
            rows = [i for i, r in enumerate(routes) if r.plan == p]
            self._run_plan(p, rows, ids, mask, routes, pressure, served)
        t3 = time.perf_counter()
        self.metrics.record("dihs_batch_size", len(items))
        self.metrics.record("dihs_load_pressure", pressure)
        self.metrics.record("dihs_plan_flops_target", self.plan_targets[plan])
        for i, cost in enumerate(self.plan_costs):  # re-set each batch: the agent drops gauges left unset
            self.metrics.record(
                "dihs_plan_cost_seconds", cost + self.controller.overhead_s, plan=self.plan_name(i)
            )
        tokens = mask.sum(1).tolist()
        results = [
            self._result(served[i], signals[i], pressure, bool(enc.encodings[i].overflowing), int(tokens[i]))
            for i in range(len(items))
        ]
        t4 = time.perf_counter()
        if all(r.plan == plan for r in routes):  # a batch all on the controller's plan
            self.controller.observed(plan, len(items), t4 - t0)
        full_rows = [i for i, r in enumerate(routes) if r.plan == 0]
        self.shadows.after_batch(
            plan == 0 and pressure == 0.0,
            t4 - t0,
            ids[full_rows],
            mask[full_rows],
            [int(served[i]["logits"].argmax()) for i in full_rows],
        )
        if timing is not None:
            timing.update(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)))
        return results

    def auto_status(self) -> dict:
        """Which plans auto serves and why (the config route and the start-up log)."""
        report = self.admission.report()
        if self.early:
            report["width_training"] = "in progress: the full model only until the width-trained bundle is in"
            for row in report["plans"][1:]:
                row["admitted"] = False
        return report

    def _run_plan(self, p: int, rows: list[int], ids, mask, routes, pressure: float, served: list) -> None:
        plan = self.plans[p]
        if plan is None:
            outs = forward_grouped(self.model, ids[rows], mask[rows], [None] * len(rows), self.device)
            for i, logits in zip(rows, outs):
                served[i] = {
                    "logits": logits,
                    "passes": [None],
                    "margin": None,
                    "threshold": None,
                    "escalated": False,
                    "plan": self.plan_name(p),
                    "reason": self._plan_reason(p, pressure, routes[i].note, None, None, False),
                }
            return
        tracker = self.trackers[p]
        out = cascade_batch(self.model, ids[rows], mask[rows], plan, tracker, self.device)
        thresholds = out.thresholds
        for k, i in enumerate(rows):
            esc = out.escalated[k]
            served[i] = {
                "logits": out.logits[k],
                "passes": [plan.first, plan.second] if esc else [plan.first],
                "margin": out.margins[k],
                "threshold": thresholds[k],
                "escalated": esc,
                "plan": self.plan_name(p),
                "reason": self._plan_reason(p, pressure, routes[i].note, out.margins[k], thresholds[k], esc),
            }
            if esc:
                self.metrics.record("dihs_escalations", 1)

    def _result(self, s: dict, signal: dict, pressure: float, truncated: bool, tokens: int) -> dict:
        cost = self._cost(s["passes"], tokens)
        p = s["logits"].softmax(-1)
        labels = self.bundle.labels
        level = cost["passes"][-1]["budget"]
        self.metrics.record("dihs_active_heads", cost["heads"]["active"])
        self.metrics.record("dihs_active_heads_ratio", min(1.0, cost["heads"]["ratio"]))
        self.metrics.record("dihs_active_neurons_ratio", min(1.0, cost["neurons"]["ratio"]))
        self.metrics.record("dihs_flops_ratio", cost["flops_ratio"])
        self.metrics.record("dihs_budget_level", 1, level=level)
        self.metrics.record("dihs_input_complexity", signal["score"])
        return {
            "label": labels[int(p.argmax())],
            "probabilities": {name: round(float(x), 6) for name, x in zip(labels, p)},
            **cost,
            "plan": s["plan"],
            "margin": None if s["margin"] is None else round(s["margin"], 4),
            "threshold": None
            if s["threshold"] is None or not math.isfinite(s["threshold"])
            else round(s["threshold"], 4),
            "escalated": s["escalated"],
            "complexity": signal["score"],
            "pressure": round(pressure, 4),
            "level": level,
            "reason": s["reason"],
            "truncated": truncated,
        }


class Tracked:
    """Arrival/departure bookkeeping shared by every front of an Engine: queue depth and latency
    feed the load tracker, and the duration histogram gets one sample per text."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def begin(self) -> float:
        self.engine.load.started()
        self.engine.metrics.record("dihs_queue_depth", self.engine.load.queue_depth)
        return time.perf_counter()

    def end(self, t0: float, level: str | None) -> None:
        dt = time.perf_counter() - t0
        self.engine.load.finished(dt)
        self.engine.metrics.record("dihs_queue_depth", self.engine.load.queue_depth)
        if level is not None:
            self.engine.metrics.record("dihs_request_duration_seconds", dt, level=level)


class EngineBackend:
    """The HTTP routes' backend in the replica's own process: texts go to `submit` (the replica's
    Batcher, or None: straight to Engine.run, as unit tests and the benchmark's model-only runs do).

    A request's texts enter and leave together; each text counts in the load tracker from arrival
    to answer."""

    def __init__(self, engine: Engine, model_name: str, submit=None):
        self.engine, self.tracked, self.info = engine, Tracked(engine), engine.info(model_name)
        self.submit = submit

    async def classify(self, items: list[Item], timing: dict | None = None) -> list[dict]:
        self.engine.controller.arrived(len(items), overlapped=self.engine.load.queue_depth > 0)
        t0s = [self.tracked.begin() for _ in items]
        results: list[dict] = []
        try:
            if self.submit is None:
                results = self.engine.run(items, timing)
                self.engine.shadow()  # as the batcher does once no batch waits
            else:
                results = await self.submit(items, timing)
        finally:
            for i, t0 in enumerate(t0s):
                self.tracked.end(t0, results[i]["level"] if results else None)
        return results

    async def explain(self, item: Item, attention: bool = True) -> dict:
        if self.submit is None:
            return self.engine.explain(item, attention)
        # not batched and not counted as load: a diagnostic call, off the event loop
        return await asyncio.to_thread(self.engine.explain, item, attention)

    async def ready(self) -> bool:
        return True

    def auto_status(self) -> dict:
        return self.engine.auto_status()
