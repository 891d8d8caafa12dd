"""Load pressure driven by a simulated load trace: rises, holds steady, recovers."""

import math

import pytest

from dihs_model.policy import choose_level
from service.load import LoadConfig, LoadTracker

LADDER = [1.0, 0.75, 0.5, 0.35, 0.25]


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _step(tracker, clock, depth, latency_s, dt=0.05):
    """One batch interval: keep `depth` requests in flight, finish them at `latency_s`."""
    while tracker.queue_depth < depth:
        tracker.started()
    clock.t += dt
    while tracker.queue_depth > depth:
        tracker.finished(latency_s)
    if depth:
        tracker.finished(latency_s)
        tracker.started()
    return tracker.pressure()


def test_pressure_rises_under_load_holds_steady_and_recovers():
    clock = Clock()
    tr = LoadTracker(LoadConfig(slo_s=0.2, queue_capacity=32), clock=clock)
    idle = [_step(tr, clock, 0, 0.02) for _ in range(20)]
    assert max(idle) == 0.0

    burst = [_step(tr, clock, 24, 0.18) for _ in range(200)]
    assert burst[5] > 0.5 and burst[-1] > 0.7
    steady = burst[50:]
    levels = [choose_level(LADDER, 0.3, p).level for p in steady]
    assert len(set(levels)) == 1, "a steady load must not make the budget oscillate"
    assert max(steady) - min(steady) < 0.05

    after = [_step(tr, clock, 0, 0.0, dt=0.1) for _ in range(100)]
    assert after[-1] == 0.0
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:])), "recovery is monotone"


def test_noisy_steady_load_does_not_oscillate():
    import random

    rng = random.Random(0)
    clock = Clock()
    tr = LoadTracker(LoadConfig(slo_s=0.2, queue_capacity=32), clock=clock)
    ps = [_step(tr, clock, 16 + rng.randint(-2, 2), 0.15 + rng.uniform(-0.01, 0.01)) for _ in range(300)]
    levels = [choose_level(LADDER, 0.5, p).level for p in ps[60:]]
    changes = sum(a != b for a, b in zip(levels, levels[1:]))
    assert changes <= 2, f"{changes} level changes on a steady load"


def test_gpu_utilization_term():
    clock = Clock()
    tr = LoadTracker(LoadConfig(slo_s=0.2, queue_capacity=32), clock=clock, gpu_utilization=lambda: 1.0)
    assert abs(tr.terms()["gpu"] - 1.0) < 1e-9
    assert LoadTracker(LoadConfig(0.2, 32), clock=clock, gpu_utilization=lambda: 0.5).terms()["gpu"] == 0.0
    assert LoadTracker(LoadConfig(0.2, 32), clock=clock).terms().keys() == {"queue", "latency"}


def test_one_batch_in_flight_is_no_queue_pressure():
    clock = Clock()
    tr = LoadTracker(LoadConfig(slo_s=0.2, queue_capacity=32, batch=16), clock=clock)
    for _ in range(16):
        tr.started()
    assert tr.terms()["queue"] == 0.0  # a full batch computing: nothing waits for another batch
    for _ in range(8):
        tr.started()
    assert tr.terms()["queue"] == 8 / 32


def _burst(tr, clock, batches: int = 100):
    for _ in range(batches):
        _step(tr, clock, 24, 0.24)
    while tr.queue_depth:
        tr.finished(0.24)
    return tr.pressure()


def test_pressure_decays_with_time_not_with_batches():
    """After a burst and 5 s without traffic the first batch sees no pressure, however few batches
    ran in between (per-batch smoothing left 0.83 after 60 s of silence)."""
    clock = Clock()
    tr = LoadTracker(LoadConfig(slo_s=0.25, queue_capacity=32), clock=clock)
    assert _burst(tr, clock) > 0.8
    clock.t += 5.0
    assert tr.published == 0.0  # read without a batch: already decayed
    assert tr.pressure() == 0.0


def test_pressure_after_a_short_pause_has_fallen_by_its_time_constant():
    clock = Clock()
    cfg = LoadConfig(slo_s=0.25, queue_capacity=32)
    tr = LoadTracker(cfg, clock=clock)
    p0 = _burst(tr, clock)
    clock.t += 1.0
    latency_left = 0.24 * math.exp(-1.0 / cfg.idle_decay_s)  # the EWMA decays while idle, too
    assert latency_left / cfg.slo_s < 0.5  # so the raw pressure is 0 and only the smoothing holds it up
    p1 = tr.pressure()
    assert p1 == pytest.approx(p0 * math.exp(-1.0 / cfg.fall_tau_s))
    assert tr.published == p1  # no time has passed since


def test_a_burst_after_quiet_raises_pressure_within_its_first_batches():
    clock = Clock()
    tr = LoadTracker(LoadConfig(slo_s=0.25, queue_capacity=32), clock=clock)
    clock.t += 30.0
    ps = [_step(tr, clock, 24, 0.24) for _ in range(3)]
    assert ps[0] > 0.5  # 30 s since the last update: the first batch takes the raw pressure at once
