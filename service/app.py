"""The Ray Serve application: one deployment, the model replica serving the FastAPI app itself.

`build_app(args)` is the import path for `serve run` / `serve deploy` (deploy/serve_config.yaml);
`run_local(settings)` is what `dihs serve` calls.
"""

from __future__ import annotations

import os
import threading
import time

from ray import serve

from .batcher import Batcher
from .engine import Engine, EngineBackend
from .http import build_http_app
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
@serve.ingress()
class DIHSModel:
    """The one deployment: Ray's proxy routes each HTTP request straight to a replica, whose own
    FastAPI app validates it and hands its texts to the replica's batcher in one call."""

    def __init__(self, settings: dict):
        import torch

        from dihs_model.bundle import load_bundle

        s = Settings(**settings)
        torch.set_num_threads(s.torch_threads)
        self.settings = s
        self.metrics = Metrics(s.model_name)
        hardware: dict = {}  # filled by the gauge thread; stays empty (no GPU term) on CPU
        load = LoadTracker(LoadConfig(slo_s=s.slo_ms / 1e3, queue_capacity=s.queue_capacity),
                           gpu_utilization=lambda: hardware.get("gpu"))
        self.engine = Engine(load_bundle(s.bundle), s.model_name, load, self.metrics, s.device,
                             max_batch_size=s.max_batch_size)
        self.batcher = Batcher(self.engine.run, s.max_batch_size, s.batch_wait_ms / 1e3, s.replica_capacity)
        threading.Thread(target=_hardware_gauges, args=(self.metrics, hardware), daemon=True).start()

    async def __serve_build_asgi_app__(self):
        backend = EngineBackend(self.engine, self.settings.model_name, submit=self.batcher.submit)
        return build_http_app(self.settings, backend, self.metrics)


def build_app(args: dict | None = None):
    """Serve application builder: `serve run service.app:build_app bundle=DIR model_name=dihs`."""
    s = Settings(**(args or {}))
    # Back-pressure is the replica's own decision (its batcher refuses texts past
    # replica_capacity, in the API's error shape with Retry-After), so Serve must never refuse or
    # hold back a request first: a replica at Serve's max_ongoing_requests makes the router back off
    # for up to 1 s (measured here: 50 texts/s fell to 4/s), the proxy counts a burst waiting for a
    # routing decision as queued, and the proxy's own 503 is plain text. Serve's limits are
    # therefore a generous count of HTTP requests, refusals included.
    return DIHSModel.options(
        num_replicas=s.replicas,
        max_ongoing_requests=s.serve_limit,
        max_queued_requests=s.serve_limit,
        ray_actor_options={"num_cpus": s.replica_cpus},
        logging_config={"enable_access_log": False},
    ).bind(s.shareable())


# Serve gives a starting proxy 5 s to answer its readiness check and then kills it; on a busy
# 2-core machine importing the proxy takes longer (seen in CI), so local runs allow a minute.
SLOW_MACHINE_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30"}


class DoesNotFit(ValueError):
    """The replicas asked for need more CPUs than this machine's Ray has."""


# Ray Serve's own request-path options (ray/serve/_private/constants.py; part of what
# RAY_SERVE_THROUGHPUT_OPTIMIZED=1 sets): the replica runs the app on its own event loop and the
# router on the caller's, instead of a thread hop each way per request. The engine's forward runs
# in a worker thread either way, so the loop is never blocked. Local runs set them unless given.
LEAN_PATH_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def run_local(s: Settings) -> None:
    """Start Ray and Serve on this machine and block (Ctrl-C stops)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local, loopback-only cluster
    for k, v in {**SLOW_MACHINE_ENV, **LEAN_PATH_ENV}.items():
        os.environ.setdefault(k, v)
    ray.init(_metrics_export_port=s.metrics_port, include_dashboard=False, logging_level="WARNING")
    cpus = ray.cluster_resources().get("CPU", 0)
    if s.replicas * s.replica_cpus > cpus:
        ray.shutdown()
        raise DoesNotFit(f"{s.replicas} replicas x {s.replica_cpus:g} CPUs each do not fit the {cpus:g} CPUs here: "
                         "lower --replicas or --replica-cpus")
    serve.start(http_options={"host": s.host, "port": s.port}, logging_config={"enable_access_log": False})
    serve.run(build_app(s.shareable()), name="dihs", route_prefix="/", blocking=False)
    print(f"DIHS Serve: http://{s.host}:{s.port} (docs /docs), metrics http://127.0.0.1:{s.metrics_port}/metrics", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
        ray.shutdown()
