"""Shadow passes: within a share of idle time, never under load, and their agreement admits or
withdraws plans (a drift scenario on the tiny bundle)."""

import pytest

from dihs_model.admission import Evidence
from dihs_model.passes import forward_grouped
from service.engine import Engine
from service.load import LoadConfig, LoadTracker
from service.metrics import NullMetrics
from service.routing import Item
from service.shadow import ShadowBudget
from tests.conftest import ManualClock, distinct_texts, overload, tiny_calibrated_bundle


def test_the_budget_accrues_a_share_of_idle_time_only():
    clock = ManualClock()
    b = ShadowBudget(0.05, max_balance_s=0.1, clock=clock)
    clock.advance(1.0)
    b.tick(eligible=True, busy_s=0.2)  # 0.8 s idle -> 0.04 s of shadow
    assert b.idle_s == pytest.approx(0.8) and b.balance_s == pytest.approx(0.04)
    assert b.affords(0.04) and not b.affords(0.05)
    clock.advance(10.0)
    b.tick(eligible=False)  # under load or off the full model: nothing accrues
    assert b.balance_s == pytest.approx(0.04)
    clock.advance(100.0)
    b.tick(eligible=True)
    assert b.balance_s == pytest.approx(0.1)  # capped: an idle hour does not bank a long shadow burst
    b.spent(0.3)
    assert not b.affords(0.0) and b.spent_s == pytest.approx(0.3)
    assert not ShadowBudget(0.0, clock=clock).affords(0.0)


def engine_with(tmp_path, share: float, max_loss: float, clock: ManualClock) -> Engine:
    from dataclasses import replace

    from service.controller import ControllerConfig

    load = LoadTracker(LoadConfig(slo_s=0.25, queue_capacity=32), clock=clock)
    cfg = replace(ControllerConfig(), max_accuracy_loss=max_loss)
    return Engine(
        tiny_calibrated_bundle(tmp_path),
        "tiny",
        load,
        NullMetrics(),
        controller=cfg,
        clock=clock,
        shadow_share=share,
        agreement_file=tmp_path / "live.json",
        bundle_id="tiny",
    )


def serve_idle(engine: Engine, clock: ManualClock, texts: list[str]) -> None:
    """One text at a time with a second of quiet before each: the replica idle, the full model on."""
    for t in texts:
        clock.advance(1.0)
        engine.run([Item(t)])
        engine.shadow()


def test_shadow_passes_count_agreement_and_cost_at_most_their_share(tmp_path):
    clock = ManualClock()
    e = engine_with(tmp_path, 0.5, 1.0, clock)
    serve_idle(e, clock, distinct_texts(40))
    texts = [m for m in e.metrics.log if m[0] == "dihs_plan_agreement_texts"]
    assert texts and sum(m[1] for m in texts) == sum(
        e.admission.evidence(i).live_n for i in range(1, len(e.plans))
    )
    b = e.shadows.budget
    assert 0 < b.spent_s <= b.share * b.idle_s + b.max_balance_s


def test_no_shadow_pass_under_pressure(tmp_path):
    clock = ManualClock()
    e = engine_with(tmp_path, 0.5, 1.0, clock)
    for i in range(1, len(e.plans)):  # every candidate cheaper than the full model
        e.controller.plan_times[i] = {1: 0.001 / i}
    overload(e.load)
    for t in distinct_texts(10):
        clock.advance(0.05)
        e.run([Item(t)])
        e.shadow()
    assert not [m for m in e.metrics.log if m[0] == "dihs_shadow_seconds"]


def answers_differently(engine: Engine, plan: int, texts: list[str]) -> list[str]:
    """The texts on which the plan's one pass (a single-pass plan: no gate) and the full model disagree."""
    first = engine.plans[plan].first
    out = []
    for t in texts:
        enc = engine.tokenize([Item(t)])
        (full,), (small,) = (
            forward_grouped(engine.model, enc["input_ids"], enc["attention_mask"], [b]) for b in (None, first)
        )
        if int(full.argmax()) != int(small.argmax()):
            out.append(t)
    return out


def test_drift_withdraws_a_plan_from_auto(tmp_path):
    """A plan admitted on its calibration evidence meets traffic unlike it: texts it answers
    differently from the full model. Its live disagreement withdraws it, and auto no longer picks it."""
    clock = ManualClock()
    e = engine_with(tmp_path, 1.0, 0.02, clock)
    single = len(e.plans) - 1
    assert e.plans[single].threshold == float("-inf")
    drift = answers_differently(e, single, distinct_texts(1500, seed=1))
    assert len(drift) >= 5, "the tiny model's cheapest pass disagrees with the full model on some texts"
    e.admission._calib[single] = Evidence(300, 0, 0)  # as if calibrated on 300 agreeing texts: bound 1.0%
    e.admission.record(single, [])
    e.controller.admit(e.admission.admitted())
    assert e.controller.admitted[single]
    served = 0
    for t in drift:
        serve_idle(e, clock, [t])
        served += 1
        if not e.controller.admitted[single]:
            break
    ev = e.admission.evidence(single)
    assert not e.controller.admitted[single], f"still admitted after {served} texts: {ev}"
    assert served <= 3 and ev.live_disagree == served and ev.bound > 0.02  # 2 in 302: bound 2.1%
    assert single not in e.controller.usable()


def test_under_load_with_no_plan_admitted_auto_serves_the_full_model_and_says_why(tmp_path):
    from fastapi.testclient import TestClient

    from service.backend import EngineBackend
    from service.http import build_http_app
    from service.settings import Settings

    clock = ManualClock()
    e = engine_with(tmp_path, 0.0, 0.005, clock)  # the tiny bundle's few calibration texts bound nothing
    assert e.controller.admitted == (True,) + (False,) * (len(e.plans) - 1)
    for i in range(1, len(e.plans)):  # every candidate far cheaper: only admission holds auto back
        e.controller.plan_times[i] = {1: 0.001 / i}
    overload(e.load)
    client = TestClient(build_http_app(Settings(model_name="tiny"), EngineBackend(e, "tiny"), e.metrics))
    (r,) = client.post("/v1/classify", json={"text": "good fun"}).json()["results"]
    assert r["plan"] == "full" and r["flops_ratio"] == 1.0
    assert "no cheaper plan admitted" in r["reason"] and "max_accuracy_loss 0.005" in r["reason"]
    auto = client.get("/v2/models/tiny/config").json()["auto"]
    assert auto["max_accuracy_loss"] == 0.005 and auto["texts_needed_if_all_agree"] == 598
    n = e.bundle.meta["cascade"]["calibration_examples"]
    for p in auto["plans"][1:]:
        assert not p["admitted"] and p["calibration_texts"] in (n, 0) and p["loss_bound95"] > 0.005


def test_every_candidate_plan_gets_its_turn_however_costly():
    """Turns are strict: a plan the balance cannot cover yet is waited for, not skipped (skipping
    starved the costliest cascade: 2 live texts against 176 for the cheapest pass in a real run)."""
    import tempfile
    from pathlib import Path

    clock = ManualClock()
    with tempfile.TemporaryDirectory() as tmp:
        e = engine_with(Path(tmp), 0.01, 1.0, clock)  # 10 ms of balance per idle second
        for i in range(1, len(e.plans)):  # estimated costs from 2 ms to 12 ms: later plans wait longer
            e.plan_times[i] = {1: 0.002 * i, 2: 0.004 * i}
        serve_idle(e, clock, distinct_texts(120, seed=2))
        live = [e.admission.evidence(i).live_n for i in range(1, len(e.plans))]
    assert min(live) > 0 and max(live) - min(live) <= 1, live
