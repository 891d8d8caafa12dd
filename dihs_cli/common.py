"""What every `dihs` command shares: the usage error, data/device arguments, small checks."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_TASK = "election-tweets"


class UsageError(ValueError):
    pass


def _add_data_args(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument(
        "--data",
        default=default,
        help="built-in task (election-tweets, reuters-r8) or a .csv/.tsv/.jsonl file",
    )
    p.add_argument("--text-column", default="text", help="text column of a data file (default: text)")
    p.add_argument("--label-column", default="label", help="label column of a data file (default: label)")


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:N or auto (a GPU if there is one); default cpu"
    )


DTYPES = ("float32", "bfloat16", "int8")  # dihs_model.precision.DTYPES, without importing torch for --help


def _add_dtype_arg(p: argparse.ArgumentParser, what: str, auto: bool = False) -> None:
    p.add_argument(
        "--dtype",
        choices=(*DTYPES, "auto") if auto else DTYPES,
        default="float32",
        help=f"number format of {what}: float32, bfloat16 (fast with AMX/AVX512-BF16 or on a GPU) or "
        "int8 (CPU: each width level's weights quantized per output channel at load)"
        + ("; auto: the one `dihs serve --dtype auto` would serve on this machine" if auto else ""),
    )


def _dtype(name: str, device):
    """The dtype for --dtype, checked against the device before any slow work starts."""
    from dihs_model.precision import DtypeError, check_dtype

    try:
        check_dtype(name, device)
    except DtypeError as e:
        raise UsageError(str(e)) from None
    return name


def _add_run_args(p: argparse.ArgumentParser, threads: int | None = None, quiet: bool = True) -> None:
    """--threads (torch threads; default all cores) and --quiet, for the commands that use them."""
    p.add_argument(
        "--threads", type=int, default=threads, help=f"torch threads (default {threads or 'all cores'})"
    )
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress bars")


def _device(name: str):
    """The torch device for --device, checked before any slow work starts."""
    from dihs_model.device import DeviceError, pick_device

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
