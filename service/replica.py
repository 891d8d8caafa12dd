"""One model replica in plain Python (no Ray): the engine and its batcher behind the HTTP app, and
what Serve asks of a replica: a warm-up before the first request, a health probe, live settings
(Serve's `user_config`, applied by `reconfigure`), and a drain that refuses new requests while the
accepted ones finish. The Serve deployment (app.py) is a thin shell around it; tests drive it in-process.

Every answer carries `X-DIHS-Bundle`: the checksum of the bundle that served it (bundle_id.py), so a
rollout to a new bundle can be watched request by request.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from dihs_model.meta import META_FILE
from dihs_model.policy import PolicyConfig
from dihs_model.train_progress import describe, read_progress

from . import heap
from .backend import EngineBackend
from .batcher import Batcher
from .bundle_id import bundle_checksum
from .controller import ControllerConfig
from .engine import Engine
from .errors import ApiError
from .http import build_http_app
from .load import LoadConfig, LoadTracker
from .routing import Item
from .settings import Settings

log = logging.getLogger("dihs.replica")
BUNDLE_HEADER = b"x-dihs-bundle"
DRAINING = (
    "the replica is shutting down and takes no new requests: retry after the Retry-After delay "
    "(another replica, or the restarted service, answers)"
)


class LiveConfig(BaseModel):
    """Settings a running replica takes from Serve's `user_config` without a restart; a field left
    out keeps the deployment's setting (args / DIHS_* env) or the bundle's own default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bundle: str | None = Field(
        None,
        description="bundle folder: a new one is loaded, warmed and swapped in; "
        "requests already accepted finish on the old one",
    )
    slo_ms: float | None = Field(None, gt=0, description="latency objective of the load pressure")
    max_batch_size: int | None = Field(None, ge=1, le=256, description="texts per model batch")
    protect: float | None = Field(
        None,
        ge=0,
        le=1,
        description="policy: share of the cut a maximally complex "
        "text is spared (default: from the bundle's calibration)",
    )
    utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="controller: share of a replica's time the chosen plan may fill at the arrival rate",
    )
    hold_s: float | None = Field(
        None, ge=0, description="controller: how long a costlier plan must be wanted before it is taken"
    )

    @classmethod
    def of(cls, s: Settings) -> LiveConfig:
        """The live fields a deployment starts with (build_app puts them in its user_config)."""
        return cls(bundle=s.bundle, slo_ms=s.slo_ms, max_batch_size=s.max_batch_size)


@dataclass
class Serving:
    """One loaded bundle and everything built on it; swapped whole when the bundle changes."""

    bundle_path: str
    engine: Engine
    batcher: Batcher
    app: object  # the FastAPI app over this engine
    backend: ReplicaBackend  # the app's backend
    bundle_id: str
    entered: int = 0  # HTTP requests inside this app, from their first byte (parsing and validation too)


class ReplicaBackend(EngineBackend):
    """The routes' backend: the engine's, refusing new work while the replica drains and counting the
    requests in flight (the drain waits for them)."""

    def __init__(self, replica: Replica, engine: Engine, batcher: Batcher):
        super().__init__(engine, replica.settings.model_name, submit=batcher.submit)
        self.replica = replica

    async def classify(self, items: list[Item], timing: dict | None = None) -> list[dict]:
        with self.replica.accepting():
            return await super().classify(items, timing)

    async def explain(self, item: Item, attention: bool = True) -> dict:
        with self.replica.accepting():
            return await super().explain(item, attention)

    async def ready(self) -> bool:
        return not self.replica.draining

    def release(self) -> None:
        """Let go of a retired bundle's engine and batcher. FastAPI keeps the route functions of every
        app it built in module-level caches (fastapi.dependencies.models, 4096 entries), and they hold
        this backend: without this, every bundle swap kept the old model alive."""
        self.engine = self.tracked = self.submit = None


class _Accepted:
    def __init__(self, replica: Replica):
        self.replica = replica

    def __enter__(self):
        if self.replica.draining:
            raise ApiError(503, DRAINING, "draining", {"Retry-After": "1"})
        self.replica.inflight += 1

    def __exit__(self, *exc):
        self.replica.inflight -= 1


class Replica:
    def __init__(self, settings: Settings, metrics, hardware: dict | None = None):
        self.settings, self.metrics = settings, metrics
        self.hardware = {} if hardware is None else hardware  # the gauge thread's latest GPU utilization
        self.live = LiveConfig.of(settings)  # until Serve's reconfigure gives the deployment's user_config
        self.draining = False
        self.inflight = 0  # requests accepted and not yet answered, over every Serving
        self.serving = self._build(self.live)
        if settings.gc_freeze:
            heap.freeze()

    def _value(self, live: LiveConfig, name: str):
        v = getattr(live, name)
        return getattr(self.settings, name) if v is None else v

    def _build(self, live: LiveConfig) -> Serving:
        """Load, warm up (Engine.probe: a model that cannot answer fails here, before any request) and
        wire a bundle. Runs off the event loop on reloads."""
        from dihs_model.bundle import load_bundle

        s, batch, path = self.settings, self._value(live, "max_batch_size"), str(self._value(live, "bundle"))
        load = LoadTracker(self._load_config(live), gpu_utilization=lambda: self.hardware.get("gpu"))
        bundle = load_bundle(path)
        bundle_id = bundle_checksum(bundle.meta)
        agreement = Path(s.agreement_file) if s.agreement_file else Path(path) / "live-agreement.json"
        engine = Engine(
            bundle,
            s.model_name,
            load,
            self.metrics,
            s.device,
            s.dtype,
            policy=_policy(live),
            max_batch_size=batch,
            controller=self._controller_config(live),
            shadow_share=s.shadow_share,
            agreement_file=agreement,
            bundle_id=bundle_id,
            max_dtype_disagreement=s.max_dtype_disagreement,
        )
        engine.probe()
        log.warning("dtype %s", engine.dtype_choice.reason)
        log.warning("%s", engine.admission.summary())
        batcher = Batcher(engine.run, batch, s.batch_wait_ms / 1e3, s.replica_capacity, idle=engine.shadow)
        backend = ReplicaBackend(self, engine, batcher)
        serving = Serving(path, engine, batcher, build_http_app(s, backend, self.metrics), backend, bundle_id)
        stage = "early" if engine.early else "final"
        self.metrics.build_info(serving.bundle_id, engine.dtype, stage)  # dihs_build_info's labels
        self.metrics.record("dihs_width_training_progress", 0.0 if engine.early else 1.0)
        return serving

    def _load_config(self, live: LiveConfig) -> LoadConfig:
        batch = self._value(live, "max_batch_size")
        return LoadConfig.for_replica(self._value(live, "slo_ms") / 1e3, batch)

    def _controller_config(self, live: LiveConfig) -> ControllerConfig:
        given = {k: getattr(live, k) for k in ("utilization", "hold_s") if getattr(live, k) is not None}
        return replace(
            ControllerConfig(),
            slo_s=self._value(live, "slo_ms") / 1e3,
            max_accuracy_loss=self.settings.max_accuracy_loss,
            **given,
        )

    async def reconfigure(self, config: dict | None) -> None:
        """Apply Serve's user_config: a new bundle path is loaded and swapped in (the old one answers what
        it accepted, then is released); the other fields change the running engine and batcher in place."""
        live = LiveConfig.model_validate(config or {})
        current = self.serving
        if str(self._value(live, "bundle")) != current.bundle_path:
            self.serving = await asyncio.to_thread(self._build, live)
            self.live = live
            log.warning(
                "bundle %s (%s) swapped in for %s (%s)",
                self.serving.bundle_path,
                self.serving.bundle_id,
                current.bundle_path,
                current.bundle_id,
            )
            asyncio.get_running_loop().create_task(_retire(current, self.settings.gc_freeze))
            return
        self.live = live
        engine = current.engine
        engine.load.cfg = self._load_config(live)
        engine.ladder_policy.policy = _policy(live) or PolicyConfig.from_meta(engine.bundle.meta)
        engine.controller.cfg = self._controller_config(live)
        current.batcher.max_batch_size = self._value(live, "max_batch_size")  # read at every batch

    async def watch_upgrade(self, poll_s: float = 2.0) -> None:
        """`upgrade_bundle`: wait until `dihs train` has written it (save_bundle renames a finished
        folder into place, so its dihs.json appears complete), then swap it in as a new `bundle` is.
        A training that never finishes leaves the served bundle as it is."""
        target = self.settings.upgrade_bundle
        if not target:
            return
        failed = False
        while not (Path(target) / META_FILE).is_file():
            failed = self._training_progress(target, failed)
            await asyncio.sleep(poll_s)
        if self.serving.bundle_path == str(target):
            return
        log.warning("%s is written: swapping it in for %s", target, self.serving.bundle_path)
        try:
            await self.reconfigure({**self.live.model_dump(exclude_none=True), "bundle": str(target)})
        except Exception:  # noqa: BLE001 - a bad new bundle: keep serving the one that works, say why
            log.exception("%s could not be swapped in; still serving %s", target, self.serving.bundle_path)

    def _training_progress(self, target, said_failed: bool) -> bool:
        """Read how far the width training that will write `target` has got (the progress file in
        the early bundle's folder) into the served engine's reasons, config and metric; log once if it
        failed. Returns whether the failure has been logged."""
        serving = self.serving
        if not serving.engine.early:
            return said_failed
        record = read_progress(Path(serving.bundle_path))
        serving.engine.admission.progress = describe(record)
        if record and record.get("total"):
            self.metrics.record("dihs_width_training_progress", min(1.0, record["done"] / record["total"]))
        if record and record.get("status") == "failed" and not said_failed:
            log.error(
                "width training failed (%s): %s will not be written; still serving the early bundle %s",
                record.get("error"),
                target,
                serving.bundle_path,
            )
            return True
        return said_failed

    def probe(self) -> None:
        """Serve's health check: the current engine answers a probe text with finite scores."""
        self.serving.engine.probe()

    def accepting(self) -> _Accepted:
        """Context of one accepted request (503 `draining` instead, once the drain began)."""
        return _Accepted(self)

    async def __call__(self, scope, receive, send):
        """The ASGI app Serve runs: the current bundle's app, each answer tagged with its bundle id."""
        serving = self.serving
        if scope["type"] != "http":
            return await serving.app(scope, receive, send)
        tag = serving.bundle_id.encode()

        async def tagged(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (BUNDLE_HEADER, tag)]}
            await send(message)

        serving.entered += 1  # a bundle swap releases the old app only once none is inside it
        try:
            await serving.app(scope, receive, tagged)
        finally:
            serving.entered -= 1


def _policy(live: LiveConfig) -> PolicyConfig | None:
    return None if live.protect is None else PolicyConfig(protect=live.protect)


async def _retire(old: Serving, frozen: bool) -> None:
    """Let a swapped-out bundle answer what it accepted, then stop its batch loop and release its
    model (with a frozen heap, by one full collection: heap.refreeze)."""
    while old.entered or old.batcher.held:  # entered: every request in its app, the backend's too
        await asyncio.sleep(0.05)
    worker = old.batcher._worker  # Batcher has no close(); its loop only waits for work now
    if worker is not None:
        worker.cancel()
        await asyncio.sleep(0)  # the cancelled loop lets go of the batcher
    old.engine.admission.save()
    old.backend.release()
    del old, worker
    if frozen:
        heap.refreeze()
