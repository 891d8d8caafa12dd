"""`dihs` command line: train | calibrate | eval | bench | serve | explain | report | loadtest.

Any input a user can get wrong ends with one line `dihs: error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_TASK = "election-tweets"


class UsageError(ValueError):
    pass


def _add_data_args(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--data", default=default, help="built-in task (election-tweets, reuters-r8) or a .csv/.tsv/.jsonl file")
    p.add_argument("--text-column", default="text", help="text column of a data file (default: text)")
    p.add_argument("--label-column", default="label", help="label column of a data file (default: label)")


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (a GPU if there is one); default cpu")


def _device(name: str):
    """The torch device for --device, checked before any slow work starts."""
    from .device import DeviceError, pick_device

    try:
        return pick_device(name)
    except DeviceError as e:
        raise UsageError(str(e)) from None


def _threads(n: int | None) -> None:
    import torch

    torch.set_num_threads(n or os.cpu_count() or 1)


def _writable(path: Path | None, what: str) -> None:
    if path is not None and path.parent.exists() and not path.parent.is_dir():
        raise UsageError(f"cannot write {what} to {path}: {path.parent} is not a folder")


def cmd_train(a) -> None:
    from .bundle import BundleError, check_checkpoint, default_base_model, new_bundle, save_bundle
    from .data import load_split, split_calibration
    from .evaluate import predict
    from .importance import calibrate_bundle
    from .train import TrainConfig, fine_tune

    out = Path(a.out)
    if out.exists() and not a.force:
        raise BundleError(f"{out} exists; pass --force to replace it")
    if a.budget_robust and a.no_calibrate:
        raise UsageError("--budget-robust needs the head order that calibration finds: drop --no-calibrate")
    robust = not a.no_calibrate if a.budget_robust is None else a.budget_robust
    device = _device(a.device)
    base_model = a.model or default_base_model()
    check_checkpoint(base_model)
    _threads(a.threads)
    split = load_split(a.data, a.text_column, a.label_column)
    fit, calib = split_calibration(split.train)
    print(f"task {split.name}: {len(fit)} train / {len(calib)} calibration / {len(split.test)} held-out examples, "
          f"{len(split.train.label_names)} classes", file=sys.stderr)
    bundle = new_bundle(base_model, split.train.label_names, a.max_length, device)
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr)
    bundle.meta["train"] = fine_tune(bundle, fit, cfg, progress=not a.quiet)
    bundle.meta["data"] = {"spec": a.data, "text_column": a.text_column, "label_column": a.label_column}
    if not a.no_calibrate:
        bundle = calibrate_bundle(bundle, calib, a.order_by, progress=not a.quiet)
    if robust:
        bundle = _budget_robust(bundle, fit, calib, split.test, cfg, a)
    preds, _ = predict(bundle, split.test, None)
    acc = sum(int(p == y) for p, y in zip(preds, split.test.labels)) / len(split.test)
    bundle.meta["eval"] = {"data": split.name, "split": "held-out", "n": len(split.test), "dense_accuracy": acc}
    save_bundle(bundle, out, force=a.force)
    print(f"held-out dense accuracy {acc:.4f} (n={len(split.test)}); bundle written to {out}")


def _budget_robust(bundle, fit, calib, test, cfg, a):
    """One more epoch in which the ladder's levels learn from the full model, then recalibrate;
    per-level held-out accuracy before and after goes into the bundle."""
    from dataclasses import replace

    from .evaluate import level_accuracies
    from .importance import calibrate_bundle
    from .train import budget_robust_loss, fine_tune

    before = level_accuracies(bundle, test)
    levels = [lv["heads"] for lv in bundle.meta["levels"]]
    summary = fine_tune(bundle, fit, replace(cfg, epochs=1, lr=cfg.lr * 0.3), progress=not a.quiet,
                        loss_fn=budget_robust_loss(levels), desc="budget-robust")
    bundle = calibrate_bundle(bundle, calib, a.order_by, progress=not a.quiet)
    after = level_accuracies(bundle, test)
    bundle.meta["budget_robust"] = {"train": summary, "held_out_accuracy_before": before,
                                    "held_out_accuracy_after": after}
    print(f"budget-robust: held-out accuracy per level {before} -> {after}", file=sys.stderr)
    return bundle


def cmd_calibrate(a) -> None:
    from .bundle import load_bundle, save_bundle
    from .data import load_split, split_calibration
    from .importance import calibrate_bundle

    device = _device(a.device)
    _threads(a.threads)
    bundle = load_bundle(a.bundle, device=device)
    spec = a.data or bundle.meta.get("data", {}).get("spec")
    if spec is None:
        raise UsageError("the bundle does not name its training data: pass --data")
    split = load_split(spec, a.text_column, a.label_column)
    _, calib = split_calibration(split.train)  # the part `dihs train` held out
    bundle = calibrate_bundle(bundle, calib, a.order_by, a.max_examples, progress=not a.quiet)
    save_bundle(bundle, Path(a.bundle), force=True)
    print(f"calibrated on {bundle.meta['calibration']['examples']} examples of {split.name}; head order by {a.order_by}")


def cmd_eval(a) -> None:
    from .bundle import load_bundle
    from .cascade import CONFIDENCE
    from .data import load_eval
    from .evaluate import POLICIES, evaluate, plot_eval, write_json

    json_out, plot_out = Path(a.json), a.plot and Path(a.plot)
    _writable(json_out, "JSON")
    _writable(plot_out, "the plot")
    unknown = set(a.policies) - set(POLICIES)
    if unknown:
        raise UsageError(f"unknown policy {sorted(unknown)[0]!r}; choose from {', '.join(POLICIES)}")
    device = _device(a.device)
    _threads(a.threads)
    bundle = load_bundle(a.bundle, device=device)
    if "importance" not in bundle.meta and any(p.startswith("static-") for p in a.policies):
        raise UsageError(f"{a.bundle} has no head importance: run `dihs calibrate {a.bundle}` first")
    if "dihs" in a.policies and bundle.meta.get("cascade", {}).get("confidence") != CONFIDENCE:
        print(f"note: {a.bundle} has no current DIHS cascade plans (older bundle): `dihs calibrate` adds them; "
              "the dihs policy is left out", file=sys.stderr)
    ex = load_eval(a.data, bundle.labels, a.text_column, a.label_column)
    result = evaluate(bundle, ex, Path(a.data).stem if Path(a.data).suffix else a.data, a.policies,
                      progress=not a.quiet)
    write_json(result, json_out)
    if plot_out:
        plot_eval(result, plot_out)
    for r in result["rows"]:
        print(f"{r['policy']:>16}  heads {r['heads_ratio']:.2f}  flops {r['flops_ratio']:.2f}  "
              f"acc {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}")


def cmd_bench(a) -> None:
    from .bench import SHAPES, bench, plot_bench
    from .decision_cost import decision_cost
    from .bundle import load_bundle
    from .evaluate import write_json

    json_out, plot_out = Path(a.json), a.plot and Path(a.plot)
    _writable(json_out, "JSON")
    _writable(plot_out, "the plot")
    device = _device(a.device)
    if a.dtype == "bf16" and device.type != "cuda":
        raise UsageError("--dtype bf16 is for GPU benchmarks: add --device cuda")
    bundle = load_bundle(a.bundle, device=device)
    if a.dtype == "bf16":
        bundle.model.bfloat16()
    shapes = ((1, 32), (1, 128)) if a.quick else SHAPES
    result = bench(bundle, shapes=shapes, warmup=a.warmup, repeats=a.repeats, threads=a.threads,
                   progress=not a.quiet)
    if device.type == "cpu" and "levels" in bundle.meta:  # the decision is CPU work beside a CPU forward
        result["decision_cost"] = decision_cost(bundle, warmup=a.warmup, repeats=a.repeats, threads=a.threads)
    write_json(result, json_out)
    if plot_out:
        plot_bench(result, plot_out)
    for r in result["rows"]:
        print(f"{r['mode']:>11} heads {r['heads_ratio']:.2f} batch {r['batch']} seq {r['seq_len']:>3}: "
              f"{r['median_ms']:8.2f} ms  speedup {r['speedup']:.3f} (ideal {r['ideal_speedup']:.3f})")
    for r in result.get("decision_cost", {}).get("rows", []):
        print(f"budget decision, batch 1 seq {r['seq_len']:>3}: complexity + policy {r['complexity_and_policy_ms']:.3f} ms "
              f"({r['complexity_and_policy_share']:.2%} of dense {r['dense_forward_ms']:.2f} ms), "
              f"cascade gate {r['cascade_gate_ms']:.3f} ms ({r['cascade_gate_share']:.2%})")


def cmd_serve(a) -> None:
    from pydantic import ValidationError

    from .bundle import load_bundle

    try:
        from service.settings import Settings
    except ImportError as e:
        raise UsageError(f"serving needs the service package and its dependencies: {e}") from None
    flags = {"bundle": a.bundle, "host": a.host, "port": a.port, "replicas": a.replicas, "slo_ms": a.slo_ms,
             "model_name": a.model_name, "max_batch_size": a.max_batch_size, "device": a.device}
    try:
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        raise UsageError(f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}") from None
    meta = load_bundle(settings.bundle).meta  # fail here, in one line, not in a stack of Ray errors
    if "levels" not in meta or "complexity" not in meta:
        raise UsageError(f"{settings.bundle} has no budget ladder: run `dihs calibrate {settings.bundle}` first")
    from service.app import run_local

    run_local(settings)


def cmd_explain(a) -> None:
    import json

    from .bundle import load_bundle
    from .explain import budget_for, explain
    from .policy import is_finite_ratio

    json_out, png_out = a.json and Path(a.json), a.png and Path(a.png)
    _writable(json_out, "JSON")
    _writable(png_out, "the picture")
    if not a.text.strip():
        raise UsageError("the text is empty: give some words to explain")
    if (a.layer is None) != (a.head is None):
        raise UsageError("give both --layer and --head (that head's attention map), or neither (the head grid)")
    if a.layer is not None and png_out is None:
        raise UsageError("--layer/--head choose the attention map drawn to --png: pass --png OUT.png")
    if a.heads_ratio is not None and (a.mode or "fixed") != "fixed":
        raise UsageError(f"--heads-ratio asks for a fixed budget; it does not combine with --mode {a.mode}")
    for flag, x in (("--heads-ratio", a.heads_ratio), ("--pressure", a.pressure)):
        if x is not None and not is_finite_ratio(x):
            raise UsageError(f"{flag} must be in [0, 1], not {x:g}")
    _threads(a.threads)
    bundle = load_bundle(a.bundle)
    if "levels" not in bundle.meta or "complexity" not in bundle.meta:
        raise UsageError(f"{a.bundle} has no budget ladder: run `dihs calibrate {a.bundle}` first")
    L, H = bundle.model.shape.n_layers, bundle.model.shape.n_heads
    if a.layer is not None and not 0 <= a.layer < L:
        raise UsageError(f"--layer {a.layer} is out of range: the model has layers 0..{L - 1}")
    if a.head is not None and not 0 <= a.head < H:
        raise UsageError(f"--head {a.head} is out of range: each layer has heads 0..{H - 1}")
    mode = "fixed" if a.heads_ratio is not None else a.mode or "auto"
    try:
        kw = budget_for(bundle, a.text, mode, max_ratio=1.0 if a.heads_ratio is None else a.heads_ratio,
                        pressure=a.pressure or 0.0)
    except ValueError as e:
        raise UsageError(f"--heads-ratio {a.heads_ratio:g}: {e}") from None
    exp = explain(bundle, a.text, **kw)
    png = None
    if png_out:
        from .explain_plots import attention_png, head_grid_png

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
    hd = exp["heads"]
    print(f"{exp['label']} (p={exp['probabilities'][exp['label']]:.4f}) at {exp['level']}: {hd['active']}/{hd['total']} "
          f"heads, per layer {' '.join(map(str, hd['per_layer']))}")
    print(f"reason: {exp['reason']}; complexity {exp['complexity']:.3f} ({len(exp['tokens'])} tokens)")
    ranked = sorted(((h["input_importance"], ly["layer"], h) for ly in exp["layers"] for h in ly["heads"]),
                    key=lambda x: -x[0])[:5]
    print("heads that mattered most for this input (layer:head |dL/dm|, * ran): " +
          ", ".join(f"{l}:{h['head']}{'*' if h['active'] else ''} {v:.3g}" for v, l, h in ranked))
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
    if not rows or not isinstance(rows, list) or not all(isinstance(r, dict) and keys <= set(r) for r in rows):
        raise UsageError(f"{flag} {p} is not `{producer}` output (rows with {', '.join(sorted(keys))})")
    return obj


def cmd_report(a) -> None:
    from .bundle import load_bundle
    from .explain_plots import report_html

    out = Path(a.out)
    _writable(out, "the report")
    ev = _read_result_json(a.eval_json, "--eval-json", {"policy", "heads_ratio", "accuracy"}, "dihs eval")
    bn = _read_result_json(a.bench_json, "--bench-json", {"mode", "heads_ratio", "batch", "seq_len", "median_ms",
                                                           "p10_ms", "p90_ms", "speedup", "ideal_speedup"}, "dihs bench")
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


def build_parser() -> argparse.ArgumentParser:
    from .importance import SCORERS
    from .evaluate import POLICIES

    ap = argparse.ArgumentParser(prog="dihs", description="Dynamic and Interpretable Head Selection")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune an encoder classifier and write a bundle")
    _add_data_args(p, DEFAULT_TASK)
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--model", help="base encoder: a local safetensors checkpoint folder or a hub name "
                                   "(default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=128, help="tokens per text; longer texts are truncated")
    p.add_argument("--order-by", choices=SCORERS, default="michel", help="scorer that orders heads in the bundle")
    p.add_argument("--no-calibrate", action="store_true", help="skip head-importance calibration")
    p.add_argument("--budget-robust", action=argparse.BooleanOptionalAction, default=None,
                   help="one more epoch training every budget level against the full model (DynaBERT-style), "
                        "then recalibrate: smaller levels lose less accuracy (about 2.5x the time of an epoch). "
                        "On by default unless --no-calibrate")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    _add_device_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("calibrate", help="score head importance (michel, fisher, attention) and reorder heads")
    p.add_argument("bundle")
    _add_data_args(p, None)
    p.add_argument("--order-by", choices=SCORERS, default="michel")
    p.add_argument("--max-examples", type=int, default=512)
    _add_device_arg(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("eval", help="accuracy vs heads ratio for each policy (heads sliced away)")
    p.add_argument("bundle")
    _add_data_args(p, DEFAULT_TASK)
    p.add_argument("--json", required=True, help="where to write the results JSON")
    p.add_argument("--plot", help="where to write the accuracy-vs-heads PNG")
    p.add_argument("--policies", nargs="+", default=list(POLICIES), metavar="POLICY")
    _add_device_arg(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="latency vs heads ratio, sliced vs masked (CPU, or GPU with --device cuda)")
    p.add_argument("bundle")
    p.add_argument("--json", required=True)
    p.add_argument("--plot")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="batch 1 only")
    _add_device_arg(p)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: with --device cuda only")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("serve", help="serve a bundle over HTTP with Ray Serve (127.0.0.1:8000)")
    p.add_argument("bundle", nargs="?", default=None, help="bundle folder (default: $DIHS_BUNDLE or bundles/default)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--replicas", type=int, help="model replicas (default 1)")
    p.add_argument("--slo-ms", type=float, help="latency objective in ms (default 250)")
    p.add_argument("--model-name", help="served model name (default dihs)")
    p.add_argument("--max-batch-size", type=int, help="texts per model batch (default 16)")
    p.add_argument("--device", help="auto, cpu or cuda[:N] (default auto)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("explain", help="explain one prediction: heads that ran, their importance, attention maps")
    p.add_argument("bundle")
    p.add_argument("text")
    p.add_argument("--heads-ratio", type=float, help="fixed budget: the largest ladder level within this share of heads")
    p.add_argument("--mode", choices=("auto", "fixed", "dense"), help="budget mode as the service's (default auto)")
    p.add_argument("--pressure", type=float, default=0.0, help="load pressure in [0, 1] for --mode auto (default 0)")
    p.add_argument("--json", help="write the explanation JSON here")
    p.add_argument("--png", help="write a picture here: the head grid, or with --layer/--head that head's attention map")
    p.add_argument("--layer", type=int, help="layer of the attention map (0-based)")
    p.add_argument("--head", type=int, help="head of the attention map: its id in the base checkpoint")
    p.add_argument("--score", choices=("input", "michel", "fisher", "attention"), default="input",
                   help="grid colour: this input's importance (default) or a global scorer")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("report", help="one self-contained HTML page about a bundle (importance, ladder, eval, bench)")
    p.add_argument("bundle")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--eval-json", help="`dihs eval` output: accuracy vs heads")
    p.add_argument("--bench-json", help="`dihs bench` output: latency vs heads")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("loadtest", help="Locust sweep: throughput, latency and accuracy vs load, dense vs static vs adaptive")
    p.add_argument("bundle", nargs="?", default=None, help="bundle to serve (default: $DIHS_BUNDLE or bundles/default)")
    _add_data_args(p, None)  # default: the bundle's training task (its held-out split is sent)
    p.add_argument("--out", required=True, help="folder for sweep.csv, sweep.png, summary.md and raw/")
    p.add_argument("--quick", action="store_true", help="3 short stages, 1 round (about 2 minutes): a smoke test")
    p.add_argument("--url", help="use the running service here instead of starting one")
    p.add_argument("--model-name", default="dihs", help="served model name (v2 route; default dihs)")
    p.add_argument("--route", choices=("v1", "v2"), default="v1", help="POST /v1/classify or /v2/models/NAME/infer")
    p.add_argument("--modes", nargs="+", choices=("dense", "static", "adaptive"), default=["dense", "static", "adaptive"])
    p.add_argument("--rounds", type=int, help="repeats, modes interleaved (default 2; --quick 1)")
    p.add_argument("--users", help="users of each step, comma-separated (default 2,4,6,8,11,14,18,23,30)")
    p.add_argument("--stage-seconds", type=float, help="seconds per step (default 13; --quick 8)")
    p.add_argument("--settle-seconds", type=float, help="first seconds of a step left out of its figures (default 4)")
    p.add_argument("--user-rate", type=float, help="requests per second each user aims at (default 2)")
    p.add_argument("--slo-ms", type=float, default=250.0, help="latency objective (passed to the started service)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report in --out from its raw/ files")
    p.set_defaults(func=cmd_loadtest)

    for p in sub.choices.values():
        p.add_argument("--threads", type=int, default=None if p.prog != "dihs bench" else 1,
                       help="torch threads (default: all cores; bench: 1)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv: list[str] | None = None) -> int:
    from .bundle import BundleError
    from .data import DataError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, BundleError, UsageError) as e:
        print(f"dihs: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dihs: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
