"""The HTTP API without Ray: the FastAPI app over an in-process Engine on a tiny bundle."""

import pytest
from fastapi.testclient import TestClient

from service.backend import EngineBackend
from service.engine import Engine
from service.http import build_http_app
from service.load import LoadConfig, LoadTracker
from service.metrics import NullMetrics
from service.settings import Settings
from tests.conftest import ManualClock, each_plan_cheaper, overload, tiny_calibrated_bundle


@pytest.fixture
def served(tmp_path):
    bundle = tiny_calibrated_bundle(tmp_path)
    settings = Settings(max_texts=8, max_chars=200, model_name="tiny")
    metrics = NullMetrics()
    load = LoadTracker(LoadConfig(slo_s=0.25, queue_capacity=32), clock=ManualClock())
    engine = Engine(bundle, "tiny", load, metrics)
    each_plan_cheaper(engine)
    app = build_http_app(settings, EngineBackend(engine, "tiny"), metrics)
    return TestClient(app), metrics, engine


def test_classify_one_and_many(served):
    client, metrics, _ = served
    r = client.post("/v1/classify", json={"text": "good fun movie"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and len(body["results"]) == 1
    res = body["results"][0]
    assert res["label"] in ("neg", "pos") and abs(sum(res["probabilities"].values()) - 1) < 1e-4
    assert res["heads"]["total"] == 12 and res["heads"]["active"] == 12 and res["level"] == "f100"
    assert res["pressure"] == 0.0 and "full model" in res["reason"] and 0 <= res["complexity"] <= 1
    texts = ["good", "bad awful dull plot", "love"]
    r = client.post(
        "/v1/classify", json={"texts": texts, "budget": {"mode": "fixed", "max_flops_ratio": 0.5}}
    )
    results = r.json()["results"]
    assert len(results) == 3 and all(x["level"] == "f50" for x in results)
    assert all(sum(x["heads"]["per_layer"]) == x["heads"]["active"] for x in results)
    assert all(
        sum(x["neurons"]["per_layer"]) == x["neurons"]["active"] < x["neurons"]["total"] for x in results
    )
    assert all(0 < x["flops_ratio"] < 1.0 and x["heads"]["ratio"] < 1.0 for x in results)
    ok = [m for m in metrics.log if m[0] == "dihs_requests"]
    assert [m[2]["status"] for m in ok] == ["ok", "ok"]
    assert len([m for m in metrics.log if m[0] == "dihs_budget_level"]) == 4  # one per text


def test_answers_match_the_model_at_the_same_budget(served):
    client, _, engine = served
    import torch

    r = client.post(
        "/v1/classify",
        json={"texts": ["good fun", "the plot was bad"], "budget": {"mode": "fixed", "max_flops_ratio": 0.5}},
    )
    from dihs_model.budget import Budget

    budget = Budget.from_meta(engine.levels[2])
    ids, mask = engine.bundle.encode(["good fun", "the plot was bad"])
    with torch.no_grad():
        p = engine.model(ids, mask, budget=budget).logits.softmax(-1)
    assert [x["heads"]["per_layer"] for x in r.json()["results"]] == [list(budget.heads)] * 2
    assert [x["neurons"]["per_layer"] for x in r.json()["results"]] == [list(budget.neurons)] * 2
    for res, row in zip(r.json()["results"], p):
        assert abs(res["probabilities"]["pos"] - float(row[1])) < 1e-5


def test_pressure_lowers_auto_budgets_and_says_why(served):
    client, _, engine = served
    overload(engine.load)  # a backlog far over capacity
    r = client.post("/v1/classify", json={"text": "good"}).json()["results"][0]
    assert r["pressure"] > 0.5 and r["flops_ratio"] < 1.0 and "load pressure" in r["reason"]
    dense = client.post("/v1/classify", json={"text": "good", "budget": {"mode": "dense"}}).json()["results"][
        0
    ]
    assert dense["heads"]["ratio"] == dense["neurons"]["ratio"] == dense["flops_ratio"] == 1.0
    floor = client.post("/v1/classify", json={"text": "good", "budget": {"min_flops_ratio": 0.7}}).json()[
        "results"
    ][0]
    # auto: the floor bounds the plan's mean FLOPs target (a cascade spends it on average, not per text)
    targets = {
        engine.plan_name(i): 1.0 if p is None else p.target_flops_ratio for i, p in enumerate(engine.plans)
    }
    assert targets[floor["plan"]] >= 0.7


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        ({"text": ""}, 422, "empty"),
        ({"text": "   \n\t"}, 422, "empty"),
        ({"texts": []}, 422, "no texts"),
        ({"texts": ["a"] * 9}, 422, "limit is 8"),
        ({"text": "x" * 201}, 422, "limit is 200"),
        ({"text": 5}, 422, "text"),
        ({"text": "a", "texts": ["b"]}, 422, "exactly one"),
        ({}, 422, "exactly one"),
        ({"text": "a", "colour": "red"}, 422, "colour"),
        ({"text": "a", "budget": {"max_flops_ratio": 1.5}}, 422, "max_flops_ratio"),
        ({"text": "a", "budget": {"min_flops_ratio": -0.1}}, 422, "min_flops_ratio"),
        (
            {"text": "a", "budget": {"min_flops_ratio": 0.8, "max_flops_ratio": 0.2}},
            422,
            "above max_flops_ratio",
        ),
        ({"text": "a", "budget": {"max_flops_ratio": 0.1}}, 422, "no budget level"),
        ({"text": "a", "budget": {"mode": "turbo"}}, 422, "mode"),
        (
            {"text": "a", "budget": {"max_heads_ratio": 0.5}},
            422,
            "max_heads_ratio was replaced by max_flops_ratio",
        ),
        (
            {"text": "a", "budget": {"min_heads_ratio": 0.5}},
            422,
            "min_heads_ratio was replaced by min_flops_ratio",
        ),
    ],
)
def test_bad_input_gets_4xx_in_one_shape(served, body, status, fragment):
    client, metrics, _ = served
    r = client.post("/v1/classify", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and fragment in err["message"], err
    assert not [m for m in metrics.log if m[0] == "dihs_budget_level"]  # nothing was half-served


def test_invalid_json_and_huge_bodies(served):
    client, _, _ = served
    r = client.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request"
    r = client.post("/v1/classify", content=b"x" * 200_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]


def test_v2_protocol(served):
    client, _, engine = served
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2/models/tiny").json()
    assert meta["name"] == "tiny" and meta["inputs"][0] == {
        "name": "text",
        "datatype": "BYTES",
        "shape": [-1],
    }
    assert client.get("/v2/models/tiny/ready").status_code == 200
    assert client.get("/v2/models/other").status_code == 404
    req = {
        "id": "r1",
        "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["good", "bad"]}],
        "parameters": {"mode": "fixed", "max_flops_ratio": 0.5},
    }
    r = client.post("/v2/models/tiny/infer", json=req)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert r.json()["id"] == "r1" and out["label"]["shape"] == [2] and out["probabilities"]["shape"] == [2, 2]
    f50 = next(lv for lv in engine.levels if lv["name"] == "f50")
    assert out["heads_ratio"]["data"] == [f50["heads_ratio"]] * 2 and out["level"]["data"] == ["f50", "f50"]
    assert all(0 < x < 1 for x in out["flops_ratio"]["data"])
    bad = dict(req, parameters={"max_flops_ratio": 2})
    assert client.post("/v2/models/tiny/infer", json=bad).status_code == 400  # OIP has no 422
    old = client.post("/v2/models/tiny/infer", json=dict(req, parameters={"max_heads_ratio": 0.5}))
    assert old.status_code == 400 and "replaced by max_flops_ratio" in old.json()["error"]
    wrong = {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}
    assert "shape" in client.post("/v2/models/tiny/infer", json=wrong).json()["error"]


def test_openapi_lists_the_routes(served):
    client, _, _ = served
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/classify", "/v2/models/{name}/infer", "/v2/health/ready"} <= set(paths)
