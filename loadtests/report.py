"""The open-loop sweep's report: capacities, summary.md and sweep.png (pure, apart from writing files)."""

from __future__ import annotations

import math
from pathlib import Path

from .common import MODES
from .open_loop import capacity
from .stats import combine

ATTAINMENT = 0.99  # capacity: the highest offered rate with at least 99% of requests answered within the SLO
COMPARE_AT = 1.5  # the summary compares every mode at 1.5x dense's capacity
METRICS = (
    "sent_rps",
    "achieved_rps",
    "slo_attainment",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "lag_p99_ms",
    "error_rate",
    "rejected_rate",
    "accuracy",
    "flops_ratio",
    "heads_ratio",
)


def _fmt(x, nd=1) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _cell(c: dict, m: str, nd: int) -> str:
    v, lo, hi = c[m], c[m + "_min"], c[m + "_max"]
    if c["rounds"] < 2 or math.isnan(lo) or _fmt(lo, nd) == _fmt(hi, nd):
        return _fmt(v, nd)
    return f"{_fmt(v, nd)} [{_fmt(lo, nd)}, {_fmt(hi, nd)}]"


def combined(rows: list[dict]) -> list[dict]:
    """Median [min, max] over rounds per (mode, trace, segment)."""
    return combine(rows, keys=("mode", "trace", "segment"), metrics=METRICS, same=("offered_rps",))


def findings(comb: list[dict]) -> dict:
    """Per mode on the rate grid: capacity, accuracy and FLOPs there, low-load accuracy, and SLO attainment at
    COMPARE_AT x dense's capacity (the first grid point at or above it)."""
    out: dict = {"modes": {}}
    grid = [c for c in comb if c["trace"] == "grid"]
    for mode in MODES:
        cs = sorted((c for c in grid if c["mode"] == mode), key=lambda c: c["offered_rps"])
        if not cs:
            continue
        cap = capacity(cs, ATTAINMENT)
        out["modes"][mode] = {
            "capacity_rps": cap["offered_rps"] if cap else None,
            "accuracy_at_capacity": cap["accuracy"] if cap else None,
            "flops_at_capacity": cap["flops_ratio"] if cap else None,
            "low_load_accuracy": cs[0]["accuracy"],
            "low_load_rps": cs[0]["offered_rps"],
            "grid_top_rps": cs[-1]["offered_rps"],
        }
    dense = out["modes"].get("dense", {}).get("capacity_rps")
    if dense:
        want = COMPARE_AT * dense
        out["compare_rps_wanted"] = round(want, 2)
        for mode, f in out["modes"].items():
            at = [c for c in grid if c["mode"] == mode and c["offered_rps"] >= want - 1e-6]
            if at:
                c = min(at, key=lambda c: c["offered_rps"])
                f["at_compare"] = {
                    "offered_rps": c["offered_rps"],
                    "slo_attainment": c["slo_attainment"],
                    "accuracy": c["accuracy"],
                    "p99_ms": c.get("p99_ms"),
                }
            if f["capacity_rps"]:
                f["x_dense"] = round(f["capacity_rps"] / dense, 2)
    return out


def trace_totals(rows: list[dict]) -> list[dict]:
    """Per (mode, trace) other than the grid: requests, 503s (and those without Retry-After), other
    failures."""
    out: dict[tuple, dict] = {}
    for r in rows:
        if r["trace"] == "grid":
            continue
        t = out.setdefault(
            (r["mode"], r["trace"]),
            {
                "mode": r["mode"],
                "trace": r["trace"],
                "requests": 0,
                "within_slo": 0,
                "rejected": 0,
                "rejected_no_retry_after": 0,
                "other_failures": 0,
                "unanswered": 0,
                "peak_rps": 0.0,
            },
        )
        n = int(r["requests"])
        rejected = round(float(r["rejected_rate"]) * n)
        t["requests"] += n
        t["within_slo"] += round(float(r["slo_attainment"]) * n) if n else 0
        t["rejected"] += rejected
        t["rejected_no_retry_after"] += int(r["rejected_no_retry_after"])
        t["other_failures"] += round(float(r["error_rate"]) * n) - rejected
        t["unanswered"] += int(r["unanswered"])
        t["peak_rps"] = max(t["peak_rps"], float(r["offered_rps"]))
    return list(out.values())


def _speed_check(records: list[dict]) -> list[str]:
    """The sequential rate of each run's warm-up: how fast this shared machine ran just before it."""
    rates = [(r["run"], r["warmup_rps"]) for r in records if r["trace"] != "probe" and "warmup_rps" in r]
    if not rates:  # (runs recorded before the rate was kept have none)
        return []
    return [
        "- Speed check: each run's warm-up sends one-text requests one at a time in its mode just before the "
        "run; their rate (requests/s) shows how fast the machine was then, comparable between the rounds "
        "of a mode: " + ", ".join(f"{run} {rps:g}" for run, rps in rates) + "."
    ]


def write_summary(
    path: Path, meta: dict, comb: list[dict], found: dict, traces: list[dict], records: list[dict]
) -> None:
    slo, fm = meta["slo_ms"], found["modes"]
    L = [
        f"# How much load each way of serving takes within {slo:g} ms, and the accuracy it pays",
        "",
        f"Measured {meta['started']} on {meta['machine']}; model `{meta['bundle']}`, "
        f"texts of `{meta['data']}` ({meta['examples']} labelled held-out examples, "
        "every answer's label checked)."
        + "".join(
            f" The service started with DIHS_DTYPE={dt} serves {why}."
            for dt, why in meta.get("dtype_choice", {}).items()
            if why
        ),
        "",
        "| mode | what it is | capacity (req/s) | x dense | accuracy at capacity | accuracy at low load | "
        f"FLOPs ratio at capacity | within SLO at {COMPARE_AT:g}x dense's capacity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, f in fm.items():
        at = f.get("at_compare")
        cap = (_fmt(f["capacity_rps"], 1) if f["capacity_rps"] else f"under {_fmt(f['low_load_rps'], 1)}") + (
            " (at least; the grid's top)" if f["capacity_rps"] == f["grid_top_rps"] else ""
        )
        L.append(
            f"| {mode} | {meta['mode_text'][mode]} | {cap} | {_fmt(f.get('x_dense'), 2)} | "
            f"{_fmt(f['accuracy_at_capacity'], 4)} | {_fmt(f['low_load_accuracy'], 4)} | "
            f"{_fmt(f['flops_at_capacity'], 2)} | "
            + (f"{100 * at['slo_attainment']:.1f}% at {at['offered_rps']:.1f} req/s" if at else "")
            + " |"
        )
    L += [
        "",
        f"Capacity is the highest offered rate of the grid (below) at which at least {100 * ATTAINMENT:g}% "
        f"of requests were answered within {slo:g} ms, with every lower rate passing too; a 503, "
        "an error or a request left unanswered counts as a miss. Accuracy is over the answers of that rate "
        f"(low load: {meta['grid'][0]:g}x dense's probed capacity).",
        "",
    ]
    if traces:
        L += [
            "## Past capacity: traces",
            "",
            "| mode | trace | requests | peak offered req/s | within SLO | 503 (Retry-After) "
            "| 503 without Retry-After | other failures | unanswered |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for t in traces:
            L.append(
                f"| {t['mode']} | {t['trace']} | {t['requests']} | {t['peak_rps']:.1f} | "
                f"{t['within_slo'] / max(1, t['requests']):.1%} | {t['rejected']} | "
                f"{t['rejected_no_retry_after']} | {t['other_failures']} | {t['unanswered']} |"
            )
        L.append("")
    L += [
        "## How it was measured",
        "",
        f"- Open loop: requests start at {meta['arrival']} arrival times at the offered rate whatever the "
        "latency (one Locust user starting each request in its own greenlet), so past saturation the offered "
        "load is still what was asked; `sent` is the rate actually started, `achieved` the rate of 200 "
        "answers; latency runs from each request's scheduled start.",
        f"- Capacity probe: dense float32 at {', '.join(_fmt(r, 1) for r in meta['probe_rates'])} req/s, "
        f"{meta['probe_seconds']:g} s each: {meta['probe_capacity']:.1f} req/s. Rate grid: "
        f"{', '.join(f'{m:g}' for m in meta['grid'])} x that, {meta['segment_seconds']:g} s each with "
        f"{meta['gap_seconds']:g} s idle between; traces replayed at a mean of {meta['trace_load']:g}x it, "
        f"each 60 s row in {meta['minute_seconds']:g} s.",
        f"- {meta['rounds']} round(s) of the grid, modes interleaved ({' '.join(meta['order'])}); "
        "every figure is the median over rounds, [min, max] when they differ. Before each run, sequential "
        "requests in its "
        "mode drain the queue and let the load pressure fall back (adaptive runs: for at least "
        f"{meta.get('settle_s', 0):g} s, so the controller has left a plan the run before put it on).",
        f"- Placement: {meta['placement']}. 1-minute load average {meta['loadavg_start']:.1f} at the start, "
        f"{meta['loadavg_end']:.1f} at the end (other work on the machine shares the cores).",
        *_speed_check(records),
        f"- Services: {meta['service']}. Wall time {meta['wall_s']:.0f} s. Command: `{meta['command']}`.",
        "",
        "## The rate grid",
        "",
        "| mode | offered req/s | sent | achieved | within SLO | p50 ms | p95 ms | p99 ms | "
        "client lag p99 ms | errors | 503 | accuracy | FLOPs ratio | heads ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(
        (c for c in comb if c["trace"] == "grid"), key=lambda c: (list(MODES).index(c["mode"]), c["segment"])
    ):
        L.append(
            f"| {c['mode']} | {_fmt(c['offered_rps'], 1)} | {_cell(c, 'sent_rps', 1)} | "
            f"{_cell(c, 'achieved_rps', 1)} | {_cell(c, 'slo_attainment', 3)} | {_cell(c, 'p50_ms', 0)} | "
            f"{_cell(c, 'p95_ms', 0)} | "
            f"{_cell(c, 'p99_ms', 0)} | {_cell(c, 'lag_p99_ms', 0)} | {_cell(c, 'error_rate', 3)} | "
            f"{_cell(c, 'rejected_rate', 3)} | {_cell(c, 'accuracy', 3)} | {_cell(c, 'flops_ratio', 2)} | "
            f"{_cell(c, 'heads_ratio', 2)} |"
        )
    L += ["", "![sweep](sweep.png)", ""]
    path.write_text("\n".join(L))


def plot(path: Path, comb: list[dict], slo_ms: float) -> None:
    """SLO attainment, accuracy and FLOPs ratio vs offered rate on the grid, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.8))
    for mode in MODES:
        cs = sorted(
            (c for c in comb if c["mode"] == mode and c["trace"] == "grid"), key=lambda c: c["offered_rps"]
        )
        if not cs:
            continue
        x = [c["offered_rps"] for c in cs]
        for k, m in enumerate(("slo_attainment", "accuracy", "flops_ratio")):
            y = [c[m] for c in cs]
            err = [[max(0.0, c[m] - c[m + "_min"]) for c in cs], [max(0.0, c[m + "_max"] - c[m]) for c in cs]]
            ax[k].errorbar(x, y, yerr=err, marker="o", ms=3, capsize=2, label=mode)
    ax[0].axhline(ATTAINMENT, color="grey", ls="--", label=f"{100 * ATTAINMENT:g}%")
    ax[0].set(
        xlabel="offered load (req/s)",
        ylabel=f"share answered within {slo_ms:g} ms",
        title=f"SLO attainment ({slo_ms:g} ms; 503s and errors are misses)",
    )
    ax[1].set(xlabel="offered load (req/s)", ylabel="accuracy", title="accuracy vs offered load")
    ax[2].set(
        xlabel="offered load (req/s)", ylabel="FLOPs / dense FLOPs", title="FLOPs ratio vs offered load"
    )
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
