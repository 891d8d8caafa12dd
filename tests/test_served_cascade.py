"""What is served is what is evaluated: /v1/classify's auto texts, at a plan, answer as `dihs eval`'s
dihs row does for the same inputs in the same arrival order (same plan, same gate, same passes), and
pay what the row counts; in float32, int8, bfloat16 and the dtype `--dtype auto` picks here."""

import pytest
from fastapi.testclient import TestClient

from dihs_model.budget import Budget
from dihs_model.cascade import EscalationTracker, arrival_order, run_cascade
from dihs_model.data import Examples
from dihs_model.passes import run_pass
from service.backend import EngineBackend
from service.engine import Engine
from service.http import build_http_app
from service.load import LoadConfig, LoadTracker
from service.metrics import NullMetrics
from service.routing import Item
from service.settings import Settings
from tests.conftest import ManualClock, distinct_texts, each_plan_cheaper, overload, tiny_calibrated_bundle

TEXTS = distinct_texts(96)
NEAR_TIE = 1e-4  # margins this close to their threshold: batch-size float noise may decide them either way


@pytest.fixture(params=["float32", "int8", "bfloat16", "auto"])
def engine(tmp_path, request):
    return Engine(
        tiny_calibrated_bundle(tmp_path),
        "tiny",
        LoadTracker(LoadConfig(slo_s=0.25, queue_capacity=32), clock=ManualClock()),
        NullMetrics(),
        dtype=request.param,
    )


def test_every_cascade_plan_serves_what_eval_counts(engine, monkeypatch):
    ex = Examples(TEXTS, [0] * len(TEXTS), ["neg", "pos"])
    batches = list(engine.bundle.batches(ex, 64))
    cascades = [i for i, p in enumerate(engine.plans) if p is not None]
    assert cascades, "the tiny bundle has cascade plans"
    for i in cascades:
        plan = engine.plans[i]
        engine.trackers[i] = type(engine.trackers[i])(plan)  # a fresh tracker, as evaluation starts with
        monkeypatch.setattr(engine.controller, "choose", lambda pressure, i=i: i)
        evaluated = run_cascade(engine.model, batches, plan, len(TEXTS))
        eval_escalated, clear = evaluated_gate(engine.model, batches, plan, len(TEXTS))
        assert sum(eval_escalated) / len(TEXTS) == pytest.approx(evaluated.escalated)
        assert sum(clear) >= len(TEXTS) - 2, "the texts were chosen to keep margins off their thresholds"
        served = {}
        engine.metrics.log.clear()
        for k in arrival_order(len(TEXTS)):  # one text per model batch, in evaluation's arrival order
            (served[k],) = engine.run([Item(TEXTS[k])])
        labels = [engine.bundle.labels.index(served[k]["label"]) for k in range(len(TEXTS))]
        for k in range(len(TEXTS)):
            if clear[k]:
                assert labels[k] == int(evaluated.preds[k]), (engine.plan_name(i), TEXTS[k])
                assert served[k]["escalated"] == eval_escalated[k], (engine.plan_name(i), TEXTS[k])
        escalated = [served[k]["escalated"] for k in range(len(TEXTS))]
        assert len([m for m in engine.metrics.log if m[0] == "dihs_escalations"]) == sum(escalated)
        flops = [m[1] for m in engine.metrics.log if m[0] == "dihs_flops_ratio"]
        assert flops == [served[k]["flops_ratio"] for k in arrival_order(len(TEXTS))]
        assert all(r["plan"] == engine.plan_name(i) for r in served.values())
        for r in served.values():  # both passes paid by an escalated text
            assert [p["budget"] for p in r["passes"]] == [plan.first.name] + (
                [(plan.second or Budget.full(engine.shape)).name] if r["escalated"] else []
            )
            assert r["flops_ratio"] == pytest.approx(sum(p["flops_ratio"] for p in r["passes"]), abs=2e-4)
            assert r["heads"]["per_layer"] == [sum(x) for x in zip(*(p["heads"] for p in r["passes"]))]
            assert r["passes"][0]["neurons"] == list(plan.first.neurons)


def evaluated_gate(model, batches, plan, n: int) -> tuple[list[bool], list[bool]]:
    """Per input, evaluation's escalation (replayed in arrival order, as run_cascade decides) and
    whether its first-pass margin lies more than NEAR_TIE from the threshold it was held against."""
    conf, tracker = run_pass(model, batches, plan.first, n).conf, EscalationTracker(plan)
    escalated, clear = [False] * n, [False] * n
    for k in arrival_order(n):
        clear[k] = abs(float(conf[k]) - tracker.threshold) > NEAR_TIE
        escalated[k] = tracker(float(conf[k]))
    return escalated, clear


def test_no_pressure_serves_the_full_model_and_the_caps_bound_the_plan(engine):
    app = build_http_app(Settings(model_name="tiny"), EngineBackend(engine, "tiny"), NullMetrics())
    client = TestClient(app)
    r = client.post("/v1/classify", json={"text": "good fun"}).json()["results"][0]
    full = {"budget": "f100", "flops_ratio": 1.0, "heads": [4, 4, 4], "neurons": [64, 64, 64]}
    assert r["plan"] == "full" and r["passes"] == [full] and not r["escalated"]
    each_plan_cheaper(engine)
    overload(engine.load)  # a backlog far over capacity: the controller picks a cheaper plan
    r = client.post("/v1/classify", json={"text": "good fun"}).json()["results"][0]
    assert r["plan"] != "full" and r["flops_ratio"] < 1.0 or r["escalated"]
    capped = client.post("/v1/classify", json={"text": "good fun", "budget": {"max_flops_ratio": 0.3}}).json()
    (c,) = capped["results"]
    target = {engine.plan_name(i): p.target_flops_ratio for i, p in enumerate(engine.plans) if p is not None}
    assert target[c["plan"]] <= 0.3


@pytest.mark.parametrize("escalate", [True, False])
def test_explain_equals_classify_for_escalated_and_answered_texts(engine, monkeypatch, escalate):
    app = build_http_app(Settings(model_name="tiny"), EngineBackend(engine, "tiny"), NullMetrics())
    client = TestClient(app)
    i = next(k for k, p in enumerate(engine.plans) if p is not None and p.threshold != float("-inf"))
    monkeypatch.setattr(engine.controller, "choose", lambda pressure: i)
    monkeypatch.setattr(engine.controller, "peek", lambda pressure: i)
    # a threshold every margin is under (escalate) or over (answered); the tracker holds it while warming up
    engine.trackers[i].threshold = float("inf") if escalate else float("-inf")
    exp = client.post("/v1/explain", json={"text": "good fun movie", "attention": False}).json()
    served = client.post("/v1/classify", json={"text": "good fun movie"}).json()["results"][0]
    assert served["escalated"] is escalate and exp["escalated"] is escalate
    for key in ("label", "level", "passes", "heads", "neurons", "flops_ratio", "plan", "reason"):
        assert exp[key] == served[key], key
    for name, p in served["probabilities"].items():
        assert abs(exp["probabilities"][name] - p) < 1e-5
