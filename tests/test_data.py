"""Data loaders on small fixture files, and the packaged built-in tasks."""

from pathlib import Path

import pytest

from dihs_model.data import DataError, load_eval, load_split

FIX = Path(__file__).parent / "fixtures"


def test_csv_with_quotes_and_commas():
    ex = load_eval(str(FIX / "tiny.csv"), ["neg", "pos"])
    assert ex.texts == ["good, very good", "bad", 'a "quoted" word', "fun"]
    assert ex.labels == [1, 0, 0, 1]


def test_jsonl_with_named_columns_skips_blank_lines_and_empty_texts():
    ex = load_eval(str(FIX / "tiny.jsonl"), ["neg", "pos"], text_column="body", label_column="sentiment")
    assert len(ex) == 4 and ex.labels == [1, 0, 1, 0]


def test_file_split_is_seeded_and_stratified(tmp_path):
    from tests.conftest import write_reviews_csv

    f = write_reviews_csv(tmp_path / "r.csv", n=50)
    a, b = load_split(str(f)), load_split(str(f))
    assert a.train.texts == b.train.texts and a.test.texts == b.test.texts
    assert len(a.test) == 10 and sorted(set(a.test.labels)) == [0, 1]
    assert len(a.train) + len(a.test) == 50
    assert a.train.label_names == ["neg", "pos"]


@pytest.mark.parametrize(
    "task,n_train,n_test,n_labels", [("election-tweets", 5155, 1289, 2), ("reuters-r8", 5485, 2189, 8)]
)
def test_builtin_tasks_have_fixed_splits(task, n_train, n_test, n_labels):
    s = load_split(task)
    assert (len(s.train), len(s.test), len(s.train.label_names)) == (n_train, n_test, n_labels)
    assert s.test.label_names == s.train.label_names
    assert load_split(task).test.texts[:5] == s.test.texts[:5]


@pytest.mark.parametrize(
    "spec,kwargs,message",
    [
        ("no-such-task", {}, "unknown task 'no-such-task'"),
        ("missing.csv", {}, "data file not found"),
        (str(FIX / "tiny.csv"), {"text_column": "body"}, "no column 'body'"),
        (str(FIX / "one_class.csv"), {}, "single class"),
    ],
)
def test_bad_input_is_one_clear_line(spec, kwargs, message):
    with pytest.raises(DataError, match=message) as e:
        load_split(spec, **kwargs)
    assert "\n" not in str(e.value)


def test_empty_file_and_unknown_labels(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(DataError, match="no rows"):
        load_split(str(empty))
    with pytest.raises(DataError, match="labels the model does not know"):
        load_eval(str(FIX / "tiny.csv"), ["neg", "neutral"])
