"""Write a VADER ground-truth file as text,label train and test CSVs: an English sentiment
task from a PyPI package that no DIHS default was tuned on.

The vaderSentiment sdist ships the ICWSM 2014 sentiment sets (crowd-rated movie review
snippets, tweets, Amazon reviews, NYT editorials; mean rating in [-4, 4]):

    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2
    tar xzf vaderSentiment-3.3.2.tar.gz
    tar xzf vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz
    python scripts/vader_to_csv.py hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt \\
        movies-train.csv movies-test.csv --train-size 6000

The label is the sign of the mean rating; rows rated exactly 0 (neutral) are dropped.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from pathlib import Path


def read_rated(path: str) -> list[tuple[str, str]]:
    """(text, label) per line of `id<TAB>mean rating<TAB>text`, neutral lines dropped."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 3:
                raise ValueError(f"{path}:{n}: expected id, rating and text separated by tabs")
            try:
                rating, text = float(parts[1]), parts[2].strip()
            except ValueError:
                raise ValueError(f"{path}:{n}: the rating {parts[1]!r} is not a number") from None
            if rating != 0 and text:
                rows.append((text, "positive" if rating > 0 else "negative"))
    return rows


def write_csvs(parts: dict[str, list[tuple[str, str]]]) -> None:
    """Each path's rows as a text,label CSV; written beside the targets first, so a failed write
    (a missing folder, a full disk) leaves neither file behind."""
    tmps = {path: f"{path}.tmp" for path in parts}
    try:
        for path, rows in parts.items():
            with open(tmps[path], "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(["text", "label"])
                w.writerows(rows)
    except OSError:
        for tmp in tmps.values():
            Path(tmp).unlink(missing_ok=True)
        raise
    for path, tmp in tmps.items():
        os.replace(tmp, path)


def main() -> int:
    return split_cli(
        __doc__, read_rated, "a *_GroundTruth.txt file from hutto_ICWSM_2014", default_train_size=6000
    )


def split_cli(doc: str, read, source_help: str, default_train_size: int) -> int:
    """A split script's command line (SOURCE TRAIN_OUT TEST_OUT [--train-size] [--seed]), run."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("source", help=source_help)
    p.add_argument("train_out", help="train CSV to write (columns text,label)")
    p.add_argument("test_out", help="test CSV to write: every row not in the train CSV")
    p.add_argument("--train-size", type=int, default=default_train_size)
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle before the split")
    a = p.parse_args()
    return split_to_csvs(read, a.source, a.train_out, a.test_out, a.train_size, a.seed)


def split_to_csvs(read, source: str, train_out: str, test_out: str, train_size: int, seed: int) -> int:
    """A CLI's body: read (text, label) rows with `read(source)`, shuffle them with `seed`, write the
    first `train_size` to train_out and the rest to test_out. Exit code; on bad input one `error:`
    line on stderr, 2, and nothing written."""
    try:
        rows = read(source)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not 0 < train_size < len(rows):
        print(f"error: --train-size must be between 1 and {len(rows) - 1}", file=sys.stderr)
        return 2
    random.Random(seed).shuffle(rows)
    try:
        write_csvs({train_out: rows[:train_size], test_out: rows[train_size:]})
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{train_size} rows -> {train_out}, {len(rows) - train_size} rows -> {test_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
