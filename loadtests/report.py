"""The sweep's report: the issue's target check, summary.md and sweep.png (pure, apart from writing files)."""

from __future__ import annotations

import math
from pathlib import Path

from .common import BUDGETS

MODES = tuple(BUDGETS)
TARGET_LOAD = 1.3  # the target: offered load 1.3x what dense sustains within the SLO


def _fmt(x, nd=1) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _cell(c: dict, m: str, nd: int) -> str:
    v, lo, hi = c[m], c[m + "_min"], c[m + "_max"]
    if c["rounds"] < 2 or math.isnan(lo) or _fmt(lo, nd) == _fmt(hi, nd):
        return _fmt(v, nd)
    return f"{_fmt(v, nd)} [{_fmt(lo, nd)}, {_fmt(hi, nd)}]"


def target_check(combined: list[dict], slo_ms: float) -> dict:
    """The issue's target: at ~1.3x the load dense sustains within the SLO, adaptive within it and dense not;
    at low load (the first stage) adaptive's accuracy within 0.5 point of dense."""
    by = {(c["mode"], c["stage"]): c for c in combined}
    stages = sorted({c["stage"] for c in combined})
    out: dict = {"slo_ms": slo_ms}
    dense_ok = [by[("dense", s)] for s in stages if ("dense", s) in by
                and by[("dense", s)]["p95_ms"] <= slo_ms and by[("dense", s)]["error_rate"] == 0]
    if dense_ok and ("adaptive", stages[0]) in by:
        best = max(dense_ok, key=lambda c: c["rps"])
        want = TARGET_LOAD * best["rps"]
        offered = [s for s in stages if (by[("dense", s)]["offered_rps"] or 0) >= want]
        out["dense_sustained_rps"] = best["rps"]
        out["dense_sustained_stage"] = best["stage"]
        out["target_offered_rps"] = round(want, 2)
        if offered:
            s = offered[0]
            d, a = by[("dense", s)], by[("adaptive", s)]
            out.update(stage=s, offered_rps=d["offered_rps"], dense_p95_ms=d["p95_ms"], adaptive_p95_ms=a["p95_ms"],
                       dense_rps=d["rps"], adaptive_rps=a["rps"],
                       held=bool(a["p95_ms"] <= slo_ms < d["p95_ms"]))
            if ("static", s) in by:
                out["static_p95_ms"] = by[("static", s)]["p95_ms"]
    d0, a0 = by.get(("dense", stages[0])), by.get(("adaptive", stages[0]))
    if d0 and a0:
        out["low_load_accuracy"] = {"dense": d0["accuracy"], "adaptive": a0["accuracy"],
                                    "held": bool(abs(a0["accuracy"] - d0["accuracy"]) <= 0.005)}
    return out


def write_summary(path: Path, meta: dict, combined: list[dict], check: dict, totals: list[dict]) -> None:
    slo = meta["slo_ms"]
    L = [f"# Load sweep: dense vs static vs adaptive ({meta['started']})", "",
         f"`{meta['command']}`: {meta['service']}; data `{meta['data']}` (held-out split, "
         f"{meta['examples']} examples, sent in one fixed shuffled order); route {meta['route']}; "
         f"step shape, users {', '.join(map(str, meta['users']))}, {meta['stage_seconds']:g} s each "
         f"(first {meta['settle_seconds']:g} s of a stage not counted); each user aims at "
         f"{meta['user_rate']:g} req/s, so offered load = users x {meta['user_rate']:g}; SLO {slo:g} ms; "
         f"{meta['rounds']} round(s), modes interleaved ({' '.join(meta['order'])}).", "",
         f"Machine: {meta['machine']}"
         + (f"; 1-minute load average {meta['loadavg_start']:.1f} at the start, {meta['loadavg_end']:.1f} at the end"
            if "loadavg_start" in meta else "") + f". Wall time {meta['wall_s']:.0f} s.", "",
         "Modes: dense = the full model; static = fixed 50% of the FLOPs; adaptive = DIHS auto (load pressure and input "
         "complexity pick the level). Values are medians over rounds, [min, max] when rounds differ. "
         "Latency over successful responses; errors = non-2xx or connection errors (503 back-pressure included).", "",
         "`x dense` and `acc - dense` compare with dense in the same round and stage (ratio of req/s; "
         "accuracy points, on nearly the same examples).", "",
         "| mode | users | offered req/s | req/s | x dense | p50 ms | p95 ms | p99 ms | errors | accuracy "
         "| acc - dense | FLOPs ratio | pressure |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(combined, key=lambda c: (MODES.index(c["mode"]), c["stage"])):
        vs = ("", "") if c["mode"] == "dense" else (_cell(c, "rps_vs_dense", 2), _cell(c, "accuracy_vs_dense", 1))
        L.append(f"| {c['mode']} | {c['users']} | {_fmt(c['offered_rps'], 0)} | {_cell(c, 'rps', 1)} | {vs[0]} | "
                 f"{_cell(c, 'p50_ms', 0)} | {_cell(c, 'p95_ms', 0)} | {_cell(c, 'p99_ms', 0)} | "
                 f"{_cell(c, 'error_rate', 3)} | {_cell(c, 'accuracy', 3)} | {vs[1]} | {_cell(c, 'flops_ratio', 2)} | "
                 f"{_cell(c, 'pressure', 2)} |")
    top = max(c["stage"] for c in combined)
    L += ["", "## Throughput won, accuracy paid", ""]
    for c in sorted((c for c in combined if c["mode"] != "dense"), key=lambda c: (MODES.index(c["mode"]), c["stage"])):
        if c["stage"] == top or c["stage"] == check.get("stage"):
            L.append(f"- {c['mode']} at {_fmt(c['offered_rps'], 0)} req/s offered ({c['users']} users): "
                     f"{_cell(c, 'rps_vs_dense', 2)}x dense's req/s, accuracy {_cell(c, 'accuracy_vs_dense', 1)} "
                     f"points vs dense, p95 {_cell(c, 'p95_ms', 0)} ms, FLOPs {_cell(c, 'flops_ratio', 2)}.")
    peak = {m: max((c for c in combined if c["mode"] == m), key=lambda c: c["rps"]) for m in MODES
            if any(c["mode"] == m for c in combined)}
    L.append("- highest throughput of any stage (median over rounds): " + "; ".join(
        f"{m} {c['rps']:.1f} req/s at {c['users']} users" + (f" ({c['rps'] / peak['dense']['rps']:.2f}x dense's)"
                                                             if m != "dense" and "dense" in peak else "")
        for m, c in peak.items()) + ".")
    by_mode: dict[str, list] = {}
    for t in totals:
        by_mode.setdefault(t["run"].rsplit("-r", 1)[0], []).append(t["accuracy"])
    L.append("- accuracy over every answer of a run (Locust's CHECK row, all stages): " + "; ".join(
        f"{m} {', '.join(_fmt(a, 4) for a in accs)}" for m, accs in by_mode.items()) + ".")
    L += ["", "## The issue's target", ""]
    if "dense_sustained_rps" not in check:
        L.append(f"- dense met the {slo:g} ms p95 SLO at no stage: the target cannot be evaluated.")
    else:
        L.append(f"- dense sustained {check['dense_sustained_rps']:.1f} req/s within the SLO (users "
                 f"{meta['users'][check['dense_sustained_stage']]}); {TARGET_LOAD:g}x that is "
                 f"{check['target_offered_rps']:.1f} req/s offered.")
        if "stage" in check:
            L.append(f"- at the first stage offering at least that ({check['offered_rps']:g} req/s, users "
                     f"{meta['users'][check['stage']]}): dense p95 {check['dense_p95_ms']:.0f} ms at "
                     f"{check['dense_rps']:.1f} req/s, adaptive p95 {check['adaptive_p95_ms']:.0f} ms at "
                     f"{check['adaptive_rps']:.1f} req/s" + (f", static p95 {check['static_p95_ms']:.0f} ms"
                                                            if "static_p95_ms" in check else "")
                     + f". Adaptive within the SLO while dense is not: **{'held' if check['held'] else 'not held'}**.")
        else:
            L.append("- no stage offered that much load: extend --users to evaluate it.")
    if "low_load_accuracy" in check:
        la = check["low_load_accuracy"]
        L.append(f"- low load (first stage): accuracy dense {_fmt(la['dense'], 4)}, adaptive {_fmt(la['adaptive'], 4)}; "
                 f"within 0.5 point: **{'held' if la['held'] else 'not held'}**.")
    fails = sum(t["failures"] for t in totals)
    rejected = sum(t["rejected"] for t in totals)
    L.append(f"- failed requests over all runs (Locust's count): {fails}, of which 503 back-pressure: {rejected}.")
    L += ["", "## Locust's own totals per run", "",
          "| run | requests | failures | accuracy (CHECK row) | warm-up pressure | wall s |", "|---|---|---|---|---|---|"]
    for t in totals:
        L.append(f"| {t['run']} | {t['requests']} | {t['failures']} | {_fmt(t['accuracy'], 4)} | "
                 f"{_fmt(t['warmup_pressure'], 2)} | {t['wall_s']:.0f} |")
    L += ["", "![sweep](sweep.png)", ""]
    path.write_text("\n".join(L))


def plot(path: Path, combined: list[dict], slo_ms: float) -> None:
    """Throughput and p95 vs offered load; accuracy vs throughput; accuracy minus dense's vs offered load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    ax = axes.ravel()
    for mode in MODES:
        cs = sorted((c for c in combined if c["mode"] == mode), key=lambda c: c["stage"])
        if not cs:
            continue
        x = [c["offered_rps"] for c in cs]
        for k, m in ((0, "rps"), (1, "p95_ms"), (3, "accuracy_vs_dense")):
            y = [c[m] for c in cs]
            err = [[c[m] - c[m + "_min"] for c in cs], [c[m + "_max"] - c[m] for c in cs]]
            ax[k].errorbar(x, y, yerr=err, marker="o", capsize=3, label=mode)
        ax[2].plot([c["rps"] for c in cs], [c["accuracy"] for c in cs], marker="o", label=mode)
    ax[0].set(xlabel="offered load (req/s)", ylabel="throughput (req/s)", title="throughput vs offered load")
    ax[1].axhline(slo_ms, color="grey", ls="--", label=f"SLO {slo_ms:g} ms")
    ax[1].set(xlabel="offered load (req/s)", ylabel="p95 latency (ms, log scale)", title="p95 latency vs offered load",
              yscale="log")
    ax[1].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax[1].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax[2].set(xlabel="throughput (req/s)", ylabel="accuracy", title="accuracy vs throughput (each stage's own examples)")
    ax[3].set(xlabel="offered load (req/s)", ylabel="accuracy - dense (points)",
              title="accuracy paid vs offered load (same round and stage as dense)")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
