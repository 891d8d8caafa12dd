"""Gauges through a real scrape of Ray's metrics export while the service is idle, and the build info.

Ray's metrics agent drops a gauge series it has not been sent for two report intervals (its
OpenTelemetry recorder's gauge TTL), and a replica's worker sends only the gauges set since its last
report: a gauge set once per batch vanishes from the export a few seconds after the last batch.
service.metrics.Metrics re-sends every gauge's last value, so an idle replica stays in every scrape.
"""

from __future__ import annotations

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.serve

REPORT_INTERVAL_S = 1.0  # tests.conftest.start_tiny_serve's metrics_report_interval_ms
IDLE_GAUGES = (
    "ray_dihs_load_pressure",
    "ray_dihs_queue_depth",
    "ray_dihs_plan_flops_target",
    "ray_dihs_plan_cost_seconds",
    "ray_dihs_cpu_utilization_ratio",
    "ray_dihs_build_info",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import ray

    from tests.conftest import start_tiny_serve, stop_serve

    try:
        yield start_tiny_serve(tmp_path_factory.mktemp("idle"), max_batch_size=4)
    finally:
        if ray.is_initialized():
            stop_serve()


def _gauges(url: str) -> dict[str, list]:
    """Scraped family name -> its samples, for the gauges this test follows."""
    fams = text_string_to_metric_families(requests.get(url, timeout=10).text)
    return {f.name: f.samples for f in fams if f.name in IDLE_GAUGES}


def test_gauges_stay_in_every_scrape_while_idle(served):
    for text in ("good fun", "bad awful plot", "love it"):
        r = requests.post(f"{served['base']}/v1/classify", json={"text": text}, timeout=30)
        assert r.status_code == 200, r.text
    deadline = time.time() + 30
    while set(_gauges(served["metrics"])) != set(IDLE_GAUGES) and time.time() < deadline:
        time.sleep(0.5)
    # idle from here on: five agent TTLs (2 report intervals each) of scrapes, every one complete
    missing, scrapes = [], 0
    end = time.time() + 10 * REPORT_INTERVAL_S
    while time.time() < end:
        got = _gauges(served["metrics"])
        scrapes += 1
        missing += [(round(end - time.time(), 1), name) for name in IDLE_GAUGES if not got.get(name)]
        time.sleep(0.5)
    assert scrapes >= 10 and not missing, (
        f"gauges missing from idle scrapes (seconds before the end, name): {missing}"
    )
    (depth,) = got["ray_dihs_queue_depth"]
    assert depth.value == 0, "nothing waits at an idle replica"
    assert 0 <= got["ray_dihs_load_pressure"][0].value <= 1


def test_build_info_names_version_and_bundle(served):
    from importlib.metadata import version

    from dihs_model.meta import read_meta
    from service.bundle_id import bundle_checksum

    deadline = time.time() + 30
    while not (samples := _gauges(served["metrics"]).get("ray_dihs_build_info")) and time.time() < deadline:
        time.sleep(0.5)
    assert samples, "ray_dihs_build_info is not exported"
    (s,) = samples
    assert s.value == 1
    assert s.labels["version"] == version("dihs-serve")
    assert s.labels["bundle_checksum"] == bundle_checksum(read_meta(served["bundle"]))
    assert s.labels["model"] == "tiny"
    config = requests.get(served["base"] + "/v2/models/tiny/config", timeout=10).json()
    assert s.labels["dtype"] == config["dtype"] == config["dtype_choice"]["dtype"]
