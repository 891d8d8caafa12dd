"""The inference engine of a model replica: one batch in, tokenized once, texts grouped by width
budget level, one sliced forward per group (dihs_model.passes.forward_grouped). Plain Python (no Ray, no HTTP): the replica's Batcher
(service/batcher.py) feeds it model batches; EngineBackend is what the HTTP routes call.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import torch

from dihs_model.bundle import Bundle
from dihs_model.device import pick_device
from dihs_model.levels import LadderPolicy
from dihs_model.passes import forward_grouped
from dihs_model.policy import PolicyConfig

from .load import LoadTracker

PHASES = ("tokenize", "decide", "forward", "results")  # what Engine.run times, in order


@dataclass(frozen=True)
class ModelInfo:
    """What the HTTP routes need to know of the served model (validation, v2 metadata)."""

    name: str
    labels: list[str]
    ladder: list[float]
    total_heads: int
    max_length: int


@dataclass(frozen=True)
class Item:
    """One text and its budget limits: the unit the batcher groups."""

    text: str
    mode: str = "auto"
    min_ratio: float = 0.0
    max_ratio: float = 1.0


class Engine:
    def __init__(self, bundle: Bundle, model_name: str, load: LoadTracker, metrics, device: str = "cpu",
                 policy: PolicyConfig | None = None):
        if "levels" not in bundle.meta or "complexity" not in bundle.meta:
            raise ValueError("the bundle has no budget ladder: run `dihs calibrate BUNDLE` first")
        self.bundle, self.model_name, self.load, self.metrics = bundle, model_name, load, metrics
        self.device = pick_device(device)
        self.model = bundle.model.eval()
        if self.device.type == "cuda":  # half precision on GPU: same slices, bf16 matmuls
            self.model = self.model.to(self.device, dtype=torch.bfloat16)
        self.ladder_policy = LadderPolicy(bundle.meta, bundle.tokenizer, policy)
        self.levels, self.ladder = self.ladder_policy.levels, self.ladder_policy.ratios
        self.budget_of = self.ladder_policy.budget_of
        self.total_heads = self.model.shape.total_heads

    def info(self, model_name: str) -> ModelInfo:
        """What the HTTP front needs to know of this model (validation, v2 metadata)."""
        return ModelInfo(model_name, self.bundle.labels, self.ladder, self.total_heads, self.bundle.max_length)

    def tokenize(self, items: list[Item]):
        """The whole batch through the tokenizer at once (right-padded to its longest text)."""
        return self.bundle.tokenizer([it.text for it in items], padding=True, truncation=True,
                                     max_length=self.bundle.max_length, return_tensors="pt")

    def decide(self, items: list[Item], pressure: float, enc=None):
        """Tokens, complexity signals and the budget decision of each item (no model call)."""
        enc = self.tokenize(items) if enc is None else enc
        signals, decisions = self.ladder_policy.decide(enc["input_ids"], enc["attention_mask"], pressure,
                                                       [(it.mode, it.min_ratio, it.max_ratio) for it in items])
        return enc, signals, decisions

    def explain(self, item: Item, attention: bool = True) -> dict:
        """The explanation of what run([item]) would serve now: same budget decision, heads and label.

        Reads the published load pressure without updating it; records no serving metrics.
        """
        from dihs_model.explain import explain

        pressure = self.load.published
        _, signals, decisions = self.decide([item], pressure)
        d = decisions[0]
        return explain(self.bundle, item.text, self.budget_of(d.level), level=self.levels[d.level]["name"],
                       reason=d.reason, signal=signals[0], pressure=pressure, attention=attention, model=self.model)

    @torch.inference_mode()
    def run(self, items: list[Item], timing: dict | None = None) -> list[dict]:
        """Results in the order of `items`, as protocol.Result fields; `timing` (if given) gets the
        seconds of each of PHASES for this batch."""
        t0 = time.perf_counter()
        enc = self.tokenize(items)
        t1 = time.perf_counter()
        pressure = self.load.pressure()
        enc, signals, decisions = self.decide(items, pressure, enc)
        t2 = time.perf_counter()
        logits = forward_grouped(self.model, enc["input_ids"], enc["attention_mask"],
                                 [self.budget_of(d.level) for d in decisions], self.device)
        probs = [x.softmax(-1) for x in logits]
        t3 = time.perf_counter()
        self.metrics.record("dihs_batch_size", len(items))
        self.metrics.record("dihs_load_pressure", pressure)
        tokens = enc["attention_mask"].sum(1).tolist()
        results = [self._result(probs[i], decisions[i], signals[i], pressure, bool(enc.encodings[i].overflowing),
                                int(tokens[i])) for i in range(len(items))]
        if timing is not None:
            timing.update(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3)))
        return results

    def _result(self, p: torch.Tensor, decision, signal: dict, pressure: float, truncated: bool, tokens: int) -> dict:
        level = self.levels[decision.level]
        budget = self.ladder_policy.budgets[decision.level]
        shape = self.model.shape
        active = sum(budget.heads)
        neurons_total = shape.ffn * shape.n_layers
        flops = budget.flops_ratio(shape, [tokens])
        labels = self.bundle.labels
        self.metrics.record("dihs_active_heads", active)
        self.metrics.record("dihs_active_heads_ratio", active / self.total_heads)
        self.metrics.record("dihs_active_neurons_ratio", sum(budget.neurons) / neurons_total)
        self.metrics.record("dihs_flops_ratio", flops)
        self.metrics.record("dihs_budget_level", 1, level=level["name"])
        self.metrics.record("dihs_input_complexity", signal["score"])
        return {
            "label": labels[int(p.argmax())],
            "probabilities": {name: round(float(x), 6) for name, x in zip(labels, p)},
            "heads": {"active": active, "total": self.total_heads, "ratio": round(active / self.total_heads, 4),
                      "per_layer": list(budget.heads)},
            "neurons": {"active": sum(budget.neurons), "total": neurons_total,
                        "ratio": round(sum(budget.neurons) / neurons_total, 4), "per_layer": list(budget.neurons)},
            "flops_ratio": round(flops, 4),
            "complexity": signal["score"],
            "pressure": round(pressure, 4),
            "level": level["name"],
            "reason": decision.reason,
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
        t0s = [self.tracked.begin() for _ in items]
        results: list[dict] = []
        try:
            if self.submit is None:
                results = self.engine.run(items, timing)
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
