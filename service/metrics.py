"""Every Prometheus metric of the service, defined once.

Metrics are recorded with Ray's metrics API (`ray.util.metrics`), so every replica's samples are
collected by the Ray metrics agent of its node and exported on that node's metrics port (one
scrape target per Ray node: `--metrics-export-port`, 8080 locally; a PodMonitor on Kubernetes).
Counters from all replicas are separate series (per worker) that `sum()` adds up. Ray prefixes
every name with `ray_` and counters gain `_total`: `dihs_requests` is scraped as
`ray_dihs_requests_total`. `exported_names()` lists the scraped names: the dashboards, alert
rules and tests check themselves against it.

Gauges are re-sent: a worker reports to its node's agent only the gauges set since its last report,
and the agent drops a gauge series it has not been sent for two report intervals (Ray 2.60's
OpenTelemetry recorder, `_gauge_metric_ttl_s`). A gauge set once per batch would leave the export a
few seconds after the last batch, so `Metrics` keeps every gauge series' last value and sets it again
every REFRESH_S: an idle replica is in every scrape (queue depth 0, the pressure its last batch got).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .version import package_version

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RATIO_BUCKETS = (0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
HEADS_BUCKETS = (1, 2, 4, 8, 12, 18, 24, 36, 48, 54, 72, 96, 144, 192, 288, 384)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # counter | gauge | histogram
    description: str
    tags: tuple[str, ...] = ("model",)
    buckets: tuple[float, ...] | None = None


SPECS = (
    MetricSpec(
        "dihs_requests",
        "counter",
        "Requests answered or refused, by status (ok, client_error, server_error, rejected)",
        ("model", "status"),
    ),
    MetricSpec(
        "dihs_request_duration_seconds",
        "histogram",
        "Time from arrival at the model replica to the answer, by budget level",
        ("model", "level"),
        LATENCY_BUCKETS,
    ),
    MetricSpec(
        "dihs_active_heads", "histogram", "Attention heads computed per text", ("model",), HEADS_BUCKETS
    ),
    MetricSpec(
        "dihs_active_heads_ratio",
        "histogram",
        "Heads computed / all heads, per text",
        ("model",),
        RATIO_BUCKETS,
    ),
    MetricSpec(
        "dihs_active_neurons_ratio",
        "histogram",
        "FFN neurons computed / all FFN neurons, per text",
        ("model",),
        RATIO_BUCKETS,
    ),
    MetricSpec(
        "dihs_flops_ratio",
        "histogram",
        "FLOPs computed / the full model's FLOPs at the text's length, per text",
        ("model",),
        RATIO_BUCKETS,
    ),
    MetricSpec(
        "dihs_escalations",
        "counter",
        "Auto texts whose first pass was not confident enough: they also ran the cascade's second pass",
        ("model",),
    ),
    MetricSpec(
        "dihs_plan_flops_target",
        "gauge",
        "FLOPs target of the plan auto texts run now (1 = the full model)",
        ("model",),
    ),
    MetricSpec(
        "dihs_plan_cost_seconds",
        "gauge",
        "Seconds per text of each plan: its passes measured on the replica at start-up (a full batch, "
        "padded as such a batch is) plus the per-text overhead observed while serving",
        ("model", "plan"),
    ),
    MetricSpec(
        "dihs_plan_admitted",
        "gauge",
        "1 while auto may serve the plan: its 95% accuracy-loss bound is within "
        "max_accuracy_loss (the full model: always 1)",
        ("model", "plan"),
    ),
    MetricSpec(
        "dihs_plan_loss_bound",
        "gauge",
        "One-sided 95% upper bound on the plan's accuracy loss against the full "
        "model, calibration split and live shadow agreement pooled",
        ("model", "plan"),
    ),
    MetricSpec(
        "dihs_plan_agreement_texts",
        "counter",
        "Live texts a shadow pass of the plan answered beside the full model",
        ("model", "plan"),
    ),
    MetricSpec(
        "dihs_plan_agreement_disagreements",
        "counter",
        "Of those, the texts the plan answered differently",
        ("model", "plan"),
    ),
    MetricSpec("dihs_shadow_seconds", "counter", "Seconds spent on shadow passes", ("model",)),
    MetricSpec(
        "dihs_shadow_idle_seconds",
        "counter",
        "Idle seconds (auto on the full model at zero pressure, batches "
        "excluded) that shadow passes may take a share of",
        ("model",),
    ),
    MetricSpec("dihs_budget_level", "counter", "Texts served at each budget level", ("model", "level")),
    MetricSpec(
        "dihs_input_complexity", "histogram", "Input complexity score in [0, 1]", ("model",), RATIO_BUCKETS
    ),
    MetricSpec(
        "dihs_load_pressure", "gauge", "Load pressure in [0, 1] used for the latest batch", ("model",)
    ),
    MetricSpec("dihs_queue_depth", "gauge", "Texts waiting or running at the model replica", ("model",)),
    MetricSpec("dihs_batch_size", "histogram", "Texts per model batch", ("model",), BATCH_BUCKETS),
    MetricSpec(
        "dihs_cpu_utilization_ratio",
        "gauge",
        "CPU utilization of the replica's process in [0, 1] per core",
        ("model",),
    ),
    MetricSpec(
        "dihs_gc_pause_seconds",
        "histogram",
        "Pauses of Python's garbage collector in the replica's process, by "
        "generation (2: a full collection, which holds the GIL: batches and HTTP wait)",
        ("model", "generation"),
        GC_BUCKETS,
    ),
    MetricSpec(
        "dihs_gpu_utilization_ratio",
        "gauge",
        "GPU utilization from NVML in [0, 1] (absent on CPU)",
        ("model", "gpu"),
    ),
    MetricSpec(
        "dihs_gpu_memory_used_bytes", "gauge", "GPU memory used from NVML (absent on CPU)", ("model", "gpu")
    ),
    MetricSpec(
        "dihs_width_training_progress",
        "gauge",
        "Share of `dihs train`'s width-training steps done for the bundle served: 1 for a width-trained "
        "bundle, below 1 while an early bundle serves (at most that many steps: training may stop sooner)",
    ),
    MetricSpec(
        "dihs_build_info",
        "gauge",
        "1, labelled with the package version, the served bundle's checksum "
        "(the X-DIHS-Bundle header's value), the dtype the model runs in and the bundle's stage "
        "(early: `dihs train`'s bundle before width training, auto on the full model only; final)",
        ("model", "version", "bundle_checksum", "dtype", "stage"),
    ),
)
BY_NAME = {s.name: s for s in SPECS}


def exported_name(spec: MetricSpec) -> str:
    return "ray_" + spec.name + ("_total" if spec.kind == "counter" else "")


def exported_names() -> dict[str, str]:
    """Scraped family name -> Prometheus type, for every metric the service exports."""
    return {exported_name(s): s.kind for s in SPECS}


# Below Ray's lowest report interval (1 s): every report carries every gauge.
REFRESH_S = 0.5
# What a replica that has served nothing exports: no texts waiting, no pressure.
IDLE_START = {"dihs_load_pressure": 0.0, "dihs_queue_depth": 0.0}


class Metrics:
    """The live metrics of one process; `record(name, value, **tags)` for every kind."""

    def __init__(self, model: str, refresh_s: float = REFRESH_S):
        from ray.util import metrics as rm

        self._m = {}
        self._last: dict[tuple[str, tuple], float] = {}  # (gauge, sorted tags) -> last value, re-sent
        self._lock = threading.Lock()
        for s in SPECS:
            if s.kind == "counter":
                m = rm.Counter(s.name, description=s.description, tag_keys=s.tags)
            elif s.kind == "gauge":
                m = rm.Gauge(s.name, description=s.description, tag_keys=s.tags)
            else:
                m = rm.Histogram(
                    s.name, description=s.description, boundaries=list(s.buckets), tag_keys=s.tags
                )
            m.set_default_tags({"model": model})
            self._m[s.name] = m
        for name, value in IDLE_START.items():
            self.record(name, value)
        threading.Thread(target=self._resend, args=(refresh_s,), name="dihs-gauges", daemon=True).start()

    def record(self, name: str, value: float = 1.0, **tags: str) -> None:
        spec, m = BY_NAME[name], self._m[name]
        if spec.kind == "counter":
            if value > 0:  # Ray's Counter.inc refuses 0; adding nothing is a no-op anyway
                m.inc(value, tags=tags or None)
        elif spec.kind == "gauge":
            with self._lock:
                self._last[(name, tuple(sorted(tags.items())))] = value
                m.set(value, tags=tags or None)
        else:
            m.observe(value, tags=tags or None)

    def build_info(self, bundle_checksum: str, dtype: str, stage: str = "final") -> None:
        """dihs_build_info = 1 for this version, bundle and dtype; a bundle swapped in replaces the old
        series (no longer re-sent, it leaves the export after the agent's gauge TTL)."""
        with self._lock:
            for key in [k for k in self._last if k[0] == "dihs_build_info"]:
                del self._last[key]
        self.record("dihs_build_info", 1.0, **build_info_tags(bundle_checksum, dtype, stage))

    def _resend(self, period_s: float) -> None:
        while True:
            time.sleep(period_s)
            with self._lock:
                for (name, tags), value in self._last.items():
                    self._m[name].set(value, tags=dict(tags) or None)


def build_info_tags(bundle_checksum: str, dtype: str, stage: str) -> dict[str, str]:
    """dihs_build_info's labels (besides model), for Metrics and NullMetrics alike."""
    return {"version": package_version(), "bundle_checksum": bundle_checksum, "dtype": dtype, "stage": stage}


class NullMetrics:
    """For plain-Python use without Ray (unit tests, benchmarks): keeps a log of what was recorded."""

    def __init__(self):
        self.log: list[tuple[str, float, dict]] = []

    def record(self, name: str, value: float = 1.0, **tags: str) -> None:
        assert name in BY_NAME, name
        assert BY_NAME[name].kind != "counter" or value >= 0, (name, value)  # as Ray's counters
        self.log.append((name, value, tags))

    def build_info(self, bundle_checksum: str, dtype: str, stage: str = "final") -> None:
        self.record("dihs_build_info", 1.0, **build_info_tags(bundle_checksum, dtype, stage))
