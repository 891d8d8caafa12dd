"""POST /v1/classify's plain-ASGI fast path answers exactly as the FastAPI route does: the same body,
status, headers and metric for every request, served or refused (the route is forced by turning the
fast path's acceptance off)."""

import pytest
from fastapi.testclient import TestClient

from service import routes_v1
from service.backend import EngineBackend
from service.engine import Engine
from service.errors import Overloaded
from service.http import build_http_app
from service.load import LoadConfig, LoadTracker
from service.metrics import NullMetrics
from service.protocol import ClassifyRequest
from service.settings import Settings
from tests.conftest import tiny_calibrated_bundle

BODIES = {
    "one": {"text": "good fun movie"},
    "many_fixed": {
        "texts": ["good", "bad awful dull plot"],
        "budget": {"mode": "fixed", "max_flops_ratio": 0.5},
    },
    "no_texts": {"texts": []},  # refused after validation (Api.items)
    "both": {"text": "a", "texts": ["b"]},  # refused by the request model
    "old_field": {"text": "a", "budget": {"max_heads_ratio": 0.5}},
    "wrong_type": {"text": 3},
    "too_many": {"texts": ["x"] * 9},
}


class FailingBackend(EngineBackend):
    def __init__(self, engine, exc):
        super().__init__(engine, "tiny")
        self.exc = exc

    async def classify(self, items, timing=None):
        raise self.exc


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    bundle = tiny_calibrated_bundle(tmp_path_factory.mktemp("fast"))
    return Engine(bundle, "tiny", LoadTracker(LoadConfig(slo_s=0.25, queue_capacity=32)), NullMetrics())


def _client(engine, backend=None, **settings):
    metrics = NullMetrics()
    s = Settings(max_texts=8, max_chars=200, model_name="tiny", **settings)
    app = build_http_app(s, backend or EngineBackend(engine, "tiny"), metrics)
    return TestClient(app, raise_server_exceptions=False), metrics


def _both_paths(monkeypatch, engine, send, backend=None, **settings):
    """(answer, dihs_requests statuses) through the fast path, then through the FastAPI route."""
    answers = []
    for forced in (False, True):
        with monkeypatch.context() as m:
            if forced:
                m.setattr(routes_v1.ClassifyFastPath, "_accepted", lambda self, request, body: None)
            client, metrics = _client(engine, backend, **settings)
            r = send(client)
            statuses = [kw["status"] for name, _, kw in metrics.log if name == "dihs_requests"]
            answers.append((r, statuses))
    return answers


def _same(fast, route):
    (a, sa), (b, sb) = fast, route
    assert a.status_code == b.status_code and sa == sb
    assert a.json() == b.json()
    assert a.headers["content-type"] == b.headers["content-type"]
    for h in ("retry-after", "www-authenticate"):
        assert a.headers.get(h) == b.headers.get(h)
    assert "x-request-id" in a.headers


@pytest.mark.parametrize("name", sorted(BODIES))
def test_fast_path_answers_as_the_route(monkeypatch, engine, name):
    fast, route = _both_paths(monkeypatch, engine, lambda c: c.post("/v1/classify", json=BODIES[name]))
    _same(fast, route)
    if name in ("one", "many_fixed"):
        assert fast[0].status_code == 200 and fast[1] == ["ok"]
        assert "server-timing" in fast[0].headers and "app;dur=" in fast[0].headers["server-timing"]
    else:
        assert fast[0].status_code == 422 and fast[1] == ["client_error"]


def test_served_requests_take_the_fast_path(monkeypatch, engine):
    """Only the fast path parses with model_validate_json; FastAPI validates its own way."""
    seen = []
    original = ClassifyRequest.model_validate_json.__func__

    def spy(cls, data, *a, **kw):
        seen.append(data)
        return original(cls, data, *a, **kw)

    monkeypatch.setattr(ClassifyRequest, "model_validate_json", classmethod(spy))
    client, _ = _client(engine)
    assert client.post("/v1/classify", json=BODIES["one"]).status_code == 200
    assert len(seen) == 1
    assert (
        client.post("/v1/classify", content=b"text=hi", headers={"content-type": "text/plain"}).status_code
        == 422
    )
    assert len(seen) == 1  # not JSON: straight to the route


def test_key_refusal_and_bad_bodies_are_the_routes(monkeypatch, engine):
    for send in (
        lambda c: c.post("/v1/classify", json=BODIES["one"]),
        lambda c: c.post("/v1/classify", json=BODIES["one"], headers={"Authorization": "Bearer no"}),
    ):
        fast, route = _both_paths(monkeypatch, engine, send, api_key="k3y")
        _same(fast, route)
        assert fast[0].status_code == 401
    fast, route = _both_paths(
        monkeypatch,
        engine,
        lambda c: c.post("/v1/classify", json=BODIES["one"], headers={"Authorization": "Bearer k3y"}),
        api_key="k3y",
    )
    _same(fast, route)
    assert fast[0].status_code == 200
    for raw in (b'{"text": ', b'{"text": "\xff\xfe"}', b""):
        fast, route = _both_paths(
            monkeypatch,
            engine,
            lambda c, raw=raw: c.post(
                "/v1/classify", content=raw, headers={"content-type": "application/json"}
            ),
        )
        _same(fast, route)
        assert fast[0].status_code in (400, 422)


@pytest.mark.parametrize(
    "exc, status, kind", [(Overloaded(), 503, "rejected"), (RuntimeError("boom"), 500, "server_error")]
)
def test_errors_after_validation_are_answered_alike(monkeypatch, engine, exc, status, kind):
    backend = FailingBackend(engine, exc)
    fast, route = _both_paths(
        monkeypatch, engine, lambda c: c.post("/v1/classify", json=BODIES["one"]), backend
    )
    assert fast[0].status_code == status and fast[1] == [kind]
    if status == 500:  # the message names the request id, different per request
        assert fast[0].json()["error"]["type"] == route[0].json()["error"]["type"] == "internal"
        assert fast[0].headers["x-request-id"] in fast[0].json()["error"]["message"]
        assert route[0].status_code == 500 and route[1] == [kind]
    else:
        _same(fast, route)
