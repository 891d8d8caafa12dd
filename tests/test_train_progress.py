"""dihs_model/train_progress.py: the width-training progress file an early bundle's service reads:
rewritten at most every WRITE_EVERY_S, an ETA from the pace so far, failures with their error, and
unreadable files read as nothing."""

import json

from dihs_model.train_progress import PROGRESS_FILE, WRITE_EVERY_S, TrainProgress, describe, read_progress
from tests.conftest import ManualClock


def test_progress_is_written_at_a_bounded_rate_with_an_eta(tmp_path):
    clock = ManualClock(0.0)
    p = TrainProgress(tmp_path, total=100, clock=clock)
    assert read_progress(tmp_path) == {
        "status": "running",
        "done": 0,
        "total": 100,
        "eta_s": None,
        "error": None,
    }
    clock.advance(WRITE_EVERY_S)
    p.step(20)  # 20 steps in WRITE_EVERY_S seconds: 80 more take 4 times as long
    assert read_progress(tmp_path)["done"] == 20 and read_progress(tmp_path)["eta_s"] == round(
        4 * WRITE_EVERY_S
    )
    p.step(21)  # no time has passed since the last write
    assert read_progress(tmp_path)["done"] == 20
    p.finished()
    assert read_progress(tmp_path) == {
        "status": "done",
        "done": 21,
        "total": 100,
        "eta_s": None,
        "error": None,
    }
    assert [f.name for f in tmp_path.iterdir()] == [PROGRESS_FILE]  # no temporary file left


def test_a_failure_is_recorded_with_its_error(tmp_path):
    p = TrainProgress(tmp_path, total=10, clock=ManualClock(0.0))
    p.failed(MemoryError("no more"))
    record = read_progress(tmp_path)
    assert record["status"] == "failed" and record["error"] == "MemoryError: no more"
    assert describe(record) == "failed: MemoryError: no more"


def test_what_cannot_be_read_is_nothing(tmp_path):
    assert read_progress(tmp_path) is None and describe(None) == ""
    (tmp_path / PROGRESS_FILE).write_text("{not json")
    assert read_progress(tmp_path) is None
    (tmp_path / PROGRESS_FILE).write_text(json.dumps([1, 2]))
    assert read_progress(tmp_path) is None


def test_describe_says_how_far_and_how_long():
    assert describe({"status": "running", "done": 5, "total": 435, "eta_s": None}) == "5 of at most 435 steps"
    assert describe({"status": "running", "done": 5, "total": 435, "eta_s": 20}) == (
        "5 of at most 435 steps, about 1 min left"
    )
