"""A real Prometheus scraping a real Ray Serve: deploy/prometheus's config, rules and the dashboard's PromQL.

Prometheus runs with deploy/prometheus/prometheus.yml rewritten for this test (the Ray metrics port
of the tiny served app, a 1 s scrape interval) and loads deploy/prometheus/alerts.yml as it is.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import free_port, need_debian_tool

pytestmark = pytest.mark.serve

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
N_REQUESTS = 20


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The tiny app on Ray Serve (tests.conftest.start_tiny_serve), stopped even if starting fails
    half-way."""
    import ray

    from tests.conftest import start_tiny_serve, stop_serve

    need_debian_tool("prometheus")
    try:
        yield start_tiny_serve(tmp_path_factory.mktemp("prom-serve"), replicas=2, max_batch_size=8)
    finally:
        if ray.is_initialized():
            stop_serve()


def _scrape_config(metrics_port: int) -> dict:
    """deploy/prometheus/prometheus.yml, pointed at this test's Ray metrics port, scraped every second."""
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(PROM_DIR / f) for f in cfg["rule_files"]]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "ray"]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:8080"]}], (
        "the local config scrapes `dihs serve`'s port"
    )
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    return cfg


@pytest.fixture(scope="module")
def prometheus(served, tmp_path_factory):
    """A Prometheus server on loopback; yields its URL and is terminated at teardown."""
    binary = need_debian_tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    metrics_port = int(served["metrics"].rsplit(":", 1)[1].split("/")[0])
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(_scrape_config(metrics_port)))
    port = free_port()
    log = open(tmp / "prometheus.log", "w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"prometheus exited with {proc.returncode}: "
                    f"{(tmp / 'prometheus.log').read_text()[-2000:]}"
                )
            try:
                if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.time() > deadline:
                pytest.fail("prometheus did not become ready in 30 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _query(url: str, promql: str) -> list[dict]:
    r = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{promql}: {body}"
    return body["data"]["result"]


def _wait_for(url: str, promql: str, ok, timeout_s: float = 60) -> list[dict]:
    """Poll a query until ok(result) holds; returns the last result either way."""
    deadline = time.time() + timeout_s
    while True:
        result = _query(url, promql)
        if ok(result) or time.time() > deadline:
            return result
        time.sleep(1)


def _value(result: list[dict]) -> float:
    return float(result[0]["value"][1]) if result else float("nan")


def _classify(base: str, n: int) -> int:
    texts = ["good fun", "the plot was awful and dull", "love it", "hate the movie"]
    for i in range(n):
        r = requests.post(f"{base}/v1/classify", json={"text": texts[i % len(texts)]}, timeout=30)
        assert r.status_code == 200, r.text
    return n


def _dashboard_queries() -> list[str]:
    dash = json.loads((ROOT / "deploy" / "grafana" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    return [e.replace('=~"$model"', '=~".*"').replace("$__rate_interval", "1m") for e in exprs]


def test_prometheus_scrapes_heads_latency_and_request_totals(served, prometheus):
    # Two waves with a scrape between them, so rate() sees the counters move.
    sent = _classify(served["base"], N_REQUESTS // 2)
    first = _wait_for(prometheus, "sum(ray_dihs_active_heads_count)", lambda r: _value(r) >= sent)
    assert _value(first) >= sent, f"Prometheus never saw the first {sent} texts: {first}"
    sent += _classify(served["base"], N_REQUESTS - sent)

    heads = _wait_for(prometheus, "sum(ray_dihs_active_heads_count)", lambda r: _value(r) == sent)
    assert _value(heads) == sent, heads
    ok = _wait_for(prometheus, 'sum(ray_dihs_requests_total{status="ok"})', lambda r: _value(r) == sent)
    assert _value(ok) == sent, "requests counted across both replicas must add up to the requests sent"

    p95_query = "histogram_quantile(0.95, sum by (le) (rate(ray_dihs_request_duration_seconds_bucket[1m])))"
    p95 = _wait_for(prometheus, p95_query, lambda r: math.isfinite(_value(r)))
    assert p95 and 0 < _value(p95) <= 10, f"p95 latency: {p95}"

    ratio = _query(
        prometheus, "sum(ray_dihs_active_heads_ratio_sum) / sum(ray_dihs_active_heads_ratio_count)"
    )
    assert 0 < _value(ratio) <= 1, ratio
    print(
        f"\nPromQL: active heads count {_value(heads):g}, ok requests {_value(ok):g}, "
        f"p95 latency {_value(p95):.4f} s, mean heads ratio {_value(ratio):.3f}"
    )


def test_alert_rules_load_and_evaluate(prometheus):
    """alerts.yml as the server sees it: every rule loaded and evaluated without error, none firing."""

    def evaluated(groups):
        rules = [r for g in groups for r in g["rules"]]
        return rules and all(r.get("health") == "ok" for r in rules)

    deadline = time.time() + 30
    while True:
        groups = requests.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        if evaluated(groups) or time.time() > deadline:
            break
        time.sleep(1)
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    expected = {
        r["alert"]
        for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }
    assert set(rules) == expected
    assert all(r["health"] == "ok" for r in rules.values()), {n: r.get("lastError") for n, r in rules.items()}
    assert all(r["state"] == "inactive" for r in rules.values()), {n: r["state"] for n, r in rules.items()}


def test_every_dashboard_query_runs(served, prometheus):
    """Each Grafana expression is valid PromQL here; those about CPU-side traffic have data."""
    before = _value(_query(prometheus, "sum(ray_dihs_budget_level_total)"))
    sent = _classify(served["base"], 4) + (0 if math.isnan(before) else before)
    _wait_for(prometheus, "sum(ray_dihs_budget_level_total)", lambda r: _value(r) >= sent)
    # per-replica gauges stay separate series (the dashboard's max/avg by model rely on it)
    cpu = _wait_for(prometheus, "ray_dihs_cpu_utilization_ratio", lambda r: len(r) == 2, timeout_s=30)
    assert len(cpu) == 2, f"one CPU gauge per DIHSModel replica expected: {cpu}"
    print(f"\nlabels of a replica gauge: {sorted(cpu[0]['metric'])}")
    # GPU gauges: GPU machines only; errors, refusals and cascade escalations: none without load;
    # shadow passes and their disagreements: a Ray counter appears at its first increment, which
    # waits for idle time at zero pressure and for a plan to answer differently (test_shadow.py)
    no_data_expected = (
        "gpu",
        'status="server_error"',
        'status="rejected"',
        "escalations",
        "agreement_disagreements",
        "ray_dihs_shadow_",
    )
    empty = []
    for expr in _dashboard_queries():
        result = _query(prometheus, expr)  # asserts the query parses and runs
        if not result and not any(s in expr for s in no_data_expected):
            empty.append(expr)
    assert not empty, f"dashboard queries with no data after traffic: {empty}"
