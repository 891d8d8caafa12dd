"""Load tests: the shapes' tick sequences, the per-stage aggregation, the `dihs loadtest` contract.

Nothing here imports locust into the test process (it monkey-patches everything with gevent):
Locust runs only as a subprocess. The last test runs `dihs loadtest --quick` end to end.
"""

import csv
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

from dihs_cli.cli import main
from loadtests.shapes import make_plan, parse_users
from loadtests.stats import EVENT_FIELDS, combine, locust_totals, read_locust_stats, stage_rows, versus_dense
from loadtests.report import target_check
from loadtests.sweep import LOCUSTFILE

ROOT = Path(__file__).resolve().parent.parent
needs_locust = pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust is not installed")


def ticks(plan, times):
    return [plan.tick(t) for t in times]


# --- shapes: pure tick() sequences ---

def test_step_holds_each_count_for_its_stage_then_stops():
    plan = make_plan("step", [2, 4, 8], stage_seconds=10)
    assert ticks(plan, [0, 5, 9.99, 10, 19.9, 20, 29.99, 30, 100]) == [
        (2, 2.0), (2, 2.0), (2, 2.0), (4, 2.0), (4, 2.0), (8, 4.0), (8, 4.0), None, None]
    assert [(s.users, s.start, s.end) for s in plan.stages] == [(2, 0, 10), (4, 10, 20), (8, 20, 30)]
    assert plan.duration == 30


def test_steady_and_spike():
    steady = make_plan("steady", [8], stage_seconds=60)
    assert ticks(steady, [0, 59.9, 60]) == [(8, 8.0), (8, 8.0), None]
    spike = make_plan("spike", [4, 32], stage_seconds=5)
    # the peak arrives and leaves within one tick: spawn rate = the whole jump
    assert ticks(spike, [0, 4.9, 5, 9.9, 10, 14.9, 15]) == [
        (4, 4.0), (4, 4.0), (32, 28.0), (32, 28.0), (4, 28.0), (4, 28.0), None]


def test_default_users_per_shape():
    assert [s.users for s in make_plan("step").stages] == [2, 4, 8, 12, 16, 20, 24]
    assert [s.users for s in make_plan("spike").stages] == [4, 32, 4]


@pytest.mark.parametrize("name, users, seconds, message", [
    ("ramp", None, 10, "unknown load shape"),
    ("step", [2, 0], 10, "1 or more"),
    ("step", [2], 0, "above 0"),
    ("steady", [2, 4], 10, "one user count"),
    ("spike", [8, 4], 10, "PEAK above BASE"),
])
def test_bad_shape_parameters_say_what_is_wrong(name, users, seconds, message):
    with pytest.raises(ValueError, match=message):
        make_plan(name, users, seconds)


def test_parse_users():
    assert parse_users("2, 4,8") == [2, 4, 8]
    with pytest.raises(ValueError, match="comma-separated"):
        parse_users("2,x")


# --- aggregation: fake per-request events -> sweep rows ---

def ev(t, ok=1, status=200, latency=100.0, correct=1, heads=1.0, pressure=0.0):
    row = {"t": t, "users": 2, "route": "v1", "budget": "adaptive", "status": status, "ok": ok,
           "latency_ms": latency, "correct": correct if ok else "", "flops_ratio": heads if ok else "",
           "pressure": pressure if ok else "", "example": 0}
    assert set(row) == set(EVENT_FIELDS)
    return {k: str(v) for k, v in row.items()}  # as csv.DictReader gives them


def test_stage_rows_count_only_the_settled_window():
    plan = make_plan("step", [2, 4], stage_seconds=10)
    events = [
        ev(1.0, latency=9999),  # stage 0, inside the 2 s settling time: left out
        *[ev(2.0 + i, latency=100 + 10 * i, correct=int(i != 0)) for i in range(8)],  # stage 0: t 2..9
        ev(12.5, latency=200, heads=0.5, pressure=0.8),
        ev(13.0, latency=400, heads=0.25, correct=0, pressure=0.6),
        ev(14.0, ok=0, status=503, latency=1),
        ev(15.0, ok=0, status=500, latency=1),
        ev(25.0, latency=5),  # after the plan: left out
    ]
    s0, s1 = stage_rows(events, plan, settle_s=2, user_rate=2.0)
    assert (s0["stage"], s0["users"], s0["offered_rps"], s0["requests"]) == (0, 2, 4.0, 8)
    assert s0["rps"] == 1.0  # 8 answers over the 8 s window
    assert s0["p50_ms"] == 135.0 and s0["p99_ms"] == pytest.approx(169.3)
    assert s0["error_rate"] == 0 and s0["accuracy"] == 0.875 and s0["flops_ratio"] == 1.0
    assert (s1["requests"], s1["rps"]) == (4, 0.25)  # failures are not throughput
    assert s1["error_rate"] == 0.5 and s1["rejected_rate"] == 0.25
    assert s1["p50_ms"] == 300.0  # latency over successful answers only
    assert (s1["accuracy"], s1["flops_ratio"], s1["pressure"]) == (0.5, 0.375, 0.7)


def test_an_empty_stage_has_zero_throughput_and_no_percentiles():
    (row,) = stage_rows([], make_plan("steady", [3], 10), settle_s=1)
    assert row["rps"] == 0 and row["error_rate"] == 0 and math.isnan(row["p95_ms"]) and math.isnan(row["accuracy"])


def test_combine_rounds_gives_median_and_spread():
    rows = [{"mode": "dense", "round": r, "stage": 0, "users": 2, "offered_rps": 4.0, "requests": 10, "rps": rps,
             "p50_ms": 50, "p95_ms": p95, "p99_ms": 90, "error_rate": 0, "rejected_rate": 0, "accuracy": 0.9,
             "flops_ratio": 1.0, "pressure": 0.0} for r, rps, p95 in ((1, 4.0, 80), (2, 3.0, 120), (3, 3.5, 100))]
    (c,) = combine(rows)
    assert (c["rounds"], c["requests"], c["rps"], c["rps_min"], c["rps_max"]) == (3, 30, 3.5, 3.0, 4.0)
    assert (c["p95_ms"], c["p95_ms_min"], c["p95_ms_max"]) == (100, 80, 120)


def test_versus_dense_pairs_rows_of_the_same_round_and_stage():
    row = lambda mode, rnd, rps, acc: {"mode": mode, "round": rnd, "stage": 0, "rps": rps, "accuracy": acc}  # noqa: E731
    rows = versus_dense([row("dense", 1, 20.0, 0.96), row("adaptive", 1, 25.0, 0.95),
                         row("dense", 2, 10.0, 0.96), row("adaptive", 2, 11.0, 0.96), row("static", 3, 5.0, 0.9)])
    assert [(r["rps_vs_dense"], r["accuracy_vs_dense"]) for r in rows[:4]] == [(1.0, 0.0), (1.25, -1.0), (1.0, 0.0),
                                                                              (1.1, 0.0)]
    assert math.isnan(rows[4]["rps_vs_dense"])  # no dense run in round 3


LOCUST_STATS = """Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%
POST,/v1/classify [adaptive],200,2,150,163.0,67.4,349.9,358.2,5.02,0.05,150,190,210,230,250,280,350,350,350,350,350
FLOPS,flops% [adaptive],198,0,100,87.5,25.0,100.0,0.0,4.9,0.0,100,100,100,100,100,100,100,100,100,100,100
CHECK,label [adaptive],198,9,0,0.0,0,0,0.0,4.9,0.2,0,0,0,0,0,0,0,0,0,0,0
,Aggregated,596,11,100,93.1,0,349.9,133.9,30.1,0.37,100,100,110,150,220,270,300,350,350,350,350
"""


def test_locust_stats_csv_totals(tmp_path):
    path = tmp_path / "run_stats.csv"
    path.write_text(LOCUST_STATS)
    stats = read_locust_stats(path)
    assert stats[("POST", "/v1/classify [adaptive]")]["p95_ms"] == 280
    assert stats[("FLOPS", "flops% [adaptive]")]["median_ms"] == 100
    # HTTP rows only (not the CHECK/FLOPS pseudo entries, not Aggregated); accuracy from the CHECK row
    assert locust_totals(stats) == {"requests": 200, "failures": 2, "accuracy": round(1 - 9 / 198, 4)}


def _c(mode, stage, offered, rps, p95, acc=0.95):
    c = {"mode": mode, "stage": stage, "users": offered / 2, "offered_rps": offered, "rounds": 1, "requests": 1,
         "rps": rps, "p95_ms": p95, "error_rate": 0.0, "accuracy": acc}
    return c


def test_target_check_compares_at_1_3x_the_dense_sustained_load():
    rows = [_c("dense", 0, 10, 10, 100), _c("dense", 1, 20, 20, 200), _c("dense", 2, 30, 24, 900),
            _c("adaptive", 0, 10, 10, 90, acc=0.953), _c("adaptive", 1, 20, 20, 150), _c("adaptive", 2, 30, 29, 240)]
    check = target_check(rows, slo_ms=250)
    assert check["dense_sustained_rps"] == 20 and check["target_offered_rps"] == 26
    assert (check["stage"], check["dense_p95_ms"], check["adaptive_p95_ms"], check["held"]) == (2, 900, 240, True)
    assert check["low_load_accuracy"]["held"]
    rows[-1] = _c("adaptive", 2, 30, 25, 400)
    assert target_check(rows, slo_ms=250)["held"] is False


# --- the command's contract ---

@needs_locust
@pytest.mark.parametrize("args, message", [
    (["--users", "2,x"], "comma-separated"),
    (["--stage-seconds", "5", "--settle-seconds", "5"], "--settle-seconds"),
    (["--data", "no-such-task"], "unknown task"),
    (["--data", "missing.csv"], "data file not found"),
    (["--rounds", "0"], "--rounds"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["loadtest", str(ROOT / "bundles" / "none"), "--url", "http://127.0.0.1:9", "--out", str(out),
                 *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dihs: error:") and message in err[0], err
    assert not out.exists()  # nothing written


@needs_locust
def test_missing_bundle_and_file_as_out(tmp_path, capsys):
    assert main(["loadtest", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no bundle at" in capsys.readouterr().err
    (tmp_path / "f").write_text("")
    assert main(["loadtest", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in capsys.readouterr().err


@needs_locust
def test_locustfile_loads_and_refuses_bad_data_in_one_line(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=60, cwd=tmp_path)
    listed = run("--list")
    assert listed.returncode == 0 and "ClassifyUser" in listed.stdout and "InferUser" in listed.stdout, listed.stderr
    bad = run("--headless", "--host", "http://127.0.0.1:9", "--data", str(tmp_path / "missing.csv"))
    assert bad.returncode != 0 and "locustfile: error: data file not found" in bad.stderr
    assert "Traceback" not in bad.stderr


@needs_locust
@pytest.mark.serve
def test_quick_sweep_end_to_end(tmp_path):
    """`dihs loadtest --quick` starts a real service on free ports and writes the three modes' rows."""
    from dihs_model.bundle import new_bundle, save_bundle
    from dihs_model.data import Examples
    from dihs_model.calibrate import calibrate_bundle
    from tests.conftest import make_tiny_checkpoint, write_reviews_csv

    texts = ["good great fun", "bad awful dull", "love the movie", "hate the plot"] * 4
    bundle = calibrate_bundle(new_bundle(str(make_tiny_checkpoint(tmp_path)), ["neg", "pos"], 32),
                              Examples(texts, [1, 0, 1, 0] * 4, ["neg", "pos"]), progress=False)
    path = save_bundle(bundle, tmp_path / "bundle")
    data = write_reviews_csv(tmp_path / "reviews.csv", n=80)
    out = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "dihs_cli", "loadtest", str(path), "--quick", "--data", str(data),
                        "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    with (out / "sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {"mode", "stage", "users", "rps", "p50_ms", "p95_ms", "p99_ms", "error_rate", "accuracy",
            "flops_ratio"} <= set(rows[0])
    assert {r["mode"] for r in rows} == {"dense", "static", "adaptive"}
    assert len(rows) == 9  # 3 modes x 3 stages
    for row in rows:
        assert float(row["rps"]) > 0, row
        assert float(row["error_rate"]) == 0, row
        assert 0 <= float(row["accuracy"]) <= 1, row
    assert all(float(r["flops_ratio"]) == 1.0 for r in rows if r["mode"] == "dense")
    assert all(float(r["flops_ratio"]) <= 0.5 for r in rows if r["mode"] == "static")
    assert (out / "sweep.png").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "| adaptive |" in summary and "The issue's target" in summary
