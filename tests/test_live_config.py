"""Live changes and health on real Ray Serve: a rollout through `serve.run` answers what the old
replica accepted (Serve's graceful shutdown) and switches answers to the new bundle; a config deploy
that changes only `user_config` reconfigures the running replica in place (same replica, new bundle,
new SLO); a replica whose model gives non-finite scores fails `check_health` and Serve replaces it."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import httpx
import pytest
import requests

pytestmark = pytest.mark.serve

HOLD_S = 25  # the first app's batches wait this long to fill: its requests are in flight during the rollout


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from dihs_model.bundle import save_bundle
    from tests.conftest import start_tiny_serve, stop_serve, tiny_calibrated_bundle

    tmp = tmp_path_factory.mktemp("live")
    other = tiny_calibrated_bundle(tmp / "b")
    other.meta["labels"] = ["negative", "positive"]
    b = save_bundle(other, tmp / "bundle-b")
    try:
        info = start_tiny_serve(tmp / "a", batch_wait_ms=HOLD_S * 1000, drain_timeout_s=90)
        yield {**info, "bundle_b": b}
    finally:
        stop_serve()


def _replicas(deployment: str) -> set[str]:
    import ray

    return {
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"]
    }


def _bundle_id(path) -> str:
    from dihs_model.bundle import read_meta
    from service.bundle_id import bundle_checksum

    return bundle_checksum(read_meta(path))


def test_rollout_through_serve_run_answers_in_flight_requests_and_switches_bundle(served):
    from ray import serve

    from service.app import build_app

    base, old_id, new_id = served["base"], _bundle_id(served["bundle"]), _bundle_id(served["bundle_b"])
    before = _replicas("DIHSModel")
    rolled = {}

    def rollout():
        time.sleep(1)  # the requests below are waiting in the old replica's batch queue
        serve.run(
            build_app({"bundle": str(served["bundle_b"]), "model_name": "tiny"}),
            name="dihs",
            route_prefix="/",
        )
        rolled["t"] = time.monotonic()
        r = requests.post(f"{base}/v1/classify", json={"text": "good fun"}, timeout=60)
        rolled["probe"] = (r, time.monotonic())

    async def in_flight():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *[client.post(f"{base}/v1/classify", json={"text": f"good {i}"}) for i in range(4)]
            )

    t0 = time.monotonic()
    thread = threading.Thread(target=rollout)
    thread.start()
    answers = asyncio.run(in_flight())
    done = time.monotonic()
    thread.join()
    probe, t_probe = rolled["probe"]
    print(
        f"\nrollout: serve.run returned {rolled['t'] - t0:.1f} s, "
        f"new bundle answered at {t_probe - t0:.1f} s, "
        f"the old replica's 4 in-flight requests at {done - t0:.1f} s: {[r.status_code for r in answers]}"
    )
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    assert {r.headers["x-dihs-bundle"] for r in answers} == {old_id}
    assert probe.status_code == 200 and probe.headers["x-dihs-bundle"] == new_id != old_id
    assert probe.json()["results"][0]["label"] in ("negative", "positive")
    assert _replicas("DIHSModel").isdisjoint(before)  # a new replica; the old one drained and stopped
    if t_probe < done:
        print("the new replica answered while the old one still held accepted requests: they were drained")


def test_user_config_change_reconfigures_the_running_replica_in_place(served):
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    def deploy(user_config: dict | None):
        deployment = {"name": "DIHSModel", **({"user_config": user_config} if user_config else {})}
        config = {
            "applications": [
                {
                    "name": "live",
                    "route_prefix": "/live",
                    "import_path": "service.app:build_app",
                    "args": {"bundle": str(served["bundle"]), "model_name": "tiny"},
                    "deployments": [deployment],
                }
            ]
        }
        # what `serve deploy` sends: the config schema, applied by the controller
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=True)

    url = f"{served['base']}/live/v1/classify"
    deploy(None)
    replicas = _replicas("DIHSModel") - _replicas_of_app("dihs")
    r = requests.post(url, json={"text": "good fun"}, timeout=60)
    assert r.status_code == 200 and r.headers["x-dihs-bundle"] == _bundle_id(served["bundle"])
    assert r.json()["results"][0]["label"] in ("neg", "pos")

    deploy({"bundle": str(served["bundle_b"]), "slo_ms": 80, "max_batch_size": 4})
    deadline = time.monotonic() + 60
    while True:
        r = requests.post(url, json={"text": "good fun"}, timeout=60)
        if r.headers.get("x-dihs-bundle") == _bundle_id(served["bundle_b"]) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 200 and r.headers["x-dihs-bundle"] == _bundle_id(served["bundle_b"])
    assert r.json()["results"][0]["label"] in ("negative", "positive")
    assert _replicas("DIHSModel") - _replicas_of_app("dihs") == replicas, (
        "reconfigured in place, not restarted"
    )


def _replicas_of_app(app: str) -> set[str]:
    return {n for n in _replicas("DIHSModel") if f"::{app}#" in n}


def test_a_replica_whose_model_gives_non_finite_scores_is_replaced(served):
    import torch
    from ray import serve

    from service.app import DIHSModel

    class Poisonable(DIHSModel.func_or_class):
        def poison(self) -> None:
            with torch.no_grad():
                next(self.replica.serving.engine.model.parameters()).fill_(math.nan)

    app = serve.deployment(
        Poisonable,
        name="Poisonable",
        health_check_period_s=1,
        health_check_timeout_s=10,
        ray_actor_options={"num_cpus": 1},
    ).bind({"bundle": str(served["bundle"]), "model_name": "tiny"})
    handle = serve.run(app, name="poison", route_prefix="/poison")
    (first,) = _replicas("Poisonable")
    handle.poison.remote().result()
    url = f"{served['base']}/poison/v1/classify"
    t0, deadline = time.monotonic(), time.monotonic() + 120
    while True:
        now = _replicas("Poisonable")
        if (now and first not in now) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    replaced_after = time.monotonic() - t0
    while time.monotonic() < deadline:
        try:
            r = requests.post(url, json={"text": "good fun"}, timeout=30)
            if r.status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.5)
    print(f"\npoisoned replica replaced after {replaced_after:.1f} s")
    assert first not in _replicas("Poisonable"), "Serve kept the replica whose health check fails"
    assert r.status_code == 200, r.text
    assert all(math.isfinite(p) for p in r.json()["results"][0]["probabilities"].values())
    serve.delete("poison")
