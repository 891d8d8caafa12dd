r"""Burst against a running service: idle -> burst -> recovery, for dense and adaptive budgets.

    python -m loadtests.burst --url http://127.0.0.1:8000 --concurrency 64 --seconds 20 \
        --out results/burst.json
    python -m loadtests.burst --bundle bundles/default --out results/burst.json   # starts its own, pinned

With --bundle it starts `dihs serve BUNDLE` itself and places it as the sweep does (the model replica
alone on one core, the clients, the HTTP front and the rest of Ray on the others), and stops it after.

Phases per mode: `idle` (one request at a time), `burst` (N concurrent clients for S seconds),
`recovery` (one at a time again for 12 s right after the burst; `full_model_again_after_s` says when
the answers were the full model's again). Modes alternate on the same server
(dense, adaptive, dense, adaptive when --rounds 2) so drift hits both alike. Each request is
one held-out text (--data; default: with --bundle, the task the bundle was trained on, else
election-tweets); its label is checked, so accuracy sits beside latency and FLOPs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import aiohttp

from .common import drive, held_out, task_of


async def _one(session, url, text, mode):
    t0 = time.perf_counter()
    async with session.post(f"{url}/v1/classify", json={"text": text, "budget": {"mode": mode}}) as r:
        status = r.status
        body = await r.json() if status == 200 else None
    dt = time.perf_counter() - t0
    if status != 200:
        return {"status": status, "latency_s": dt}
    res = body["results"][0]
    return {
        "status": 200,
        "latency_s": dt,
        "label": res["label"],
        "ratio": res["flops_ratio"],
        "pressure": res["pressure"],
        "reason": res["reason"],
    }


async def _phase(url, examples, mode, concurrency, seconds, n_max):
    out, i = [], 0
    deadline = time.perf_counter() + seconds
    # aiohttp on uvloop: httpx's per-request cost on the clients' core set the pace in earlier runs
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:

        async def worker(w):
            nonlocal i
            while time.perf_counter() < deadline and i < n_max:
                k = i
                i += 1
                text, label = examples[k % len(examples)]
                r = await _one(client, url, text, mode)
                r["correct"] = r.get("label") == label
                r["example"] = k % len(examples)
                r["t"] = time.perf_counter()
                out.append(r)

        t0 = time.perf_counter()
        await asyncio.gather(*[worker(w) for w in range(concurrency)])
        wall = time.perf_counter() - t0
    return out, wall


def _summary(rows, wall):
    ok = [r for r in rows if r["status"] == 200]
    lat = sorted(r["latency_s"] * 1e3 for r in ok)
    p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None
    return {
        "requests": len(rows),
        "errors": len(rows) - len(ok),
        "rps": round(len(ok) / wall, 2),
        "p50_ms": round(statistics.median(lat), 1) if lat else None,
        "p95_ms": round(p95, 1) if p95 else None,
        "mean_flops_ratio": round(statistics.mean(r["ratio"] for r in ok), 4) if ok else None,
        "mean_pressure": round(statistics.mean(r["pressure"] for r in ok), 4) if ok else None,
        "accuracy": round(sum(r["correct"] for r in ok) / len(ok), 4) if ok else None,
        "sample_reasons": sorted({r["reason"] for r in ok})[:3],
    }


RECOVERY_S = 12.0  # one request at a time after the burst, for this long


def _full_again(rows, t0) -> float | None:
    """Seconds from the burst's end to the first answer after which every answer ran the full
    model (FLOPs ratio 1.0); None if the recovery phase ended before that."""
    ok = [r for r in rows if r["status"] == 200]
    for k, r in enumerate(ok):
        if all(x["ratio"] == 1.0 for x in ok[k:]):
            return round(r["t"] - r["latency_s"] - t0, 2)
    return None


def paired_burst_accuracy(dense_rows, auto_rows) -> dict:
    """Accuracy of both modes' bursts on the same examples: each example's first answer in each mode,
    over the examples both answered (the faster mode answers more, and some examples twice)."""

    def first(rows):
        out = {}
        for r in rows:
            if r["status"] == 200:
                out.setdefault(r["example"], r["correct"])
        return out

    d, a = first(dense_rows), first(auto_rows)
    both = sorted(d.keys() & a.keys())
    if not both:
        return {"examples": 0}

    def acc(m):
        return round(sum(m[k] for k in both) / len(both), 4)

    return {
        "examples": len(both),
        "dense_accuracy": acc(d),
        "adaptive_accuracy": acc(a),
        "adaptive_minus_dense_points": round(100 * (acc(a) - acc(d)), 2),
    }


async def run(url, concurrency, seconds, rounds, data=("election-tweets", "text", "label")):
    ex = held_out(*data, shuffle=False)
    result = {"url": url, "data": data[0], "concurrency": concurrency, "burst_seconds": seconds, "rounds": []}
    for rnd in range(rounds):
        burst_rows, burst_rps = {}, {}
        for mode in ("dense", "auto"):
            phases = {}
            for name, conc, secs, n in (
                ("idle", 1, 8, 40),
                ("burst", concurrency, seconds, 10**9),
                ("recovery", 1, RECOVERY_S, 10**9),
            ):
                t_start = time.perf_counter()
                rows, wall = await _phase(url, ex, mode, conc, secs, n)
                phases[name] = _summary(rows, wall)
                if name == "burst":
                    burst_rows[mode], burst_rps[mode] = rows, phases[name]["rps"]
                if name == "recovery":
                    phases[name]["full_model_again_after_s"] = _full_again(rows, t_start)
                print(
                    f"round {rnd} {mode:>5} {name:>8}: "
                    f"{json.dumps({k: v for k, v in phases[name].items() if k != 'sample_reasons'})}",
                    flush=True,
                )
            result["rounds"].append(
                {"round": rnd, "mode": "adaptive" if mode == "auto" else "dense", "phases": phases}
            )
            await asyncio.sleep(3)
        paired = paired_burst_accuracy(burst_rows["dense"], burst_rows["auto"])
        paired["adaptive_over_dense_texts_per_s"] = (
            round(burst_rps["auto"] / burst_rps["dense"], 3) if burst_rps["dense"] else None
        )
        result.setdefault("paired_bursts", []).append({"round": rnd, **paired})
        print(f"round {rnd} burst, same examples: {json.dumps(paired)}", flush=True)
    return result


def _with_service(a, data: tuple[str, str, str]) -> dict:
    from .placement import pin_client, pin_service, split_cores
    from .sweep import Service, session_pids

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    placement = {"client": pin_client()}
    service = Service(a.bundle, a.slo_ms, out.with_suffix(".serve.log"))
    try:
        service.wait_ready()
        placement["service"] = (
            pin_service(session_pids(service.proc.pid)) if split_cores() is not None else "not pinned"
        )
        print(f"placement: {placement}", flush=True)
        res = drive(run(service.url, a.concurrency, a.seconds, a.rounds, data))
    finally:
        service.stop()
    return {**res, "bundle": a.bundle, "slo_ms": a.slo_ms, "placement": placement}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="a running service (without --bundle)")
    ap.add_argument(
        "--bundle", help="start `dihs serve BUNDLE` for the run, the replica pinned to a core of its own"
    )
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--slo-ms", type=float, default=250.0, help="with --bundle: the service's --slo-ms")
    ap.add_argument("--out", default="results/burst.json")
    ap.add_argument(
        "--data",
        help="texts to send: a built-in task or a CSV/TSV/JSONL file, its held-out split "
        "(default: with --bundle the bundle's training task, else election-tweets)",
    )
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--label-column", default="label")
    a = ap.parse_args()
    data = task_of(a.data, a.text_column, a.label_column, a.bundle)
    if a.bundle:
        res = _with_service(a, data)
    else:
        res = drive(run(a.url, a.concurrency, a.seconds, a.rounds, data))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
