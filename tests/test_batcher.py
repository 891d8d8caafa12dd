"""The replica's request path without Ray: the Batcher (texts of many requests into model batches)
and the HTTP app over an Engine behind it, as one Serve replica runs them."""

import asyncio

import pytest
from fastapi.testclient import TestClient

from service.backend import EngineBackend
from service.batcher import Batcher
from service.engine import PHASES, Engine
from service.errors import Overloaded
from service.http import build_http_app
from service.load import LoadConfig, LoadTracker
from service.metrics import NullMetrics
from service.protocol import ClassifyResponse, V2InferResponse
from service.settings import Settings
from tests.conftest import tiny_calibrated_bundle


class Recorder:
    """A stand-in model: answers each item with its own text, records every batch it was given."""

    def __init__(self, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, items, timing):
        self.batches.append(list(items))
        if self.fail_on in items:
            raise RuntimeError("boom")
        timing.update(forward=0.001)
        return [f"r:{x}" for x in items]


def _run(coro):
    return asyncio.run(coro)


def test_a_multi_text_request_is_one_entry_split_over_full_batches_in_order():
    rec = Recorder()

    async def go():
        b = Batcher(rec, max_batch_size=4, wait_s=0.05, capacity=100)
        timing: dict = {}
        big = [f"t{i}" for i in range(10)]
        out = await asyncio.gather(b.submit(big, timing), b.submit(["solo"]))
        return out, timing

    (big_out, solo_out), timing = _run(go())
    assert big_out == [f"r:t{i}" for i in range(10)] and solo_out == ["r:solo"]
    assert [len(x) for x in rec.batches] == [4, 4, 3]  # 10 + 1 texts, 4 per batch, arrival order
    assert rec.batches[2] == ["t8", "t9", "solo"]
    assert timing["forward"] == pytest.approx(0.003) and timing["queue"] >= 0  # summed over its 3 batches


def test_concurrent_one_text_requests_share_a_batch():
    rec = Recorder()

    async def go():
        b = Batcher(rec, max_batch_size=8, wait_s=0.2, capacity=100)
        return await asyncio.gather(*[b.submit([f"x{i}"]) for i in range(8)])

    assert _run(go()) == [[f"r:x{i}"] for i in range(8)]
    assert rec.batches == [[f"x{i}" for i in range(8)]]  # full before the wait ran out: one batch


def test_past_capacity_a_request_is_refused_at_once_and_an_idle_replica_takes_any():
    rec = Recorder()

    async def go():
        b = Batcher(rec, max_batch_size=2, wait_s=0.05, capacity=3)
        first = asyncio.ensure_future(b.submit(["a", "b", "c"]))
        await asyncio.sleep(0)  # queued: 3 texts held
        with pytest.raises(Overloaded):
            await b.submit(["d"])
        assert await first == ["r:a", "r:b", "r:c"]
        assert b.held == 0
        return await b.submit([f"y{i}" for i in range(5)])  # more than capacity, but nothing else is held

    assert _run(go()) == [f"r:y{i}" for i in range(5)]


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    rec = Recorder(fail_on="bad")

    async def go():
        b = Batcher(rec, max_batch_size=2, wait_s=0.01, capacity=100)
        results = await asyncio.gather(b.submit(["bad", "x", "y"]), b.submit(["z"]), return_exceptions=True)
        return results, await b.submit(["after"]), b.held

    (failed, z), after, held = _run(go())
    assert isinstance(failed, RuntimeError) and z == ["r:z"] and after == ["r:after"] and held == 0
    assert ["y", "z"] not in rec.batches and ["y"] not in rec.batches  # the failed request's rest was dropped


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    """The HTTP app as a Serve replica builds it: EngineBackend over a Batcher over the Engine."""
    bundle = tiny_calibrated_bundle(tmp_path_factory.mktemp("batcher"))
    metrics = NullMetrics()
    engine = Engine(bundle, "tiny", LoadTracker(LoadConfig(slo_s=0.25, queue_capacity=8)), metrics)
    calls = []

    def run(items, timing):
        calls.append(len(items))
        return engine.run(items, timing)

    batcher = Batcher(run, max_batch_size=16, wait_s=0.002, capacity=64)
    app = build_http_app(
        Settings(model_name="tiny", max_texts=32), EngineBackend(engine, "tiny", batcher.submit), metrics
    )
    with TestClient(app) as client:  # one event loop for the batcher's worker, as in a replica
        yield client, calls, engine


def test_a_16_text_request_is_one_model_batch_and_answers_in_the_protocol_shape(replica):
    client, calls, engine = replica
    texts = [f"good fun {i}" if i % 2 else f"bad dull plot {i}" for i in range(16)]
    calls.clear()
    r = client.post("/v1/classify", json={"texts": texts})
    assert r.status_code == 200, r.text
    assert calls == [16]
    body = ClassifyResponse.model_validate_json(r.content)  # serialized once, still the documented shape
    from service.routing import Item

    direct = engine.run([Item(t) for t in texts])
    assert [x.label for x in body.results] == [d["label"] for d in direct]
    timing = dict(p.split(";dur=") for p in r.headers["server-timing"].split(", "))
    assert set(timing) == {"queue", *PHASES, "serialize", "app"} and all(
        float(v) >= 0 for v in timing.values()
    )
    assert r.headers["x-request-id"]


def test_v2_infer_through_the_batcher_has_the_oip_shape(replica):
    client, calls, _ = replica
    calls.clear()
    infer = {
        "id": "q1",
        "inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a b", "c d", "e"]}],
        "outputs": [{"name": "label"}, {"name": "level"}],
    }
    r = client.post("/v2/models/tiny/infer", json=infer)
    assert r.status_code == 200, r.text
    body = V2InferResponse.model_validate_json(r.content)
    assert calls == [3] and body.id == "q1" and [o.name for o in body.outputs] == ["label", "level"]
    assert "parameters" not in r.json()["outputs"][0]  # None fields left out, as before
    bad = client.post("/v2/models/tiny/infer", json={**infer, "outputs": [{"name": "logits"}]})
    assert bad.status_code == 400 and "unknown output 'logits'" in bad.json()["error"]  # OIP's error shape
    assert calls == [3], "a request that fails validation computes nothing"
