"""Load tests: the shapes' tick sequences, the per-stage aggregation, the `dihs loadtest` contract.

Nothing here imports locust into the test process (it monkey-patches everything with gevent):
Locust runs only as a subprocess. The last test runs `dihs loadtest --quick` (open loop) end to end.
"""

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from dihs_cli.cli import main
from loadtests.open_loop import (
    Segment,
    arrivals,
    capacity,
    grid_segments,
    read_trace,
    segment_rows,
    trace_segments,
)
from loadtests.report import findings, trace_totals
from loadtests.shapes import make_plan, parse_users
from loadtests.stats import EVENT_FIELDS, combine, locust_totals, read_locust_stats, stage_rows, versus_dense
from loadtests.sweep import LOCUSTFILE

ROOT = Path(__file__).resolve().parent.parent
needs_locust = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None, reason="locust is not installed"
)


def ticks(plan, times):
    return [plan.tick(t) for t in times]


# --- shapes: pure tick() sequences ---


def test_step_holds_each_count_for_its_stage_then_stops():
    plan = make_plan("step", [2, 4, 8], stage_seconds=10)
    assert ticks(plan, [0, 5, 9.99, 10, 19.9, 20, 29.99, 30, 100]) == [
        (2, 2.0),
        (2, 2.0),
        (2, 2.0),
        (4, 2.0),
        (4, 2.0),
        (8, 4.0),
        (8, 4.0),
        None,
        None,
    ]
    assert [(s.users, s.start, s.end) for s in plan.stages] == [(2, 0, 10), (4, 10, 20), (8, 20, 30)]
    assert plan.duration == 30


def test_steady_and_spike():
    steady = make_plan("steady", [8], stage_seconds=60)
    assert ticks(steady, [0, 59.9, 60]) == [(8, 8.0), (8, 8.0), None]
    spike = make_plan("spike", [4, 32], stage_seconds=5)
    # the peak arrives and leaves within one tick: spawn rate = the whole jump
    assert ticks(spike, [0, 4.9, 5, 9.9, 10, 14.9, 15]) == [
        (4, 4.0),
        (4, 4.0),
        (32, 28.0),
        (32, 28.0),
        (4, 28.0),
        (4, 28.0),
        None,
    ]


def test_default_users_per_shape():
    assert [s.users for s in make_plan("step").stages] == [2, 4, 8, 12, 16, 20, 24]
    assert [s.users for s in make_plan("spike").stages] == [4, 32, 4]


@pytest.mark.parametrize(
    "name, users, seconds, message",
    [
        ("ramp", None, 10, "unknown load shape"),
        ("step", [2, 0], 10, "1 or more"),
        ("step", [2], 0, "above 0"),
        ("steady", [2, 4], 10, "one user count"),
        ("spike", [8, 4], 10, "PEAK above BASE"),
    ],
)
def test_bad_shape_parameters_say_what_is_wrong(name, users, seconds, message):
    with pytest.raises(ValueError, match=message):
        make_plan(name, users, seconds)


def test_parse_users():
    assert parse_users("2, 4,8") == [2, 4, 8]
    with pytest.raises(ValueError, match="comma-separated"):
        parse_users("2,x")


# --- aggregation: fake per-request events -> sweep rows ---


def ev(t, ok=1, status=200, latency=100.0, correct=1, heads=1.0, pressure=0.0):
    row = {
        "t": t,
        "users": 2,
        "route": "v1",
        "budget": "adaptive",
        "status": status,
        "ok": ok,
        "latency_ms": latency,
        "correct": correct if ok else "",
        "flops_ratio": heads if ok else "",
        "pressure": pressure if ok else "",
        "example": 0,
    }
    assert set(row) <= set(EVENT_FIELDS)
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
    assert (
        row["rps"] == 0
        and row["error_rate"] == 0
        and math.isnan(row["p95_ms"])
        and math.isnan(row["accuracy"])
    )


def test_combine_rounds_gives_median_and_spread():
    rows = [
        {
            "mode": "dense",
            "round": r,
            "stage": 0,
            "users": 2,
            "offered_rps": 4.0,
            "requests": 10,
            "rps": rps,
            "p50_ms": 50,
            "p95_ms": p95,
            "p99_ms": 90,
            "error_rate": 0,
            "rejected_rate": 0,
            "accuracy": 0.9,
            "flops_ratio": 1.0,
            "pressure": 0.0,
        }
        for r, rps, p95 in ((1, 4.0, 80), (2, 3.0, 120), (3, 3.5, 100))
    ]
    (c,) = combine(rows)
    assert (c["rounds"], c["requests"], c["rps"], c["rps_min"], c["rps_max"]) == (3, 30, 3.5, 3.0, 4.0)
    assert (c["p95_ms"], c["p95_ms_min"], c["p95_ms_max"]) == (100, 80, 120)


def test_versus_dense_pairs_rows_of_the_same_round_and_stage():
    def row(mode, rnd, rps, acc):
        return {"mode": mode, "round": rnd, "stage": 0, "rps": rps, "accuracy": acc}

    rows = versus_dense(
        [
            row("dense", 1, 20.0, 0.96),
            row("adaptive", 1, 25.0, 0.95),
            row("dense", 2, 10.0, 0.96),
            row("adaptive", 2, 11.0, 0.96),
            row("static", 3, 5.0, 0.9),
        ]
    )
    assert [(r["rps_vs_dense"], r["accuracy_vs_dense"]) for r in rows[:4]] == [
        (1.0, 0.0),
        (1.25, -1.0),
        (1.0, 0.0),
        (1.1, 0.0),
    ]
    assert math.isnan(rows[4]["rps_vs_dense"])  # no dense run in round 3


LOCUST_STATS = """Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,\
Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,\
50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%
POST,/v1/classify [adaptive],200,2,150,163.0,67.4,349.9,358.2,5.02,0.05,\
150,190,210,230,250,280,350,350,350,350,350
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


# --- open loop: schedules, traces, per-segment rows ---


def test_poisson_and_constant_arrivals_hold_the_offered_rate():
    segs = grid_segments([10, 40], seconds=50, gap=5)
    assert [(s.start, s.end, s.rate) for s in segs] == [(0, 50, 10), (55, 105, 40)]
    for process in ("poisson", "constant"):
        times = arrivals(segs, process, seed=1)
        assert times == sorted(times) and all(segs[i].start <= t < segs[i].end for t, i in times)
        counts = [sum(i == k for _, i in times) for k in range(2)]
        assert counts[0] == pytest.approx(500, rel=0.1) and counts[1] == pytest.approx(2000, rel=0.1), counts
    assert len(arrivals(segs, "constant")) == 2500
    assert arrivals(segs, "poisson", seed=3) == arrivals(segs, "poisson", seed=3)  # reproducible
    with pytest.raises(ValueError, match="arrival process"):
        arrivals(segs, "bursty")


def test_traces_scale_to_a_mean_rate_and_keep_their_shape(tmp_path):
    rows = read_trace(ROOT / "loadtests" / "traces" / "spike.csv")
    segs = trace_segments(rows, mean_rps=12.0, time_scale=0.1)
    assert [s.seconds for s in segs] == pytest.approx([6.0] * 4)
    mean = sum(s.rate * s.seconds for s in segs) / segs[-1].end
    assert mean == pytest.approx(12.0) and segs[2].rate == pytest.approx(5 * segs[0].rate)
    for name in ("steady", "step", "bursty"):
        assert read_trace(ROOT / "loadtests" / "traces" / f"{name}.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("minute,count\n1,2\n")
    with pytest.raises(ValueError, match="seconds,requests"):
        read_trace(bad)


def oev(t, segment, latency=100.0, lag=0.0, ok=1, status=200, correct=1, flops=1.0, retry_after=""):
    return {
        "t": str(t),
        "segment": str(segment),
        "latency_ms": str(latency),
        "lag_ms": str(lag),
        "ok": str(ok),
        "status": str(status),
        "correct": str(correct) if ok else "",
        "flops_ratio": str(flops) if ok else "",
        "heads_ratio": str(flops) if ok else "",
        "retry_after": retry_after,
    }


def test_segment_rows_count_misses_from_the_scheduled_start():
    segs = [Segment(0, 10, 1.0), Segment(12, 22, 0.6)]
    events = [
        oev(1, 0),
        oev(2, 0, latency=200, lag=60),  # 260 ms from its scheduled start: a miss
        oev(3, 0, ok=0, status=503, retry_after="1"),
        oev(4, 0, ok=0, status=503),
        oev(5, 0, ok=0, status=0),
        oev(15, 1, latency=30000, flops=0.5, correct=0),
    ]
    r0, r1 = segment_rows(events, segs, slo_ms=250, scheduled=[6, 2])
    assert (r0["requests"], r0["sent_rps"], r0["slo_attainment"]) == (6, 0.6, round(1 / 6, 4))
    assert (r0["error_rate"], r0["rejected_rate"], r0["rejected_no_retry_after"]) == (
        round(4 / 6, 4),
        round(2 / 6, 4),
        1,
    )
    assert r0["unanswered"] == 2  # the connection error and the one that left no event
    assert r0["p50_ms"] == 180.0 and r0["achieved_rps"] == 0.2
    assert (r1["slo_attainment"], r1["accuracy"], r1["flops_ratio"], r1["heads_ratio"]) == (
        0.0,
        0.0,
        0.5,
        0.5,
    )
    assert r1["achieved_rps"] == round(1 / 33, 3)  # answered 33 s after the segment began: a drained queue


def test_capacity_is_the_last_rate_before_the_first_miss():
    rows = [
        {"offered_rps": r, "slo_attainment": a} for r, a in ((10, 1.0), (20, 0.995), (30, 0.9), (40, 1.0))
    ]
    assert capacity(rows)["offered_rps"] == 20
    assert capacity([{"offered_rps": 5, "slo_attainment": 0.5}]) is None


def test_the_probe_passes_over_one_missing_rate_between_two_that_hold():
    def rows(attained):
        return [{"offered_rps": 10 * (k + 1), "slo_attainment": a} for k, a in enumerate(attained)]

    assert capacity(rows([0.97, 1.0, 1.0, 0.9, 0.8]), blips=1)["offered_rps"] == 30
    assert capacity(rows([0.97, 1.0, 1.0, 0.9, 0.8])) is None  # the grid's rule: every lower rate holds
    assert capacity(rows([1.0, 0.97, 0.9, 1.0]), blips=1)["offered_rps"] == 10  # two misses in a row: stop
    assert capacity(rows([1.0, 0.97]), blips=1)["offered_rps"] == 10


def _g(mode, rate, att, acc=0.9, trace="grid", seg=0):
    return {
        "mode": mode,
        "trace": trace,
        "segment": seg,
        "offered_rps": rate,
        "slo_attainment": att,
        "accuracy": acc,
        "flops_ratio": 1.0 if mode == "dense" else 0.4,
    }


def test_findings_compare_modes_at_1_5x_dense_capacity():
    comb = [
        _g("dense", 10, 1.0, 0.92),
        _g("dense", 20, 0.995),
        _g("dense", 30, 0.4),
        _g("auto", 10, 1.0, 0.918),
        _g("auto", 20, 1.0),
        _g("auto", 30, 0.99, 0.91),
        _g("auto", 40, 0.7),
    ]
    f = findings(comb)
    assert f["compare_rps_wanted"] == 30
    d, a = f["modes"]["dense"], f["modes"]["auto"]
    assert (d["capacity_rps"], a["capacity_rps"], a["x_dense"], a["accuracy_at_capacity"]) == (
        20,
        30,
        1.5,
        0.91,
    )
    assert (d["at_compare"]["slo_attainment"], a["at_compare"]["slo_attainment"]) == (0.4, 0.99)
    assert a["low_load_accuracy"] == 0.918


def test_trace_totals_separate_documented_503s_from_failures():
    row = {
        "mode": "auto",
        "trace": "spike",
        "requests": 10,
        "slo_attainment": 0.5,
        "rejected_rate": 0.3,
        "rejected_no_retry_after": 0,
        "error_rate": 0.4,
        "unanswered": 1,
        "offered_rps": 50,
    }
    (t,) = trace_totals([row, {**row, "trace": "grid"}])
    assert (t["requests"], t["within_slo"], t["rejected"], t["other_failures"], t["unanswered"]) == (
        10,
        5,
        3,
        1,
        1,
    )


# --- the command's contract ---


@needs_locust
@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "0.5,x"], "comma-separated"),
        (["--segment-seconds", "0"], "--segment-seconds"),
        (["--trace", "nope.csv"], "trace file not found"),
        (["--modes", "auto"], "must include dense"),
        (["--data", "no-such-task"], "unknown task"),
        (["--data", "missing.csv"], "data file not found"),
        (["--rounds", "0"], "--rounds"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert (
        main(
            [
                "loadtest",
                str(ROOT / "bundles" / "none"),
                "--url",
                "http://127.0.0.1:9",
                "--out",
                str(out),
                *args,
            ]
        )
        == 2
    )
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
    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *a],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    listed = run("--list")
    assert listed.returncode == 0 and "ClassifyUser" in listed.stdout and "InferUser" in listed.stdout, (
        listed.stderr
    )
    # the open-loop user runs its schedule and nothing else (a task inherited from ClassifyUser once sent
    # unscheduled requests, and shifted the examples a mode was sent against the other modes')
    tasks = subprocess.run(
        [
            sys.executable,
            "-c",
            "import loadtests.locustfile as f; print([t.__qualname__ for t in f.OpenLoopUser.tasks])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert tasks.returncode == 0 and tasks.stdout.strip() == "['OpenLoopUser.classify']", (
        tasks.stdout + tasks.stderr
    )
    bad = run("--headless", "--host", "http://127.0.0.1:9", "--data", str(tmp_path / "missing.csv"))
    assert bad.returncode != 0 and "locustfile: error: data file not found" in bad.stderr
    assert "Traceback" not in bad.stderr


@needs_locust
@pytest.mark.serve
def test_quick_sweep_end_to_end(tmp_path):
    """`dihs loadtest --quick` starts real services (float32 and int8) and writes every mode's rows; the open
    loop holds the offered rate at 2.5x dense's probed capacity, whatever the service does with it."""
    from dihs_model.bundle import new_bundle, save_bundle
    from dihs_model.calibrate import calibrate_bundle
    from dihs_model.data import Examples
    from tests.conftest import make_tiny_checkpoint, write_reviews_csv

    texts = ["good great fun", "bad awful dull", "love the movie", "hate the plot"] * 4
    bundle = calibrate_bundle(
        new_bundle(str(make_tiny_checkpoint(tmp_path)), ["neg", "pos"], 32),
        Examples(texts, [1, 0, 1, 0] * 4, ["neg", "pos"]),
        progress=False,
    )
    path = save_bundle(bundle, tmp_path / "bundle")
    data = write_reviews_csv(tmp_path / "reviews.csv", n=80)
    out = tmp_path / "sweep"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dihs_cli",
            "loadtest",
            str(path),
            "--quick",
            "--data",
            str(data),
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
    )
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    with (out / "sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {
        "mode",
        "trace",
        "offered_rps",
        "sent_rps",
        "achieved_rps",
        "slo_attainment",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "error_rate",
        "rejected_rate",
        "accuracy",
        "flops_ratio",
        "heads_ratio",
    } <= set(rows[0])
    assert {r["mode"] for r in rows} == {"dense", "dense-default", "f50", "auto", "auto-default"}
    assert len(rows) == 5 * 3 and {r["trace"] for r in rows} == {"grid"}  # 5 modes x 3 rates
    runs = json.loads((out / "runs.json").read_text())
    probe_cap = runs["meta"]["probe_capacity"]
    for row in rows:
        offered = float(row["offered_rps"])
        sent = float(row["sent_rps"])
        assert int(row["requests"]) > 0 and 0 <= float(row["slo_attainment"]) <= 1, row
        # Poisson counts over a few seconds: the rate started is the rate asked, give or take chance
        assert abs(sent - offered) <= 4 * math.sqrt(offered / 3) + 1, row
        answered = float(row["error_rate"]) < 1
        assert not answered or 0 <= float(row["accuracy"]) <= 1, row
    top = [r for r in rows if float(r["offered_rps"]) == max(float(x["offered_rps"]) for x in rows)]
    assert float(top[0]["offered_rps"]) >= min(2.5 * probe_cap, runs["meta"]["grid_rates"][-1]) - 0.01
    assert all(
        float(r["flops_ratio"]) == 1.0 for r in rows if r["mode"].startswith("dense") and r["accuracy"]
    )
    assert all(float(r["flops_ratio"]) <= 0.5 for r in rows if r["mode"] == "f50" and r["accuracy"])
    assert (out / "sweep.png").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "| auto-default |" in summary and "capacity" in summary and "Placement:" in summary
    assert "ServeReplica" not in summary and runs["meta"]["placement"]
    grid_runs = [r for r in runs["runs"] if r["trace"] != "probe"]
    assert grid_runs and all(r["warmup_rps"] > 0 for r in grid_runs)
    assert all(f"{r['run']} {r['warmup_rps']:g}" in summary for r in grid_runs)  # the speed check, per run


def test_burst_accuracy_is_paired_on_the_examples_both_modes_answered():
    from loadtests.burst import paired_burst_accuracy

    dense = [{"status": 200, "example": k, "correct": k != 3} for k in range(5)]
    dense.append({"status": 503, "example": 5})  # refused: not an answer
    auto = [
        {"status": 200, "example": k % 7, "correct": k not in (1, 8)} for k in range(10)
    ]  # 1 wrong, then right
    got = paired_burst_accuracy(dense, auto)
    assert got["examples"] == 5  # examples 0-4: 5 and 6 only auto answered
    assert (
        got["dense_accuracy"] == 0.8 and got["adaptive_accuracy"] == 0.8
    )  # auto's first answer of example 1 counts
    assert got["adaptive_minus_dense_points"] == 0.0
    assert paired_burst_accuracy([], auto) == {"examples": 0}


def test_the_texts_sent_are_the_given_data_else_the_bundles_task_else_election_tweets(tmp_path):
    from dihs_model.bundle import save_bundle
    from loadtests.common import task_of
    from tests.conftest import tiny_calibrated_bundle

    bundle = tiny_calibrated_bundle(tmp_path / "ckpt")
    bundle.meta["data"] = {"spec": "/data/speeches.csv", "text_column": "body", "label_column": "party"}
    tmp_path = save_bundle(bundle, tmp_path / "bundle")
    assert task_of("reuters-r8", "text", "label", str(tmp_path)) == ("reuters-r8", "text", "label")
    assert task_of(None, "text", "label", str(tmp_path)) == ("/data/speeches.csv", "body", "party")
    assert task_of(None, "text", "label", None) == ("election-tweets", "text", "label")  # a running service
    assert task_of(None, "text", "label", str(tmp_path / "none")) == ("election-tweets", "text", "label")


def test_pinning_a_process_that_has_ended_is_no_error():
    """The sweep pins every process of the service's group; one may end between being listed and
    being pinned (a CI run failed on /proc/PID/task vanishing)."""
    import subprocess
    import sys

    from loadtests.placement import _pin

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert _pin(p.pid, {0}) is False
