"""The Ray Serve application: an HTTP ingress (FastAPI) and the model deployment.

`build_app(args)` is the import path for `serve run` / `serve deploy` (deploy/serve_config.yaml);
`run_local(settings)` is what `dihs serve` calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time

from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from .batching import Engine, Item, Tracked
from .errors import Overloaded, ReplicaFailed
from .http import ModelInfo, build_http_app
from .load import LoadConfig, LoadTracker
from .metrics import Metrics
from .settings import Settings


def _hardware_gauges(metrics: Metrics, latest: dict, period_s: float = 2.0) -> None:
    """CPU utilization of this process, and GPU utilization/memory from NVML where there is a GPU;
    the highest GPU utilization also goes into `latest["gpu"]` for the load tracker."""
    nvml = None
    try:
        import pynvml

        pynvml.nvmlInit()
        nvml = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no driver, no GPU: the GPU gauges stay absent (documented)
        nvml = None
    last_cpu, last_t = time.process_time(), time.monotonic()
    while True:
        time.sleep(period_s)
        cpu, t = time.process_time(), time.monotonic()
        metrics.record("dihs_cpu_utilization_ratio", min(1.0, (cpu - last_cpu) / max(1e-9, t - last_t)))
        last_cpu, last_t = cpu, t
        for i, h in enumerate(nvml or []):
            util = pynvml.nvmlDeviceGetUtilizationRates(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            metrics.record("dihs_gpu_utilization_ratio", util.gpu / 100.0, gpu=str(i))
            metrics.record("dihs_gpu_memory_used_bytes", float(mem.used), gpu=str(i))
        if nvml:
            latest["gpu"] = max(pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in nvml) / 100.0


@serve.deployment(name="DIHSModel")
class DIHSModel:
    def __init__(self, settings: dict):
        import torch

        from dihs_model.bundle import load_bundle

        s = Settings(**settings)
        torch.set_num_threads(s.torch_threads)
        self.metrics = Metrics(s.model_name)
        hardware: dict = {}  # filled by the gauge thread; stays empty (no GPU term) on CPU
        load = LoadTracker(LoadConfig(slo_s=s.slo_ms / 1e3, queue_capacity=s.queue_capacity),
                           gpu_utilization=lambda: hardware.get("gpu"))
        self.engine = Engine(load_bundle(s.bundle), s.model_name, load, self.metrics, s.device)
        self.tracked = Tracked(self.engine)
        self.name = s.model_name
        self.classify_batch.set_max_batch_size(s.max_batch_size)
        self.classify_batch.set_batch_wait_timeout_s(s.batch_wait_ms / 1e3)
        threading.Thread(target=_hardware_gauges, args=(self.metrics, hardware), daemon=True).start()

    def info(self) -> dict:
        return dataclasses.asdict(self.engine.info(self.name))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def classify_batch(self, items: list[Item]) -> list[dict]:
        # off the event loop, so arrivals keep being counted (queue depth) while a batch runs
        return await asyncio.to_thread(self.engine.run, items)

    async def classify(self, item: Item) -> dict:
        t0 = self.tracked.begin()
        result = None
        try:
            result = await self.classify_batch(item)
            return result
        finally:
            self.tracked.end(t0, result["level"] if result else None)

    async def explain(self, item: Item, attention: bool = True) -> dict:
        # not batched and not counted as load: a diagnostic call, off the event loop
        return await asyncio.to_thread(self.engine.explain, item, attention)


class RayBackend:
    def __init__(self, handle: DeploymentHandle, info: ModelInfo):
        self.handle, self.info = handle, info

    async def classify(self, items: list[Item]) -> list[dict]:
        try:
            return list(await asyncio.gather(*[self.handle.classify.remote(it) for it in items]))
        except BackPressureError:
            raise Overloaded() from None
        except (RayActorError, ActorDiedError, ActorUnavailableError):
            raise ReplicaFailed() from None

    async def explain(self, item: Item, attention: bool = True) -> dict:
        try:
            return await self.handle.explain.remote(item, attention)
        except BackPressureError:
            raise Overloaded() from None
        except (RayActorError, ActorDiedError, ActorUnavailableError):
            raise ReplicaFailed() from None

    async def ready(self) -> bool:
        return True


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, model: DeploymentHandle, settings: dict):
        self.model, self.settings = model, Settings(**settings)

    async def __serve_build_asgi_app__(self):
        info = ModelInfo(**await self.model.info.remote())
        return build_http_app(self.settings, RayBackend(self.model, info), Metrics(self.settings.model_name))


def build_app(args: dict | None = None):
    """Serve application builder: `serve run service.app:build_app bundle=DIR model_name=dihs`."""
    s = Settings(**(args or {}))
    # A replica that rejects at max_ongoing_requests makes Serve's router back off for up to 1 s
    # (measured here: 50 texts/s fell to 4/s), so the replica takes the whole backlog into its
    # own batch queue, where the load tracker sees it; max_queued_requests sheds beyond that.
    quiet = {"enable_access_log": False}
    model = DIHSModel.options(
        num_replicas=s.replicas,
        max_ongoing_requests=s.max_ongoing_requests,
        max_queued_requests=s.max_queued_requests,
        logging_config=quiet,
    ).bind(s.shareable())
    # The ingress only awaits: it holds several replicas' worth of texts, so that back-pressure is
    # decided by the model's queue and answered in our error shape with Retry-After.
    ingress_capacity = max(1024, 4 * s.replicas * (s.max_ongoing_requests + s.max_queued_requests))
    # (the proxy counts requests waiting for a routing decision as queued: a small limit here
    # would shed a burst before the ingress ever saw it)
    return Ingress.options(max_ongoing_requests=ingress_capacity, max_queued_requests=ingress_capacity,
                           logging_config=quiet).bind(model, s.shareable())


# Serve gives a starting proxy 5 s to answer its readiness check and then kills it; on a busy
# 2-core machine importing the proxy takes longer (seen in CI), so local runs allow a minute.
SLOW_MACHINE_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30"}


def run_local(s: Settings) -> None:
    """Start Ray and Serve on this machine and block (Ctrl-C stops)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local, loopback-only cluster
    for k, v in SLOW_MACHINE_ENV.items():
        os.environ.setdefault(k, v)
    ray.init(_metrics_export_port=s.metrics_port, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": s.host, "port": s.port}, logging_config={"enable_access_log": False})
    serve.run(build_app(s.shareable()), name="dihs", route_prefix="/", blocking=False)
    print(f"DIHS Serve: http://{s.host}:{s.port} (docs /docs), metrics http://127.0.0.1:{s.metrics_port}/metrics", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
        ray.shutdown()
