"""`dihs` command line: train | calibrate | eval | bench | serve.

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


def _threads(n: int | None) -> None:
    import torch

    torch.set_num_threads(n or os.cpu_count() or 1)


def _writable(path: Path | None, what: str) -> None:
    if path is not None and path.parent.exists() and not path.parent.is_dir():
        raise UsageError(f"cannot write {what} to {path}: {path.parent} is not a folder")


def cmd_train(a) -> None:
    from .bundle import BundleError, check_checkpoint, default_base_model, new_bundle, save_bundle
    from .data import load_split
    from .evaluate import predict
    from .importance import calibrate_bundle
    from .train import TrainConfig, fine_tune

    out = Path(a.out)
    if out.exists() and not a.force:
        raise BundleError(f"{out} exists; pass --force to replace it")
    base_model = a.model or default_base_model()
    check_checkpoint(base_model)
    _threads(a.threads)
    split = load_split(a.data, a.text_column, a.label_column)
    print(f"task {split.name}: {len(split.train)} train / {len(split.test)} held-out examples, "
          f"{len(split.train.label_names)} classes", file=sys.stderr)
    bundle = new_bundle(base_model, split.train.label_names, a.max_length)
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr)
    bundle.meta["train"] = fine_tune(bundle, split.train, cfg, progress=not a.quiet)
    bundle.meta["data"] = {"spec": a.data, "text_column": a.text_column, "label_column": a.label_column}
    if not a.no_calibrate:
        bundle = calibrate_bundle(bundle, split.train, a.order_by, progress=not a.quiet)
    preds, _ = predict(bundle, split.test, None)
    acc = sum(int(p == y) for p, y in zip(preds, split.test.labels)) / len(split.test)
    bundle.meta["eval"] = {"data": split.name, "split": "held-out", "n": len(split.test), "dense_accuracy": acc}
    save_bundle(bundle, out, force=a.force)
    print(f"held-out dense accuracy {acc:.4f} (n={len(split.test)}); bundle written to {out}")


def cmd_calibrate(a) -> None:
    from .bundle import load_bundle, save_bundle
    from .data import load_split
    from .importance import calibrate_bundle

    _threads(a.threads)
    bundle = load_bundle(a.bundle)
    spec = a.data or bundle.meta.get("data", {}).get("spec")
    if spec is None:
        raise UsageError("the bundle does not name its training data: pass --data")
    split = load_split(spec, a.text_column, a.label_column)
    bundle = calibrate_bundle(bundle, split.train, a.order_by, a.max_examples, progress=not a.quiet)
    save_bundle(bundle, Path(a.bundle), force=True)
    print(f"calibrated on {bundle.meta['calibration']['examples']} examples of {split.name}; head order by {a.order_by}")


def cmd_eval(a) -> None:
    from .bundle import load_bundle
    from .data import load_eval
    from .evaluate import POLICIES, evaluate, plot_eval, write_json

    json_out, plot_out = Path(a.json), a.plot and Path(a.plot)
    _writable(json_out, "JSON")
    _writable(plot_out, "the plot")
    unknown = set(a.policies) - set(POLICIES)
    if unknown:
        raise UsageError(f"unknown policy {sorted(unknown)[0]!r}; choose from {', '.join(POLICIES)}")
    _threads(a.threads)
    bundle = load_bundle(a.bundle)
    if "importance" not in bundle.meta and any(p.startswith("static-") for p in a.policies):
        raise UsageError(f"{a.bundle} has no head importance: run `dihs calibrate {a.bundle}` first")
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
    from .bundle import load_bundle
    from .evaluate import write_json

    json_out, plot_out = Path(a.json), a.plot and Path(a.plot)
    _writable(json_out, "JSON")
    _writable(plot_out, "the plot")
    bundle = load_bundle(a.bundle)
    shapes = ((1, 32), (1, 128)) if a.quick else SHAPES
    result = bench(bundle, shapes=shapes, warmup=a.warmup, repeats=a.repeats, threads=a.threads,
                   progress=not a.quiet)
    write_json(result, json_out)
    if plot_out:
        plot_bench(result, plot_out)
    for r in result["rows"]:
        print(f"{r['mode']:>11} heads {r['heads_ratio']:.2f} batch {r['batch']} seq {r['seq_len']:>3}: "
              f"{r['median_ms']:8.2f} ms  speedup {r['speedup']:.3f} (ideal {r['ideal_speedup']:.3f})")


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
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("calibrate", help="score head importance (michel, fisher, attention) and reorder heads")
    p.add_argument("bundle")
    _add_data_args(p, None)
    p.add_argument("--order-by", choices=SCORERS, default="michel")
    p.add_argument("--max-examples", type=int, default=512)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("eval", help="accuracy vs heads ratio for each policy (heads sliced away)")
    p.add_argument("bundle")
    _add_data_args(p, DEFAULT_TASK)
    p.add_argument("--json", required=True, help="where to write the results JSON")
    p.add_argument("--plot", help="where to write the accuracy-vs-heads PNG")
    p.add_argument("--policies", nargs="+", default=list(POLICIES), metavar="POLICY")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="CPU latency vs heads ratio, sliced vs masked")
    p.add_argument("bundle")
    p.add_argument("--json", required=True)
    p.add_argument("--plot")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="batch 1 only")
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
