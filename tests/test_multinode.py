"""A real two-node Ray cluster on this machine: `ray start --head` and `ray start --address` (two
raylets, each with its own metrics export port), `serve deploy` of deploy/serve_config.yaml rendered
for the test (two replicas, one per node: each node offers one CPU), traffic, and a real Prometheus
scraping both nodes: the summed dihs_* counters equal the requests and texts sent, and the
dashboard's aggregations over the counters give the same totals. Then the second node is killed
under traffic (nothing hangs) and started again (both replicas serve again).

The cluster lives in its own --temp-dir, so `ray.init()` elsewhere on the machine never finds it;
teardown ends only the processes whose command line names that folder, by pid."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import free_port, need_debian_tool
from tests.test_prometheus_e2e import _dashboard_queries, _query, _scrape_config, _value, _wait_for

pytestmark = pytest.mark.serve

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.sys.executable).parent
TEXTS_PER_REQUEST = (1, 3, 2, 4)
N_REQUESTS = 40


def _ports(names: str) -> dict[str, int]:
    return {n: free_port() for n in names.split()}


def _ray_start(args: list[str], env: dict) -> None:
    r = subprocess.run(
        [str(BIN / "ray"), "start", *args], env=env, capture_output=True, text=True, timeout=180
    )
    assert r.returncode == 0, f"ray start {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


def _stop_cluster(temp_dir: str) -> None:
    """End the processes of this cluster only: those whose command line names its temp dir."""
    import psutil

    mine = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in p.info["cmdline"] or []):
                mine.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    for p in mine:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    gone, alive = psutil.wait_procs(mine, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def render_config(bundle: Path, http_port: int) -> dict:
    """deploy/serve_config.yaml for this test: the tiny bundle, two fixed replicas, loopback HTTP."""
    cfg = yaml.safe_load((ROOT / "deploy" / "serve_config.yaml").read_text())
    cfg["http_options"] = {"host": "127.0.0.1", "port": http_port}
    (app,) = cfg["applications"]
    app["args"] = {**app["args"], "bundle": str(bundle), "model_name": "tiny"}
    (dep,) = app["deployments"]
    dep.pop("autoscaling_config")
    dep["num_replicas"] = 2
    return cfg


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from dihs_model.bundle import save_bundle
    from service.app import SLOW_MACHINE_ENV
    from tests.conftest import tiny_calibrated_bundle

    tmp = tmp_path_factory.mktemp("multinode")
    bundle = save_bundle(tiny_calibrated_bundle(tmp), tmp / "bundle")
    temp_dir = tempfile.mkdtemp(prefix="rmn", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head = _ports("gcs dash node obj agent agent_grpc runtime metrics client")
    worker = _ports("node obj agent agent_grpc runtime metrics")
    http_port = free_port()
    env = {**os.environ, **SLOW_MACHINE_ENV, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_SERVE_ENABLE_HA_PROXY", None)  # `serve deploy` on a cluster: Ray's proxy, as the manifests

    def node_args(p: dict) -> list[str]:
        return [
            "--num-cpus=1",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            f"--node-manager-port={p['node']}",
            f"--object-manager-port={p['obj']}",
            f"--dashboard-agent-listen-port={p['agent']}",
            f"--dashboard-agent-grpc-port={p['agent_grpc']}",
            f"--runtime-env-agent-port={p['runtime']}",
            f"--metrics-export-port={p['metrics']}",
            "--min-worker-port=0",
            "--max-worker-port=0",
        ]

    try:
        _ray_start(
            [
                "--head",
                f"--port={head['gcs']}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={head['dash']}",
                f"--ray-client-server-port={head['client']}",
                '--system-config={"metrics_report_interval_ms": 1000}',
                *node_args(head),
            ],
            env,
        )
        join = [f"--address=127.0.0.1:{head['gcs']}", *node_args(worker)]
        _ray_start(join, env)
        yield {
            "env": env,
            "join": join,
            "worker_node_port": worker["node"],
            "bundle": bundle,
            "http": f"http://127.0.0.1:{http_port}",
            "http_port": http_port,
            "dashboard": f"http://127.0.0.1:{head['dash']}",
            "metrics_ports": [head["metrics"], worker["metrics"]],
            "tmp": tmp,
        }
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _running_replicas(cluster) -> list[dict]:
    try:
        apps = requests.get(f"{cluster['dashboard']}/api/serve/applications/", timeout=10).json()[
            "applications"
        ]
        return [r for r in apps["dihs"]["deployments"]["DIHSModel"]["replicas"] if r["state"] == "RUNNING"]
    except (requests.RequestException, KeyError, json.JSONDecodeError):
        return []


@pytest.fixture(scope="module")
def deployed(cluster):
    config = cluster["tmp"] / "serve_config.yaml"
    config.write_text(yaml.safe_dump(render_config(cluster["bundle"], cluster["http_port"])))
    r = subprocess.run(
        [str(BIN / "serve"), "deploy", str(config), "-a", cluster["dashboard"]],
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 0, f"serve deploy failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    replicas = _wait_running(cluster, 2, 240)
    assert len(replicas) == 2, f"the two replicas did not start in 240 s: {replicas}"
    return replicas


def _wait_running(cluster, n: int, timeout_s: float) -> list[dict]:
    deadline, replicas = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        replicas = _running_replicas(cluster)
        if len(replicas) == n:
            try:
                if requests.get(f"{cluster['http']}/v2/health/ready", timeout=10).status_code == 200:
                    break
            except requests.RequestException:
                pass
        time.sleep(2)
    return replicas


@pytest.fixture(scope="module")
def prometheus(cluster):
    binary = need_debian_tool("prometheus")
    tmp = cluster["tmp"] / "prometheus"
    tmp.mkdir()
    cfg = _scrape_config(cluster["metrics_ports"][0])
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "ray"]
    job["static_configs"] = [
        {"targets": [f"127.0.0.1:{p}" for p in cluster["metrics_ports"]]}
    ]  # one per node
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    log = open(tmp / "prometheus.log", "w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp / "prometheus.log").read_text()[
                -2000:
            ]
            time.sleep(0.5)
        up = _wait_for(url, "sum(up)", lambda r: _value(r) == 2, timeout_s=60)
        assert _value(up) == 2, (
            f"Prometheus does not reach both nodes' metrics: {up} "
            f"{(tmp / 'prometheus.log').read_text()[-2000:]}"
        )
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def test_two_nodes_one_replica_each_and_metric_totals_exact(cluster, deployed, prometheus):
    nodes = {r["node_id"] for r in deployed}
    assert len(nodes) == 2, f"both replicas on one node: {deployed}"
    texts = 0
    for i in range(N_REQUESTS):
        n = TEXTS_PER_REQUEST[i % len(TEXTS_PER_REQUEST)]
        r = requests.post(
            f"{cluster['http']}/v1/classify",
            json={"texts": [f"good fun {i} {k}" for k in range(n)]},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        texts += n

    ok = _wait_for(prometheus, 'sum(ray_dihs_requests_total{status="ok"})', lambda r: _value(r) == N_REQUESTS)
    levels = _wait_for(prometheus, "sum(ray_dihs_budget_level_total)", lambda r: _value(r) == texts)
    heads = _wait_for(prometheus, "sum(ray_dihs_active_heads_count)", lambda r: _value(r) == texts)
    per_node = _query(prometheus, 'sum by (instance) (ray_dihs_requests_total{status="ok"})')
    print(
        f"\n2 nodes {sorted(nodes)}: sent {N_REQUESTS} requests, {texts} texts; Prometheus: ok requests "
        f"{_value(ok):g}, texts by level {_value(levels):g}, heads samples {_value(heads):g}; per node "
        f"{ {x['metric']['instance']: float(x['value'][1]) for x in per_node} }"
    )
    assert _value(ok) == N_REQUESTS and _value(levels) == texts and _value(heads) == texts
    assert len(per_node) == 2 and all(float(x["value"][1]) > 0 for x in per_node), per_node

    # the dashboard's aggregations over the raw counters (its rate() over the whole run) give the same totals
    totals = {}
    for expr in _dashboard_queries():
        counter = re.fullmatch(
            r"sum(?: by \((\w+)\))? \(rate\((ray_dihs_\w+_total)(\{[^}]*\})\[1m\]\)\)", expr
        )
        if counter:
            by, name, sel = counter.groups()
            result = _query(prometheus, f"sum{f' by ({by})' if by else ''} ({name}{sel})")
            totals[expr] = sum(float(x["value"][1]) for x in result)
        else:
            _query(prometheus, expr)  # every other panel's query runs
    print(f"dashboard counter panels, as totals: {totals}")
    level_panels = [v for e, v in totals.items() if "budget_level_total" in e]
    assert level_panels and all(v == texts for v in level_panels), totals
    assert any(v == N_REQUESTS for e, v in totals.items() if "requests_total" in e), totals


def _kill_node(node_manager_port: int) -> int:
    """SIGKILL the raylet of the node with this node-manager port and every process under it."""
    import psutil

    (raylet,) = [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "raylet"
        and f"--node_manager_port={node_manager_port}" in (p.info["cmdline"] or [])
    ]
    procs = [raylet, *raylet.children(recursive=True)]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=15)
    return len(procs)


def test_second_node_killed_under_traffic_nothing_hangs_and_capacity_returns(cluster, deployed):
    """The worker node dies (raylet and all its processes SIGKILLed) while 4 clients send requests:
    every request is answered or fails fast, none hangs; the node rejoins and both replicas serve."""
    import threading

    outcomes, stop = [], threading.Event()

    def client(k: int):
        with requests.Session() as s:
            while not stop.is_set():
                t = time.monotonic()
                try:
                    code = s.post(
                        f"{cluster['http']}/v1/classify", json={"text": f"good fun {k}"}, timeout=30
                    ).status_code
                except requests.Timeout:
                    code = "hung"
                except requests.RequestException:
                    code = "connection"
                outcomes.append((code, time.monotonic() - t))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    killed = _kill_node(cluster["worker_node_port"])
    time.sleep(20)  # Ray notices the dead node; the replica left on the head carries the load
    during = list(outcomes)
    t_join = time.monotonic()
    _ray_start(cluster["join"], cluster["env"])
    back = _wait_running(cluster, 2, 180)
    rejoined_s = time.monotonic() - t_join
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    after = outcomes[len(during) :]
    counts = {}
    for code, _ in outcomes:
        counts[code] = counts.get(code, 0) + 1
    slowest_failure = max((dt for code, dt in outcomes if code != 200), default=0.0)
    print(
        f"\nworker node killed ({killed} processes): {len(outcomes)} requests {counts}; slowest failure "
        f"{slowest_failure:.1f} s; back to {len(back)} replicas on {len({r['node_id'] for r in back})} "
        f"nodes {rejoined_s:.0f} s after the node was started again"
    )
    assert "hung" not in counts, counts
    assert counts.get(200, 0) > 0.9 * len(outcomes), counts
    assert len(back) == 2 and len({r["node_id"] for r in back}) == 2, back
    assert after and all(code == 200 for code, _ in after[-8:]), after[-8:]
