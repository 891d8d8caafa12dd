"""The replica without Ray (service/replica.py): bundle id on every answer, drain refusals and
readiness, the health probe, live reconfiguration (settings in place, a new bundle swapped in)."""

import asyncio
import math

import pytest
import torch
from fastapi.testclient import TestClient

from service.bundle_id import bundle_checksum
from service.metrics import NullMetrics
from service.replica import LiveConfig, Replica
from service.settings import Settings


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two saved tiny bundles: different weights (seeded differently), different label names."""
    from dihs_model.bundle import save_bundle
    from tests.conftest import tiny_calibrated_bundle

    a = tiny_calibrated_bundle(tmp_path_factory.mktemp("a"))
    b = tiny_calibrated_bundle(tmp_path_factory.mktemp("b"))
    b.meta["labels"] = ["negative", "positive"]
    return save_bundle(a, tmp_path_factory.mktemp("sa") / "a"), save_bundle(
        b, tmp_path_factory.mktemp("sb") / "b"
    )


def _replica(path, **settings) -> Replica:
    return Replica(Settings(bundle=str(path), model_name="tiny", **settings), NullMetrics())


def test_answers_name_their_bundle_and_a_draining_replica_refuses(bundles):
    from dihs_model.bundle import read_meta

    replica = _replica(bundles[0])
    client = TestClient(replica)
    r = client.post("/v1/classify", json={"texts": ["good fun", "bad plot"]})
    assert r.status_code == 200, r.text
    assert (
        r.headers["x-dihs-bundle"]
        == bundle_checksum(read_meta(bundles[0]))
        != bundle_checksum(read_meta(bundles[1]))
    )
    assert client.get("/v2/health/ready").status_code == 200 and client.get("/readyz").status_code == 200
    assert replica.inflight == 0

    replica.draining = True
    for path, body in (
        ("/v1/classify", {"text": "good"}),
        ("/v1/explain", {"text": "good"}),
        (
            "/v2/models/tiny/infer",
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["good"]}]},
        ),
    ):
        r = client.post(path, json=body)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", (path, r.text)
        assert "shutting down" in r.text, r.text
    assert client.get("/v2/health/ready").status_code == 503
    r = client.get("/readyz")
    assert (
        r.status_code == 503 and r.json()["error"]["type"] == "not_ready" and r.headers["retry-after"] == "1"
    )
    assert client.get("/v2/health/live").status_code == 200 and client.get("/healthz").status_code == 200
    statuses = [t["status"] for name, _, t in replica.metrics.log if name == "dihs_requests"]
    assert statuses.count("rejected") == 2  # classify and infer are counted routes; explain is not


def test_probe_fails_on_non_finite_scores(bundles):
    replica = _replica(bundles[0])
    replica.probe()  # a sound model passes
    with torch.no_grad():
        next(replica.serving.engine.model.parameters()).fill_(math.nan)
    with pytest.raises(RuntimeError, match="non-finite"):
        replica.probe()


def test_reconfigure_in_place_and_to_a_new_bundle(bundles):
    from dihs_model.bundle import read_meta

    replica = _replica(bundles[0])
    first = replica.serving
    asyncio.run(replica.reconfigure({"slo_ms": 50, "max_batch_size": 3, "protect": 0.2, "hold_s": 0.5}))
    assert replica.serving is first  # no reload for these
    assert first.engine.load.cfg.slo_s == 0.05 and first.engine.load.cfg.queue_capacity == 6
    assert first.batcher.max_batch_size == 3 and first.engine.controller.cfg.hold_s == 0.5
    assert first.engine.ladder_policy.policy.protect == 0.2

    asyncio.run(replica.reconfigure({"bundle": str(bundles[1])}))
    assert replica.serving is not first and replica.serving.bundle_id == bundle_checksum(
        read_meta(bundles[1])
    )
    assert replica.serving.batcher.max_batch_size == 16  # fields left out: the deployment's settings again
    r = TestClient(replica).post("/v1/classify", json={"text": "good fun"})
    assert r.status_code == 200 and r.headers["x-dihs-bundle"] == replica.serving.bundle_id
    assert r.json()["results"][0]["label"] in ("negative", "positive")

    with pytest.raises(ValueError, match="max_batch_size"):
        asyncio.run(replica.reconfigure({"max_batch_size": 0}))
    with pytest.raises(ValueError, match="Extra inputs"):
        asyncio.run(replica.reconfigure({"batch": 4}))
    assert LiveConfig.of(Settings(bundle="x")).model_dump(exclude_none=True) == {
        "bundle": "x",
        "slo_ms": 250.0,
        "max_batch_size": 16,
    }


def test_the_start_up_heap_is_frozen_and_a_swapped_out_bundle_is_still_freed(bundles):
    import gc
    import weakref

    gc.unfreeze()
    _replica(bundles[0], gc_freeze=False)
    assert gc.get_freeze_count() == 0
    replica = _replica(bundles[0])
    try:
        assert gc.get_freeze_count() > 1000  # the model, the tokenizer and the libraries' objects
        old_model = weakref.ref(replica.serving.engine.model)

        async def swap() -> bool:
            await replica.reconfigure({"bundle": str(bundles[1])})
            for _ in range(100):  # _retire runs once the old bundle holds no request
                await asyncio.sleep(0.02)
                if old_model() is None:
                    return True
            return False

        assert asyncio.run(swap()), "the swapped-out bundle's model is still alive"
        assert gc.get_freeze_count() > 1000  # frozen again, with the new bundle
        assert TestClient(replica).post("/v1/classify", json={"text": "good fun"}).status_code == 200
    finally:
        gc.unfreeze()


def test_garbage_collections_are_timed_and_slow_ones_logged(monkeypatch, caplog):
    import gc

    from service import heap

    monkeypatch.setattr(heap, "SLOW_GC_S", 0.0)
    timer = heap.CollectionTimer()
    try:
        timer.start()
        timer.start()
        assert gc.callbacks.count(timer) == 1
        timer.take_pauses()
        with caplog.at_level("WARNING", logger="dihs.heap"):
            gc.collect()
        pauses = timer.take_pauses()
        assert any(g == 2 and seconds > 0 for g, seconds in pauses), (
            pauses
        )  # dihs_gc_pause_seconds gets these
    finally:
        timer.stop()  # the test process's collections go unlogged again
    assert timer not in gc.callbacks
    assert any(
        "garbage collection (generation 2" in r.getMessage() and "paused the replica" in r.getMessage()
        for r in caplog.records
    ), caplog.text


def test_a_request_inside_the_old_app_during_a_swap_is_answered_by_it(bundles):
    import json

    from service.replica import BUNDLE_HEADER

    replica = _replica(bundles[0], gc_freeze=False)
    old_id = replica.serving.bundle_id
    body = json.dumps({"text": "good fun"}).encode()

    async def scenario() -> list[dict]:
        gate, sent = asyncio.Event(), []

        async def receive():  # a client still sending its body when the swap comes
            await gate.wait()
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/classify",
            "raw_path": b"/v1/classify",
            "query_string": b"",
            "root_path": "",
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
        request = asyncio.create_task(replica(scope, receive, send))
        await asyncio.sleep(0.05)
        await replica.reconfigure({"bundle": str(bundles[1])})
        await asyncio.sleep(0.3)  # _retire polls every 50 ms: it must wait for this request
        gate.set()
        await request
        return sent

    start = next(m for m in asyncio.run(scenario()) if m["type"] == "http.response.start")
    assert start["status"] == 200, start
    assert (BUNDLE_HEADER, old_id.encode()) in start["headers"]


def test_an_early_bundle_serves_the_full_model_and_the_final_one_swaps_in_when_written(bundles, tmp_path):
    """`make run`: the early bundle (width training in progress) answers with the full model and says
    why; when training writes the final bundle, the replica swaps it in, no request failing meanwhile
    and every answer naming the bundle that gave it."""
    import json
    import shutil

    import httpx

    from dihs_model.bundle import read_meta
    from service.replica import BUNDLE_HEADER

    header = BUNDLE_HEADER.decode()
    early = tmp_path / "early"
    shutil.copytree(bundles[0], early)
    meta = json.loads((early / "dihs.json").read_text())
    (early / "dihs.json").write_text(json.dumps({**meta, "width_training": "in progress"}))
    final = tmp_path / "final"
    replica = _replica(early, upgrade_bundle=str(final), gc_freeze=False, max_accuracy_loss=1.0)
    engine = replica.serving.engine
    assert engine.early and engine.controller.admitted == (True,) + (False,) * (len(engine.plans) - 1)
    assert "width training in progress" in engine.reason(None, "full", 0.8)
    status = engine.auto_status()
    assert "in progress" in status["width_training"] and not any(p["admitted"] for p in status["plans"][1:])
    assert any(t.get("stage") == "early" for name, _, t in replica.metrics.log if name == "dihs_build_info")
    early_id, final_id = bundle_checksum(read_meta(early)), bundle_checksum(read_meta(bundles[1]))

    async def scenario() -> list[httpx.Response]:
        watch = asyncio.create_task(replica.watch_upgrade(poll_s=0.02))
        answers = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=replica), base_url="http://t") as c:
            for k in range(400):
                answers.append(await c.post("/v1/classify", json={"text": "good fun"}))
                if k == 3:  # training finishes: a complete folder renamed into place, as save_bundle does
                    shutil.copytree(bundles[1], tmp_path / "writing")
                    (tmp_path / "writing").rename(final)
                if answers[-1].headers[header] == final_id:
                    break
                await asyncio.sleep(0.01)
        await watch
        return answers

    answers = asyncio.run(scenario())
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    seen = [r.headers[header] for r in answers]
    assert set(seen) == {early_id, final_id} and seen[0] == early_id
    assert seen[-1] == final_id and replica.serving.bundle_path == str(final)
    assert not replica.serving.engine.early


def test_an_early_bundle_says_how_far_width_training_has_got_and_logs_once_if_it_failed(
    bundles, tmp_path, caplog
):
    import json
    import shutil

    from dihs_model.train_progress import PROGRESS_FILE

    early = tmp_path / "early"
    shutil.copytree(bundles[0], early)
    meta = json.loads((early / "dihs.json").read_text())
    (early / "dihs.json").write_text(json.dumps({**meta, "width_training": "in progress"}))
    replica = _replica(early, upgrade_bundle=str(tmp_path / "final"), gc_freeze=False)
    engine = replica.serving.engine
    gauge = [v for name, v, _ in replica.metrics.log if name == "dihs_width_training_progress"]
    assert gauge == [0.0]  # an early bundle, nothing read yet
    running = {"status": "running", "done": 87, "total": 435, "eta_s": 600, "error": None}
    (early / PROGRESS_FILE).write_text(json.dumps(running))
    assert replica._training_progress(tmp_path / "final", False) is False
    assert "width training in progress: 87 of at most 435 steps, about 10 min left" in engine.reason(
        None, "full", 0.8
    )
    assert "87 of at most 435 steps" in engine.auto_status()["width_training"]
    assert replica.metrics.log[-1][:2] == ("dihs_width_training_progress", 0.2)
    failed = {**running, "status": "failed", "error": "RuntimeError: out of memory"}
    (early / PROGRESS_FILE).write_text(json.dumps(failed))
    with caplog.at_level("ERROR", logger="dihs.replica"):
        said = replica._training_progress(tmp_path / "final", False)
        again = replica._training_progress(tmp_path / "final", said)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert said and again and len(errors) == 1 and "RuntimeError: out of memory" in errors[0]
    assert "still serving the early bundle" in errors[0]
    assert "failed: RuntimeError: out of memory" in engine.reason(None, "full", 0.8)
