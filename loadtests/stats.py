"""From per-request events to one row per load stage; Locust's own CSV totals. Pure functions.

The locustfile writes one event per HTTP request (EVENT_FIELDS). A stage's row covers the
requests that completed inside its window, after a settling time that lets the queue reach its
new level: throughput is successful responses per second of that window, latency percentiles
are over successful responses, error_rate counts every non-2xx or connection error (503
back-pressure included, and also reported alone as rejected_rate).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

from .shapes import Plan

EVENT_FIELDS = (
    "t",
    "users",
    "route",
    "budget",
    "status",
    "ok",
    "latency_ms",
    "correct",
    "flops_ratio",
    "pressure",
    "example",
    "segment",
    "lag_ms",
    "heads_ratio",
    "retry_after",
)  # the last four: open-loop runs
ROW_FIELDS = (
    "mode",
    "round",
    "stage",
    "users",
    "offered_rps",
    "requests",
    "rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "error_rate",
    "rejected_rate",
    "accuracy",
    "flops_ratio",
    "pressure",
    "rps_vs_dense",
    "accuracy_vs_dense",
)
METRICS = (
    "rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "error_rate",
    "rejected_rate",
    "accuracy",
    "flops_ratio",
    "pressure",
    "rps_vs_dense",
    "accuracy_vs_dense",
)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _num(x) -> float | None:
    if x is None or x == "":
        return None
    return float(x)


def read_events(path: Path) -> list[dict]:
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh))


def stage_rows(events: list[dict], plan: Plan, settle_s: float, user_rate: float = 0.0) -> list[dict]:
    """One row per stage of `plan` from events (dicts with EVENT_FIELDS; values may be strings)."""
    rows = []
    for s in plan.stages:
        lo, hi = s.start + min(settle_s, 0.5 * (s.end - s.start)), s.end
        inside = [e for e in events if lo <= float(e["t"]) < hi]
        ok = [e for e in inside if int(float(e["ok"]))]
        lat = [float(e["latency_ms"]) for e in ok]
        checked = [int(float(e["correct"])) for e in ok if _num(e.get("correct")) is not None]
        flops = [h for h in (_num(e.get("flops_ratio")) for e in ok) if h is not None]
        pressure = [p for p in (_num(e.get("pressure")) for e in ok) if p is not None]
        n = len(inside)
        rows.append(
            {
                "stage": s.index,
                "users": s.users,
                "offered_rps": round(s.users * user_rate, 3) if user_rate else None,
                "requests": n,
                "rps": round(len(ok) / (hi - lo), 3),
                "p50_ms": round(percentile(lat, 50), 1),
                "p95_ms": round(percentile(lat, 95), 1),
                "p99_ms": round(percentile(lat, 99), 1),
                "error_rate": round((n - len(ok)) / n, 4) if n else 0.0,
                "rejected_rate": round(sum(int(float(e["status"])) == 503 for e in inside) / n, 4)
                if n
                else 0.0,
                "accuracy": round(sum(checked) / len(checked), 4) if checked else math.nan,
                "flops_ratio": round(statistics.fmean(flops), 4) if flops else math.nan,
                "pressure": round(statistics.fmean(pressure), 4) if pressure else math.nan,
            }
        )
    return rows


def versus_dense(rows: list[dict]) -> list[dict]:
    """Adds, from the dense row of the same round and stage (measured minutes apart, not days):
    rps_vs_dense = rps / dense rps, and accuracy_vs_dense = accuracy - dense accuracy in points."""
    dense = {(int(r["round"]), int(r["stage"])): r for r in rows if r["mode"] == "dense"}
    for r in rows:
        d = dense.get((int(r["round"]), int(r["stage"])))
        rps, acc = float(r["rps"]), float(r["accuracy"])
        r["rps_vs_dense"] = round(rps / float(d["rps"]), 3) if d and float(d["rps"]) > 0 else math.nan
        r["accuracy_vs_dense"] = round(100 * (acc - float(d["accuracy"])), 2) if d else math.nan
    return rows


def combine(
    rows: list[dict],
    keys: tuple[str, ...] = ("mode", "stage"),
    metrics: tuple[str, ...] = METRICS,
    same: tuple[str, ...] = ("users", "offered_rps"),
) -> list[dict]:
    """Rows of several rounds -> one per `keys` (by default mode and stage): the median of each metric,
    its min and max, and the first row's `same` fields."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(int(r[k]) if k in ("stage", "segment") else r[k] for k in keys)].append(r)
    out = []
    for key, rs in groups.items():
        c = {
            **dict(zip(keys, key)),
            **{f: rs[0].get(f) for f in same},
            "rounds": len(rs),
            "requests": sum(int(r["requests"]) for r in rs),
        }
        for m in metrics:
            vals = [float(r[m]) for r in rs if r.get(m) not in (None, "") and not math.isnan(float(r[m]))]
            c[m] = statistics.median(vals) if vals else math.nan
            c[m + "_min"] = min(vals) if vals else math.nan
            c[m + "_max"] = max(vals) if vals else math.nan
        out.append(c)
    return out


def read_locust_stats(path: Path) -> dict[tuple[str, str], dict]:
    """Locust's `PREFIX_stats.csv` -> {(type, name): {requests, failures, median_ms, p95_ms, rps}}."""
    out = {}
    with Path(path).open(newline="") as fh:
        for r in csv.DictReader(fh):
            out[(r["Type"], r["Name"])] = {
                "requests": int(r["Request Count"]),
                "failures": int(r["Failure Count"]),
                "median_ms": _num(r["Median Response Time"]),
                "p95_ms": _num(r["95%"]) if r["95%"] != "N/A" else None,
                "rps": _num(r["Requests/s"]),
            }
    return out


def locust_totals(stats: dict[tuple[str, str], dict]) -> dict:
    """The run's totals as Locust counted them: HTTP requests and failures, and the label check's accuracy."""
    http = [v for (t, _), v in stats.items() if t in ("POST", "GET")]
    check = [v for (t, _), v in stats.items() if t == "CHECK"]
    checked = sum(v["requests"] for v in check)
    return {
        "requests": sum(v["requests"] for v in http),
        "failures": sum(v["failures"] for v in http),
        "accuracy": round(1 - sum(v["failures"] for v in check) / checked, 4) if checked else None,
    }
