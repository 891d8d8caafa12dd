"""`dihs` commands around the service: serve | explain | report | loadtest."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError, _add_data_args, _add_run_args, _threads, _writable

# Settings that are no `dihs serve` flag: the bundle is the positional argument, and the API key
# only an environment variable (or --api-key-file): a command line is visible to every user in `ps`.
NOT_FLAGS = {"bundle": "the positional BUNDLE", "api_key": "env only: a command line shows in ps"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def default_text(field) -> str:
    """A setting's default as the help and the README's settings table write it."""
    d = field.default
    return "unset" if d is None else f"{d:g}" if isinstance(d, float) else str(d)


def _settings_flags(p) -> None:
    """One `dihs serve` flag per setting, typed and described by the settings model itself."""
    import types
    import typing

    from service.settings import Settings

    for name, field in Settings.model_fields.items():
        if name in NOT_FLAGS:
            continue
        kind = field.annotation
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        # argparse formats help with %: a description's "95%" is written %%
        described = field.description.replace("%", "%%")
        extra = {"help": f"{described} (default {default_text(field)}; env DIHS_{name.upper()})"}
        if kind is bool:
            extra["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is typing.Literal:
            extra["choices"] = typing.get_args(kind)
        else:
            extra["type"] = kind if kind in (int, float) else str
            extra["metavar"] = name.upper()
        try:
            p.add_argument(_flag(name), default=None, **extra)
        except argparse.ArgumentError:  # a flag written out by hand for this setting wins
            pass


def cmd_serve(a) -> None:
    from pydantic import ValidationError

    from dihs_model.bundle import load_bundle
    from dihs_model.meta import not_servable

    try:
        from service.settings import Settings
    except ImportError as e:
        raise UsageError(f"serving needs the service package and its dependencies: {e}") from None
    given = {k: getattr(a, k) for k in Settings.model_fields if getattr(a, k, None) is not None}
    try:
        settings = Settings(**given)
    except ValidationError as e:
        err = e.errors()[0]
        where = f"{_flag(str(err['loc'][0]))} / DIHS_{str(err['loc'][0]).upper()}: " if err["loc"] else ""
        raise UsageError(f"{where}{err['msg']}") from None
    problem = not_servable(load_bundle(settings.bundle).meta, settings.bundle)  # one line, not Ray's stack
    if problem:
        raise UsageError(problem)
    from service.app import DoesNotFit, run_local

    try:
        run_local(settings)
    except DoesNotFit as e:
        raise UsageError(str(e)) from None


def cmd_explain(a) -> None:
    import json

    from dihs_model.bundle import load_bundle
    from dihs_model.meta import not_servable
    from dihs_model.policy import is_finite_ratio, limits_error
    from service.engine import Engine
    from service.explainer import explain_at
    from service.load import LoadConfig, LoadTracker
    from service.metrics import NullMetrics
    from service.routing import Item

    json_out, png_out = a.json and Path(a.json), a.png and Path(a.png)
    _writable(json_out, "JSON")
    _writable(png_out, "the picture")
    if not a.text.strip():
        raise UsageError("the text is empty: give some words to explain")
    if (a.layer is None) != (a.head is None):
        raise UsageError(
            "give both --layer and --head (that head's attention map), or neither (the head grid)"
        )
    if a.layer is not None and png_out is None:
        raise UsageError("--layer/--head choose the attention map drawn to --png: pass --png OUT.png")
    if a.flops_ratio is not None and (a.mode or "fixed") != "fixed":
        raise UsageError(f"--flops-ratio asks for a fixed budget; it does not combine with --mode {a.mode}")
    for flag, x in (("--flops-ratio", a.flops_ratio), ("--pressure", a.pressure)):
        if x is not None and not is_finite_ratio(x):
            raise UsageError(f"{flag} must be in [0, 1], not {x:g}")
    _threads(a.threads)
    bundle = load_bundle(a.bundle)
    problem = not_servable(bundle.meta, a.bundle)
    if problem:
        raise UsageError(problem)
    L, H = bundle.model.shape.n_layers, bundle.model.shape.n_heads
    if a.layer is not None and not 0 <= a.layer < L:
        raise UsageError(f"--layer {a.layer} is out of range: the model has layers 0..{L - 1}")
    if a.head is not None and not 0 <= a.head < H:
        raise UsageError(f"--head {a.head} is out of range: each layer has heads 0..{H - 1}")
    mode = "fixed" if a.flops_ratio is not None else a.mode or "auto"
    max_ratio = 1.0 if a.flops_ratio is None else a.flops_ratio
    # the service's own engine: the same plan, gate and pass as /v1/explain at this pressure
    engine = Engine(bundle, "cli", LoadTracker(LoadConfig(slo_s=0.25, queue_capacity=1)), NullMetrics())
    err = limits_error(engine.ladder, 0.0, max_ratio)
    if err:
        raise UsageError(f"--flops-ratio {max_ratio:g}: {err}")
    exp = explain_at(engine, Item(a.text, mode, 0.0, max_ratio), a.pressure or 0.0)
    png = None
    if png_out:
        from dihs_model.explain_plots import attention_png, head_grid_png

        try:
            png = head_grid_png(exp, a.score) if a.layer is None else attention_png(exp, a.layer, a.head)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(exp))
    if png_out:
        png_out.parent.mkdir(parents=True, exist_ok=True)
        png_out.write_bytes(png)
    hd, nd = exp["heads"], exp["neurons"]
    print(
        f"{exp['label']} (p={exp['probabilities'][exp['label']]:.4f}) at {exp['level']} "
        f"({exp['flops_ratio']:.2f} of the FLOPs): {hd['active']}/{hd['total']} heads, "
        f"per layer {' '.join(map(str, hd['per_layer']))}; "
        f"{nd['active']}/{nd['total']} FFN neurons, per layer {' '.join(map(str, nd['per_layer']))}"
    )
    print(f"reason: {exp['reason']}; complexity {exp['complexity']:.3f} ({len(exp['tokens'])} tokens)")
    ranked = sorted(
        ((h["input_importance"], ly["layer"], h) for ly in exp["layers"] for h in ly["heads"]),
        key=lambda x: -x[0],
    )[:5]
    print(
        "heads that mattered most for this input (layer:head |dL/dm|, * ran): "
        + ", ".join(f"{layer}:{h['head']}{'*' if h['active'] else ''} {v:.3g}" for v, layer, h in ranked)
    )
    for what, path in (("JSON", json_out), ("picture", png_out)):
        if path:
            print(f"{what} written to {path}")


def _read_result_json(path: str | None, flag: str, keys: set[str], producer: str) -> dict | None:
    import json

    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag} {p}: file not found")
    try:
        obj = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{flag} {p} is not JSON: {e}") from None
    rows = obj.get("rows") if isinstance(obj, dict) else None
    if (
        not rows
        or not isinstance(rows, list)
        or not all(isinstance(r, dict) and keys <= set(r) for r in rows)
    ):
        raise UsageError(f"{flag} {p} is not `{producer}` output (rows with {', '.join(sorted(keys))})")
    return obj


def cmd_report(a) -> None:
    from dihs_model.bundle import load_bundle
    from dihs_model.explain_plots import report_html

    out = Path(a.out)
    _writable(out, "the report")
    ev = _read_result_json(
        a.eval_json, "--eval-json", {"policy", "flops_ratio", "heads_ratio", "accuracy"}, "dihs eval"
    )
    bn = _read_result_json(
        a.bench_json,
        "--bench-json",
        {
            "mode",
            "level",
            "flops_ratio",
            "batch",
            "seq_len",
            "median_ms",
            "p10_ms",
            "p90_ms",
            "speedup",
            "ideal_speedup",
        },
        "dihs bench",
    )
    meta = load_bundle(a.bundle).meta
    page = report_html(str(a.bundle), meta, ev, bn)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    print(f"report written to {out} ({len(page) // 1024} KiB, self-contained)")


def cmd_loadtest(a) -> None:
    try:
        from loadtests.sweep import run_sweep
    except ImportError as e:
        raise UsageError(f"the load test needs the loadtests package: {e}") from None
    run_sweep(a)


def _serve_args(p) -> None:
    p.add_argument(
        "bundle", nargs="?", default=None, help="bundle folder (default: $DIHS_BUNDLE or bundles/default)"
    )
    _settings_flags(p)
    p.set_defaults(func=cmd_serve)


def _explain_args(p) -> None:
    p.add_argument("bundle")
    p.add_argument("text")
    p.add_argument(
        "--flops-ratio", type=float, help="fixed budget: the largest ladder level within this share of heads"
    )
    p.add_argument(
        "--mode", choices=("auto", "fixed", "dense"), help="budget mode as the service's (default auto)"
    )
    p.add_argument(
        "--pressure", type=float, default=0.0, help="load pressure in [0, 1] for --mode auto (default 0)"
    )
    p.add_argument("--json", help="write the explanation JSON here")
    p.add_argument(
        "--png", help="write a picture here: the head grid, or with --layer/--head that head's attention map"
    )
    p.add_argument("--layer", type=int, help="layer of the attention map (0-based)")
    p.add_argument("--head", type=int, help="head of the attention map: its id in the base checkpoint")
    p.add_argument(
        "--score",
        choices=("input", "michel", "fisher", "attention"),
        default="input",
        help="grid colour: this input's importance (default) or a global scorer",
    )
    _add_run_args(p, quiet=False)
    p.set_defaults(func=cmd_explain)


def _report_args(p) -> None:
    p.add_argument("bundle")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--eval-json", help="`dihs eval` output: accuracy vs heads")
    p.add_argument("--bench-json", help="`dihs bench` output: latency vs heads")
    p.set_defaults(func=cmd_report)


def _loadtest_args(p) -> None:
    p.add_argument(
        "bundle", nargs="?", default=None, help="bundle to serve (default: $DIHS_BUNDLE or bundles/default)"
    )
    _add_data_args(p, None)  # default: the bundle's training task (its held-out split is sent)
    p.add_argument("--out", required=True, help="folder for sweep.csv, sweep.png, summary.md and raw/")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short probe, 3 rates of 3 s, 1 round, no traces (under 3 minutes): a smoke test",
    )
    p.add_argument(
        "--url", help="use the running service here instead of starting one (its dtype's modes only)"
    )
    p.add_argument("--model-name", default="dihs", help="served model name (default dihs)")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=("dense", "dense-default", "f50", "auto", "auto-default"),
        default=["dense", "dense-default", "f50", "auto", "auto-default"],
        help="dense/auto in float32, or in the service's default dtype (-default: a second service, "
        "DIHS_DTYPE=auto, what `dihs serve` picks here), f50 = fixed 50%% FLOPs",
    )
    p.add_argument(
        "--rounds", type=int, help="repeats of the rate grid, modes interleaved (default 2; --quick 1)"
    )
    p.add_argument(
        "--grid",
        help="offered rates as multiples of dense's probed capacity, comma-separated "
        "(default 0.5,0.6,...,2.0 in steps of 0.1, 2.25, 2.5, 3, 3.5, 4; --quick 0.5,1,2.5)",
    )
    p.add_argument(
        "--segment-seconds",
        type=float,
        help="seconds each rate of the grid is offered (default 4; --quick 3)",
    )
    p.add_argument("--gap-seconds", type=float, help="idle seconds after each rate (default 0.5; --quick: 1)")
    p.add_argument(
        "--arrival",
        choices=("poisson", "constant"),
        default="poisson",
        help="arrival times (default poisson)",
    )
    p.add_argument(
        "--trace",
        action="append",
        help="CSV with columns seconds,requests, replayed once per mode after "
        "the grid; repeatable (default loadtests/traces/spike.csv; "
        "steady, step and bursty are there too)",
    )
    p.add_argument(
        "--trace-load", type=float, help="a trace's mean offered rate, x dense's capacity (default 1.2)"
    )
    p.add_argument(
        "--minute-seconds", type=float, help="seconds a trace's 60-s row lasts in the replay (default 5)"
    )
    p.add_argument("--max-rps", type=float, help="highest rate offered (default 400: one Locust process)")
    p.add_argument(
        "--slo-ms", type=float, default=250.0, help="latency objective (passed to the started service)"
    )
    p.add_argument(
        "--report-only", action="store_true", help="rebuild the report in --out from its raw/ files"
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_loadtest)


SERVICE_COMMANDS = {
    "serve": (
        "serve a bundle over HTTP with Ray Serve (127.0.0.1:8000); every setting is a flag",
        _serve_args,
    ),
    "explain": ("explain one prediction: heads that ran, their importance, attention maps", _explain_args),
    "report": ("one self-contained HTML page about a bundle (importance, ladder, eval, bench)", _report_args),
    "loadtest": (
        "open-loop Locust sweep: SLO attainment and accuracy vs offered load, every mode side by side",
        _loadtest_args,
    ),
}
