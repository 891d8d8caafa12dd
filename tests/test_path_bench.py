"""The request-path benchmark's model-only runs and its summary (no service started here)."""

import time

import pytest

from loadtests.path_bench import model_only, summarize


class _Engine:
    """Engine.run's shape: fills the phases it timed; remembers when each batch started."""

    def __init__(self):
        self.starts = []

    def run(self, items, timing):
        self.starts.append(time.perf_counter())
        timing.update(tokenize=0.001 * len(items), forward=0.004 * len(items), decide=0.0, results=0.0)


def test_paced_model_runs_start_one_batch_per_interval():
    eng = _Engine()
    out = model_only(eng, ["a"] * 4, 1, {"mode": "dense"}, every_s=0.03)
    gaps = [b - a for a, b in zip(eng.starts, eng.starts[1:])]
    assert len(gaps) == 3 and min(gaps) >= 0.03  # the core idles between batches
    assert out["ms_per_batch"] == pytest.approx(5.0)  # the work's own time, not the pacing


def test_back_to_back_runs_do_not_wait():
    eng = _Engine()
    model_only(eng, ["a"] * 4, 2, {"mode": "dense"})
    assert len(eng.starts) == 2 and eng.starts[1] - eng.starts[0] < 0.03


def _round(idle_ms, b1_ms, paced_ms):
    svc = {"texts_per_s": 10.0, "replica_cpu_ms_per_text": 1.0}
    model = {"texts_per_s": 10.0, "forward_only_texts_per_s": 12.0}
    r = {
        "idle": {"latency_p50_ms": idle_ms},
        "naive": {"texts_per_s": 5.0},
        "service": {k: svc for k in ("full_1text", "l25_1text", "full_16text")},
        "model": {"full_b16": model, "l25_b16": model, "full_b1": {"ms_per_batch": b1_ms}},
    }
    if paced_ms is not None:
        r["model"]["full_b1_paced"] = {"ms_per_batch": paced_ms}
    return r


def test_summary_reports_idle_latency_against_both_batch1_times():
    s = summarize([_round(20.0, 14.0, 16.0), _round(22.0, 15.0, 18.0), _round(21.0, 14.0, None)], 16)
    assert s["idle_p50_minus_model_b1_ms"]["rounds"] == [6.0, 7.0, 7.0]
    assert s["idle_p50_minus_model_b1_paced_ms"]["rounds"] == [4.0, 4.0]  # a round without it is left out
    assert s["model_b1_paced_over_back_to_back"]["median"] == (16 / 14 + 18 / 15) / 2
