"""What the load programs share: the budget of each compared mode, the labelled held-out examples,
and the event loop their HTTP clients run on."""

from __future__ import annotations

import random
from pathlib import Path

# The three ways of serving that the sweep compares, as the API's `budget` object.
BUDGETS: dict[str, dict] = {
    "dense": {"mode": "dense"},
    "static": {"mode": "fixed", "max_flops_ratio": 0.5},
    "adaptive": {"mode": "auto"},
}
# The open-loop sweep's modes: (the service's dtype, the requests' budget).
MODES: dict[str, tuple[str, str]] = {
    "dense": ("float32", "dense"),
    "dense-default": ("auto", "dense"),  # the dtype `dihs serve` picks here unless told (dtype_choice.py)
    "f50": ("float32", "static"),
    "auto": ("float32", "adaptive"),
    "auto-default": ("auto", "adaptive"),
}
EXAMPLE_SEED = 0  # every run sends the held-out examples in the same shuffled order


def task_of(
    data: str | None, text_column: str, label_column: str, bundle: str | None
) -> tuple[str, str, str]:
    """(spec, text column, label column) of the examples to send: `data` if given, else the task the
    bundle folder was trained on (None: a running service, whose bundle is not read here), else
    election-tweets."""
    from dihs_model.meta import META_FILE, read_meta

    if data:
        return data, text_column, label_column
    if bundle is not None and (Path(bundle) / META_FILE).is_file():
        d = read_meta(Path(bundle), allow_v1=True).get("data", {})  # MetaError: one line
        if d.get("spec"):
            return d["spec"], d.get("text_column", "text"), d.get("label_column", "label")
    return "election-tweets", text_column, label_column


def held_out(
    spec: str, text_column: str = "text", label_column: str = "label", shuffle: bool = True
) -> list[tuple[str, str]]:
    """(text, label name) pairs of a task's held-out split (a built-in task or a CSV/TSV/JSONL file).

    Shuffled once with a fixed seed so that any prefix mixes the classes (some files are sorted
    by label) and every mode and round sees the same sequence. Raises `DataError`.
    """
    from dihs_model.data import load_split

    test = load_split(spec, text_column, label_column).test
    pairs = [(t, test.label_names[y]) for t, y in zip(test.texts, test.labels)]
    if shuffle:
        random.Random(EXAMPLE_SEED).shuffle(pairs)
    return pairs


def drive(coro):
    """Run an HTTP client coroutine to its end on uvloop: the clients share one core with the HTTP
    front, and there asyncio's loop and httpx cost so much per request that the clients, not the
    replica, set the pace (seen: ~120 requests/s from a core busy with them alone)."""
    import uvloop

    return uvloop.run(coro)
