"""Where a request's time goes at saturation, next to the model's own throughput, in one run.

    python -m loadtests.path_bench BUNDLE --out results/path [--rounds 3] [--seconds 12] [--quick]

One run, variants interleaved round by round (A B C ... A B C ...), on this machine; within a round
each level's model-only runs come right before the service at that level (and the model's batch-1 time
right before the idle client), so that the ratios compare runs seconds apart, not minutes: the speed of
this shared machine drifts by tens of percent over minutes.
  model     the bundle's model in this process, torch pinned to --threads: the held-out texts at
            batch 1 and at --batch, full model and the 25% level (tokenize + forward, and the
            forward alone), the texts the service is sent;
  service   `dihs serve` (one replica, --threads torch threads, batches of --batch) saturated by
            --clients closed-loop clients sending one-text requests, and by --clients-16 clients
            sending 16-text requests, at the full model (mode dense) and at the 25% level
            (mode fixed, max_flops_ratio 0.25); every answer's Server-Timing header says where its
            time went inside the replica (queue, tokenize, decide, forward, results, serialize,
            app = all of it); client time minus app is the HTTP front and the HTTP on the way; the
            replica process's CPU time per text (psutil) beside the model's own time per text
            says what share of the replica's CPU the model gets, whatever the machine's speed;
  naive     loadtests.naive_peer (one uvicorn process, FastAPI, the same weights through plain
            transformers, no batching, same torch threads) under the same one-text clients;
  idle      one client, one one-text request at a time, against the model's batch-1 time, measured
            twice: back to back, and paced (as many held-out texts as the idle client got answered,
            one started at the idle client's request rate, the core idle in between, as the
            replica's is between idle requests).

IDLE_PACE: on a shared machine a forward that follows an idle gap is slower than one that follows
another forward: here the last-level cache (300 MB) is shared with other tenants, and the weights
(42 MB in float32 for the default bundle) are likely gone from it after a few idle milliseconds.
An idle service pays the paced time on every request, so idle latency minus the paced time is what
the request path adds; both differences are reported, and the paced over back-to-back ratio says
how large the effect was in the run.

Writes OUT/path.json (every round's figures, medians and spreads, ratios) and OUT/path.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

LEVELS = {"full": {"mode": "dense"}, "l25": {"mode": "fixed", "max_flops_ratio": 0.25}}  # l25: the 25% level
SERVER_PHASES = ("queue", "tokenize", "decide", "forward", "results", "serialize")


def _median(xs):
    return statistics.median(xs) if xs else None


def _spread(xs):
    return [min(xs), max(xs)] if xs else None


# --- model only -------------------------------------------------------------------------------


def model_only(engine, texts: list[str], batch: int, budget: dict, every_s: float = 0.0) -> dict:
    """texts/s of the model's own work on `texts` in batches: Engine.run's tokenize and forward
    phases (its budget decision and result dicts are timed apart and left out). Batches run back to
    back, or (every_s > 0) one starting every `every_s` seconds with the core idle in between."""
    from service.routing import Item

    items = [Item(t, budget["mode"], 0.0, budget.get("max_flops_ratio", 1.0)) for t in texts]
    spent = {}
    for i in range(0, len(items), batch):
        timing: dict = {}
        started = time.perf_counter()
        engine.run(items[i : i + batch], timing)
        if every_s:
            time.sleep(max(0.0, started + every_s - time.perf_counter()))
        for k, v in timing.items():
            spent[k] = spent.get(k, 0.0) + v
    n = len(items)
    return {
        "texts_per_s": n / (spent["tokenize"] + spent["forward"]),
        "forward_only_texts_per_s": n / spent["forward"],
        "ms_per_batch": (spent["tokenize"] + spent["forward"]) / -(-n // batch) * 1e3,
        "decide_and_results_ms_per_batch": (spent["decide"] + spent["results"]) / -(-n // batch) * 1e3,
    }


# --- closed-loop clients -----------------------------------------------------------------------


async def _closed_loop(url: str, bodies, clients: int, seconds: float, warmup_s: float, timing: bool) -> dict:
    """`clients` closed-loop clients posting `bodies` for warmup_s + seconds; what they got in the last
    `seconds`. aiohttp with bodies encoded once: the clients share one core with the HTTP front, and
    httpx there took most of that core at ~120 requests/s, so it, not the replica, set the pace (the
    replica's batches held 1-6 texts with 32 clients waiting)."""
    import aiohttp

    encoded = [(json.dumps(body).encode(), n) for body, n in bodies]
    headers = {"content-type": "application/json"}
    rows, errors, sample, served = [], {}, {}, [0]
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup_s, t_start + warmup_s + seconds
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def worker(w: int):
            k = w
            while time.perf_counter() < t_end:
                body, n_texts = encoded[k % len(encoded)]
                k += clients
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as r:
                    raw = await r.read()
                    status, server_timing = r.status, r.headers.get("server-timing")
                t1 = time.perf_counter()
                served[0] += n_texts if status == 200 else 0
                if t0 < t_measure or t1 > t_end:
                    continue
                if status != 200:
                    errors[status] = errors.get(status, 0) + 1
                    sample.setdefault(status, raw[:300].decode(errors="replace"))
                    continue
                row = {"texts": n_texts, "total": t1 - t0}
                if timing and server_timing:
                    for part in server_timing.split(","):
                        name, _, dur = part.strip().partition(";dur=")
                        row[name] = float(dur) / 1e3
                rows.append(row)

        await asyncio.gather(*[worker(w) for w in range(clients)])
    texts = sum(r["texts"] for r in rows)
    out = {
        "texts_per_s": texts / seconds,
        "requests": len(rows),
        "texts_served_total": served[0],
        "errors": errors,
        "error_sample": sample,
        "latency_p50_ms": _median([r["total"] * 1e3 for r in rows]),
    }
    if timing and rows and "app" in rows[0]:
        parts = {p: _median([r.get(p, 0.0) * 1e3 for r in rows]) for p in SERVER_PHASES}
        app = _median([r["app"] * 1e3 for r in rows])
        parts["in_replica_other"] = max(0.0, app - sum(parts.values()))  # routing, validation, batcher
        parts["proxy_and_http"] = _median([(r["total"] - r["app"]) * 1e3 for r in rows])
        out["breakdown_ms"] = parts
    return out


def _bodies(texts: list[str], per_request: int, budget: dict | None, naive: bool = False):
    if naive:
        return [({"text": t}, 1) for t in texts]
    if per_request == 1:
        return [({"text": t, "budget": budget}, 1) for t in texts]
    return [
        ({"texts": texts[i : i + per_request], "budget": budget}, per_request)
        for i in range(0, len(texts) - per_request + 1, per_request)
    ]


# --- the run -----------------------------------------------------------------------------------


class Peer:
    def __init__(self, bundle: str, threads: int, log: Path):
        from service.ports import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadtests.naive_peer",
                bundle,
                "--port",
                str(self.port),
                "--threads",
                str(threads),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the naive peer exited with {self.proc.returncode} (log {self.log.name})")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the naive peer did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


def _replica_pid(service) -> int | None:
    from .placement import replica_pids
    from .sweep import session_pids

    return next(iter(replica_pids(session_pids(service.proc.pid))), None)


class _cpu_of:
    """CPU seconds (user + system, every thread) a process spends inside the block."""

    def __init__(self, pid: int | None):
        self.pid, self.spent = pid, None

    def _now(self) -> float | None:
        import psutil

        if self.pid is None:  # no replica process found (not pinned): no figure
            return None
        try:
            t = psutil.Process(self.pid).cpu_times()
        except psutil.Error:
            return None
        return t.user + t.system

    def __enter__(self):
        self._start = self._now()
        return self

    def __exit__(self, *exc):
        end = self._now()
        if self._start is not None and end is not None:
            self.spent = end - self._start

    def ms_per(self, n: int) -> float | None:
        return None if self.spent is None or not n else self.spent / n * 1e3


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run(a) -> dict:
    import torch

    from dihs_model.bundle import load_bundle
    from service.engine import Engine
    from service.load import LoadConfig, LoadTracker
    from service.metrics import NullMetrics

    from .common import drive, held_out
    from .placement import on_replica_core, pin_client, pin_server, pin_service, split_cores
    from .sweep import Service, session_pids

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    bundle = load_bundle(a.bundle)
    spec = a.data or bundle.meta.get("data", {}).get("spec", "election-tweets")
    texts = [t for t, _ in held_out(spec)][: a.texts]
    engine = Engine(bundle, "bench", LoadTracker(LoadConfig(0.25, 32)), NullMetrics(), "cpu")

    env_threads = {
        "DIHS_TORCH_THREADS": str(a.threads),
        "DIHS_MAX_BATCH_SIZE": str(a.batch),
        "DIHS_REPLICA_CPUS": str(a.threads),
    }
    os.environ.update(env_threads)  # the child `dihs serve` reads its settings from DIHS_*
    os.environ.update(dict(kv.split("=", 1) for kv in a.serve_env))  # e.g. Ray Serve's own options
    placement = {"client": pin_client()}  # this process, its clients and what it starts: the client cores
    service = Service(a.bundle, a.slo_ms, out / "serve.log")
    peer = Peer(a.bundle, a.threads, out / "naive.log")
    rounds = []
    try:
        service.wait_ready()
        peer.wait_ready()
        pinned = split_cores() is not None  # (on Linux; session_pids elsewhere stops the service)
        placement["service"] = pin_service(session_pids(service.proc.pid)) if pinned else "not pinned"
        placement["naive_peer"] = pin_server(peer.proc.pid)
        placement["model_only"] = "this process's model runs on the replica core" if pinned else "not pinned"
        print(f"placement: {placement}", flush=True)
        svc, naive = f"{service.url}/v1/classify", f"{peer.url}/v1/classify"
        for url, bodies in (
            (svc, _bodies(texts, 1, LEVELS["full"])),
            (svc, _bodies(texts, 16, LEVELS["l25"])),
            (naive, _bodies(texts, 1, None, naive=True)),
        ):
            drive(_closed_loop(url, bodies, 4, 3.0, 0.0, False))  # warm every path once
        replica = _replica_pid(service) if pinned else None
        for r in range(a.rounds):
            row: dict = {"round": r, "load_average": _load_average(), "model": {}, "service": {}}
            for name, budget in LEVELS.items():
                with on_replica_core():
                    for b in (1, a.batch):
                        row["model"][f"{name}_b{b}"] = model_only(engine, texts, b, budget)
                if name == "full":  # idle latency next to the batch-1 time it is compared with
                    row["idle"] = drive(
                        _closed_loop(svc, _bodies(texts, 1, budget), 1, a.seconds / 2, 1.0, True)
                    )
                    if row["idle"]["requests"]:
                        with on_replica_core():  # batch-1 work at the idle client's pace (IDLE_PACE)
                            row["model"]["full_b1_paced"] = model_only(
                                engine,
                                texts[: row["idle"]["requests"]],
                                1,
                                budget,
                                1.0 / row["idle"]["texts_per_s"],
                            )
                for per_request, clients in ((1, a.clients), (16, a.clients_16)):
                    with _cpu_of(replica) as cpu:
                        res = drive(
                            _closed_loop(
                                svc, _bodies(texts, per_request, budget), clients, a.seconds, a.warmup, True
                            )
                        )
                    res["replica_cpu_ms_per_text"] = cpu.ms_per(res["texts_served_total"])
                    row["service"][f"{name}_{per_request}text"] = res
            row["naive"] = drive(
                _closed_loop(
                    naive, _bodies(texts, 1, None, naive=True), a.clients, a.seconds, a.warmup, False
                )
            )
            rounds.append(row)
            print(_round_line(row), flush=True)
    finally:
        peer.stop()
        service.stop()
    (out / "path.json").write_text(json.dumps({"rounds": rounds}, indent=2))  # kept if the summary fails
    result = {
        "bundle": str(a.bundle),
        "data": spec,
        "serve_env": a.serve_env,
        "texts": len(texts),
        "threads": a.threads,
        "batch": a.batch,
        "placement": placement,
        "clients": a.clients,
        "clients_16": a.clients_16,
        "seconds": a.seconds,
        "rounds": rounds,
        "cpu_count": os.cpu_count(),
        "summary": summarize(rounds, a.batch),
    }
    (out / "path.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "path.png")
    return result


def _round_line(row: dict) -> str:
    s, m = row["service"], row["model"]
    return (
        f"round {row['round']}: service full {s['full_1text']['texts_per_s']:.1f} / model b16 "
        f"{m['full_b16']['texts_per_s']:.1f} texts/s; l25 {s['l25_1text']['texts_per_s']:.1f} / "
        f"{m['l25_b16']['texts_per_s']:.1f}; naive {row['naive']['texts_per_s']:.1f}; idle p50 "
        f"{row['idle']['latency_p50_ms']:.1f} ms vs model b1 {m['full_b1']['ms_per_batch']:.1f} ms "
        f"(paced {m.get('full_b1_paced', {}).get('ms_per_batch', float('nan')):.1f} ms)"
    )


def summarize(rounds: list[dict], batch: int) -> dict:
    """Per-round ratios (so drift between rounds cancels), then their median and spread."""

    def per_round(f):
        xs = []
        for r in rounds:
            try:
                xs.append(f(r))
            except (ZeroDivisionError, TypeError, KeyError):  # a variant that served nothing (its errors are
                pass  # in the rounds), no /proc figure, or no paced run (no idle request answered)
        return {"median": _median(xs), "spread": _spread(xs), "rounds": xs}

    b = f"b{batch}"
    return {
        "service_over_model_full": per_round(
            lambda r: r["service"]["full_1text"]["texts_per_s"] / r["model"][f"full_{b}"]["texts_per_s"]
        ),
        "service_over_model_l25": per_round(
            lambda r: r["service"]["l25_1text"]["texts_per_s"] / r["model"][f"l25_{b}"]["texts_per_s"]
        ),
        "service_over_model_forward_only_full": per_round(
            lambda r: (
                r["service"]["full_1text"]["texts_per_s"]
                / r["model"][f"full_{b}"]["forward_only_texts_per_s"]
            )
        ),
        "level_ratio_service": per_round(
            lambda r: r["service"]["l25_1text"]["texts_per_s"] / r["service"]["full_1text"]["texts_per_s"]
        ),
        "level_ratio_model": per_round(
            lambda r: r["model"][f"l25_{b}"]["texts_per_s"] / r["model"][f"full_{b}"]["texts_per_s"]
        ),
        "level_ratio_service_over_model": per_round(
            lambda r: (
                (r["service"]["l25_1text"]["texts_per_s"] / r["service"]["full_1text"]["texts_per_s"])
                / (r["model"][f"l25_{b}"]["texts_per_s"] / r["model"][f"full_{b}"]["texts_per_s"])
            )
        ),
        "service_full_over_naive": per_round(
            lambda r: r["service"]["full_1text"]["texts_per_s"] / r["naive"]["texts_per_s"]
        ),
        "service_l25_over_naive": per_round(
            lambda r: r["service"]["l25_1text"]["texts_per_s"] / r["naive"]["texts_per_s"]
        ),
        "service_16text_over_model_full": per_round(
            lambda r: r["service"]["full_16text"]["texts_per_s"] / r["model"][f"full_{b}"]["texts_per_s"]
        ),
        "model_share_of_replica_cpu_full": per_round(
            lambda r: (
                1e3
                / r["model"][f"full_{b}"]["texts_per_s"]
                / r["service"]["full_1text"]["replica_cpu_ms_per_text"]
            )
        ),
        "model_share_of_replica_cpu_l25": per_round(
            lambda r: (
                1e3
                / r["model"][f"l25_{b}"]["texts_per_s"]
                / r["service"]["l25_1text"]["replica_cpu_ms_per_text"]
            )
        ),
        "idle_p50_minus_model_b1_ms": per_round(
            lambda r: r["idle"]["latency_p50_ms"] - r["model"]["full_b1"]["ms_per_batch"]
        ),
        "idle_p50_minus_model_b1_paced_ms": per_round(
            lambda r: r["idle"]["latency_p50_ms"] - r["model"]["full_b1_paced"]["ms_per_batch"]
        ),
        "model_b1_paced_over_back_to_back": per_round(
            lambda r: r["model"]["full_b1_paced"]["ms_per_batch"] / r["model"]["full_b1"]["ms_per_batch"]
        ),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds, b = result["rounds"], f"b{result['batch']}"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    bars = [
        ("model full " + b, lambda r: r["model"][f"full_{b}"]["texts_per_s"]),
        ("service full", lambda r: r["service"]["full_1text"]["texts_per_s"]),
        ("service full\n16-text req", lambda r: r["service"]["full_16text"]["texts_per_s"]),
        ("model l25 " + b, lambda r: r["model"][f"l25_{b}"]["texts_per_s"]),
        ("service l25", lambda r: r["service"]["l25_1text"]["texts_per_s"]),
        ("naive peer", lambda r: r["naive"]["texts_per_s"]),
        ("model full b1", lambda r: r["model"]["full_b1"]["texts_per_s"]),
        ("model full b1\nidle-paced", lambda r: r["model"]["full_b1_paced"]["texts_per_s"]),
    ]
    for i, (name, f) in enumerate(bars):
        try:
            xs = [f(r) for r in rounds]
        except KeyError:  # (no idle request answered: no paced figure)
            continue
        ax1.bar(
            i,
            statistics.median(xs),
            color="C0" if name.startswith("model") else "C2" if "naive" in name else "C1",
        )
        ax1.plot([i] * len(xs), xs, "k.", ms=4)
    ax1.set_xticks(range(len(bars)), [n for n, _ in bars], rotation=30, ha="right", fontsize=8)
    ax1.set_ylabel("texts/s (median of rounds; dots: each round)")
    ax1.set_title(f"saturation, one replica, {result['threads']} torch thread(s)")
    variants = [v for v in ("full_1text", "l25_1text", "full_16text", "l25_16text")]
    phases = ["proxy_and_http", "in_replica_other", *SERVER_PHASES]
    bottom = [0.0] * len(variants)
    for k, ph in enumerate(phases):
        vals = [statistics.median(r["service"][v]["breakdown_ms"][ph] for r in rounds) for v in variants]
        ax2.bar(range(len(variants)), vals, bottom=bottom, label=ph, color=f"C{k}")
        bottom = [x + y for x, y in zip(bottom, vals)]
    ax2.set_xticks(range(len(variants)), [v.replace("_", " ") for v in variants], fontsize=8)
    ax2.set_ylabel("ms per request (medians)")
    ax2.set_title("where a request's time goes (service, saturated)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", help="texts to send (default: the bundle's training task, held-out split)")
    ap.add_argument("--texts", type=int, default=512, help="held-out texts used (default 512)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads of the replica, the model runs, the peer"
    )
    ap.add_argument(
        "--batch", type=int, default=16, help="the replica's max batch size = the model-only batch"
    )
    ap.add_argument("--clients", type=int, default=32, help="closed-loop clients, one-text requests")
    ap.add_argument("--clients-16", type=int, default=4, help="closed-loop clients, 16-text requests")
    ap.add_argument("--seconds", type=float, default=12.0, help="measured seconds per variant and round")
    ap.add_argument(
        "--warmup", type=float, default=3.0, help="seconds before measuring, per variant and round"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slo-ms", type=float, default=250.0)
    ap.add_argument(
        "--serve-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the started service (Ray Serve options), repeatable",
    )
    ap.add_argument("--quick", action="store_true", help="1 round of 4 s per variant, 128 texts: a smoke run")
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.seconds, a.warmup, a.texts = 1, 4.0, 1.0, 128
    result = run(a)
    for k, v in result["summary"].items():
        print(f"{k:>40}: {v['median']:.3f}  [{v['spread'][0]:.3f}, {v['spread'][1]:.3f}]")


if __name__ == "__main__":
    main()
