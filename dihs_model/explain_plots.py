"""Pictures of explanations and bundles (matplotlib, Agg, PNG bytes), and the `dihs report` page.

Figures are built with `matplotlib.figure.Figure`, never pyplot's global state, so a server can
render from several threads.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from .explain import GLOBAL_METHODS, find_head

SCORES = ("input", "michel", "fisher", "attention")


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def score_matrix(explanation: dict, score: str = "input") -> np.ndarray:
    """[L, H] in stored order: this input's importance or one global scorer's."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose from {', '.join(SCORES)}")
    if score == "input":
        return np.asarray(explanation["input_importance"], dtype=float)
    rows = [[h["global_importance"].get(score, np.nan) for h in ly["heads"]] for ly in explanation["layers"]]
    return np.asarray(rows, dtype=float)


def _grid(
    ax, values: np.ndarray, ids: list[list[int]] | None, counts: list[int] | None, title: str, fig
) -> None:
    """Layers x stored positions; cells labelled with original head ids; heads that ran outlined."""
    from matplotlib.patches import Rectangle

    L, H = values.shape
    im = ax.imshow(values, cmap="viridis", aspect="auto", vmin=0.0, vmax=float(np.nanmax(values)) or 1.0)
    for layer in range(L):
        for p in range(H):
            if counts is not None and p >= counts[layer]:  # did not run: greyed out
                ax.add_patch(
                    Rectangle((p - 0.5, layer - 0.5), 1, 1, facecolor="white", alpha=0.65, edgecolor="none")
                )
            elif counts is not None:
                ax.add_patch(
                    Rectangle((p - 0.46, layer - 0.46), 0.92, 0.92, fill=False, edgecolor="#ff7f0e", lw=1.6)
                )
            if ids is not None and H <= 16:
                ax.text(
                    p,
                    layer,
                    str(ids[layer][p]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if values[layer, p] < 0.6 * (np.nanmax(values) or 1.0) else "black",
                )
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_xlabel("position in layer (importance rank); cell text: original head id")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)


def head_grid_png(explanation: dict, score: str = "input") -> bytes:
    """Layers x heads, importance as colour, the heads that ran outlined (the others greyed out)."""
    values = score_matrix(explanation, score)
    L, H = values.shape
    ids = [[h["head"] for h in ly["heads"]] for ly in explanation["layers"]]
    fig = _figure(max(5.0, 0.5 * H + 2), max(2.5, 0.45 * L + 1.5))
    hd = explanation["heads"]
    what = "this input's |dL/dm|" if score == "input" else f"global {score} importance"
    title = (
        f"{explanation['label']} at {explanation['level']} "
        f"({hd['active']}/{hd['total']} heads ran, outlined)\n"
        f"colour: {what}"
    )
    _grid(fig.add_subplot(), values, ids, [ly["active"] for ly in explanation["layers"]], title, fig)
    return _png(fig)


def attention_png(explanation: dict, layer: int, head: int) -> bytes:
    """The attention map (query rows x key columns) of original head `head` in `layer`, tokens as labels."""
    rec = find_head(explanation, layer, head)
    if rec["attention"] is None:
        ran = [h["head"] for h in explanation["layers"][layer]["heads"] if h["active"]]
        why = (
            "attention maps were not asked for"
            if ran and explanation["layers"][layer]["heads"][0]["attention"] is None
            else f"it did not run at level {explanation['level']} (layer {layer} ran heads {ran})"
        )
        raise ValueError(f"no attention map for layer {layer} head {head}: {why}")
    a = np.asarray(rec["attention"], dtype=float)
    tokens = explanation["tokens"]
    T = len(tokens)
    size = min(14.0, max(4.0, 0.22 * T + 2))
    fig = _figure(size + 1, size)
    ax = fig.add_subplot()
    im = ax.imshow(a, cmap="Blues", vmin=0.0, vmax=float(a.max()) or 1.0)  # the colour bar shows the scale
    fs = max(4, min(9, int(300 / max(T, 1))))
    ax.set_xticks(range(T), tokens, rotation=90, fontsize=fs)
    ax.set_yticks(range(T), tokens, fontsize=fs)
    ax.set_xlabel("attended-to token (key)")
    ax.set_ylabel("token (query)")
    ax.set_title(
        f"layer {layer}, head {head} (rank {rec['position']}), input importance "
        f'{rec["input_importance"]:.3g}\n"{explanation["label"]}" at {explanation["level"]}',
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    return _png(fig)


def importance_png(meta: dict) -> bytes:
    """The bundle's global head importance, one grid per scorer (stored order)."""
    imp = meta["importance"]["heads"]
    ids = meta["head_order"]
    fig = _figure(5.2 * len(imp), max(2.8, 0.45 * len(ids) + 1.6))
    for i, (name, rows) in enumerate(imp.items()):
        title = f"{name}" + (" (orders the heads)" if name == meta.get("order_by") else "")
        _grid(fig.add_subplot(1, len(imp), i + 1), np.asarray(rows, dtype=float), ids, None, title, fig)
    return _png(fig)


def ladder_png(meta: dict) -> bytes:
    """Per head: the smallest ladder level (FLOPs ratio) that still runs it (heads that run only at
    100% are darkest)."""
    levels = meta["levels"]
    L, H = len(meta["head_order"]), len(meta["head_order"][0])
    keep = np.ones((L, H))
    for lv in levels:
        for layer, k in enumerate(lv["heads"]):
            keep[layer, :k] = np.minimum(keep[layer, :k], lv["flops_ratio"])
    fig = _figure(max(5.0, 0.5 * H + 2), max(2.5, 0.45 * L + 1.5))
    ax = fig.add_subplot()
    im = ax.imshow(keep, cmap="magma", vmin=0.0, vmax=1.0, aspect="auto")
    for layer in range(L):
        for p in range(H):
            ax.text(
                p,
                layer,
                f"{keep[layer, p]:.0%}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if keep[layer, p] < 0.6 else "black",
            )
    ax.set(xticks=range(H), yticks=range(L), xlabel="position in layer (importance rank)", ylabel="layer")
    ax.set_title("width ladder: smallest level (FLOPs ratio) at which each head still runs", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    return _png(fig)


def eval_png(result: dict) -> bytes:
    from .evaluate import plot_eval

    buf = io.BytesIO()
    plot_eval(result, buf)
    return buf.getvalue()


def bench_png(result: dict) -> bytes:
    from .bench import plot_bench

    buf = io.BytesIO()
    plot_bench(result, buf)
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: list[str] | None, rows: list[list]) -> str:
    th = (
        ""
        if header is None
        else "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"
    )
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{th}{body}</table>"


CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "img{max-width:100%;border:1px solid #ddd;margin:.5em 0}table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:right}th{background:#f3f3f3}"
    "code{background:#f3f3f3;padding:0 3px}"
)


def report_html(
    bundle_path: str, meta: dict, eval_result: dict | None = None, bench_result: dict | None = None
) -> str:
    """One self-contained page: global head importance, the width ladder, accuracy and latency vs FLOPs."""
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>DIHS report: {e(bundle_path)}</title>"
        f"<style>{CSS}</style></head><body><h1>DIHS bundle report</h1>"
    ]
    facts = [
        ["bundle", bundle_path],
        ["base model", meta.get("base_model", "?")],
        ["labels", ", ".join(meta.get("labels", []))],
        ["max tokens", meta.get("max_length", "?")],
        ["heads and neurons ordered by", meta.get("order_by") or "not calibrated"],
        ["allocation", meta.get("allocation") or "-"],
        ["calibration examples", (meta.get("calibration") or {}).get("examples", "-")],
    ]
    if "eval" in meta:
        ev = meta["eval"]
        facts.append(
            [
                "dense accuracy",
                f"{ev['dense_accuracy']:.4f} ({ev.get('data', '?')}, {ev.get('split', '')}, "
                f"n={ev.get('n', '?')})",
            ]
        )
    parts.append(_table(None, facts))
    if meta.get("importance"):
        parts.append(
            "<h2>Global head importance</h2><p>Rows are layers, columns the heads in stored order "
            "(most important first); cell text is the head's id in the base checkpoint.</p>"
        )
        parts += [
            _img(importance_png(meta), "global head importance"),
            "<ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in GLOBAL_METHODS.items()) + "</ul>",
        ]
    if meta.get("levels"):
        parts.append("<h2>Width ladder</h2>")
        parts.append(
            _table(
                [
                    "level",
                    "target FLOPs",
                    "FLOPs ratio",
                    "heads ratio",
                    "neurons ratio",
                    "heads per layer",
                    "neurons per layer",
                ],
                [
                    [
                        lv["name"],
                        f"{lv['target_flops_ratio']:.2f}",
                        f"{lv['flops_ratio']:.3f}",
                        f"{lv['heads_ratio']:.3f}",
                        f"{lv['neurons_ratio']:.3f}",
                        " ".join(map(str, lv["heads"])),
                        " ".join(map(str, lv["neurons"])),
                    ]
                    for lv in meta["levels"]
                ],
            )
        )
        parts.append(_img(ladder_png(meta), "budget ladder"))
    else:
        parts.append("<p>No head importance or ladder: run <code>dihs calibrate</code> on the bundle.</p>")
    if eval_result:
        parts.append(
            f"<h2>Accuracy vs FLOPs</h2><p>task {e(str(eval_result.get('task')))}, "
            f"n={e(str(eval_result.get('n')))}; heads and neurons removed by slicing.</p>"
        )
        parts.append(_img(eval_png(eval_result), "accuracy vs FLOPs"))
        parts.append(
            _table(
                ["policy", "FLOPs ratio", "heads ratio", "neurons ratio", "accuracy", "macro-F1"],
                [
                    [
                        r["policy"],
                        f"{r['flops_ratio']:.3f}",
                        f"{r['heads_ratio']:.3f}",
                        f"{r.get('neurons_ratio', 1.0):.3f}",
                        f"{r['accuracy']:.4f}",
                        f"{r.get('macro_f1', float('nan')):.4f}",
                    ]
                    for r in eval_result["rows"]
                ],
            )
        )
    if bench_result:
        parts.append(
            f"<h2>Latency vs FLOPs</h2><p>{e(str(bench_result.get('device', 'cpu')))}, "
            f"{e(str(bench_result.get('dtype', '')))}, {e(str(bench_result.get('threads', '?')))} thread(s); "
            "median of interleaved repeats; speedup = dense median / variant median.</p>"
        )
        parts.append(_img(bench_png(bench_result), "latency vs FLOPs"))
        parts.append(
            _table(
                [
                    "mode",
                    "level",
                    "FLOPs ratio",
                    "batch",
                    "seq",
                    "median ms",
                    "p10-p90 ms",
                    "speedup",
                    "FLOP ideal",
                ],
                [
                    [
                        r["mode"],
                        r.get("level", "-"),
                        f"{r['flops_ratio']:.2f}",
                        r["batch"],
                        r["seq_len"],
                        r["median_ms"],
                        f"{r['p10_ms']}-{r['p90_ms']}",
                        r["speedup"],
                        r["ideal_speedup"],
                    ]
                    for r in bench_result["rows"]
                ],
            )
        )
    parts.append("</body></html>")
    return "\n".join(parts)
