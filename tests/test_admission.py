"""The 95% bound that admits a plan: exact one-sided Clopper-Pearson on events per text."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dihs_model.admission import Evidence, texts_needed, upper_bound


def test_the_bound_with_no_events_is_the_rule_of_three_exactly():
    # 0 disagreements in 80 texts: the loss may still be 3.7% (the figure)
    assert upper_bound(0, 80) == pytest.approx(1 - 0.05 ** (1 / 80))
    assert round(upper_bound(0, 80), 4) == 0.0368
    assert upper_bound(0, 0) == 1.0 and upper_bound(5, 5) == 1.0


def test_texts_needed_is_the_fewest_whose_bound_passes():
    n = texts_needed(0.005)
    assert n == 598
    assert upper_bound(0, n) <= 0.005 < upper_bound(0, n - 1)
    assert texts_needed(1.0) == 0


@given(st.integers(0, 50), st.integers(1, 3000))
def test_the_bound_lies_above_the_rate_and_falls_with_more_texts(events, n):
    events = min(events, n)
    b = upper_bound(events, n)
    assert b >= events / n
    assert upper_bound(events, 2 * n) <= b + 1e-12  # the same rate on more texts: tighter
    if events < n:
        assert upper_bound(events + 1, n) >= b  # one more event: looser


def test_evidence_pools_calibration_and_live_texts():
    calib = Evidence(calib_n=80, calib_worse=0, calib_better=1)
    assert not calib.admitted(0.005)  # 80 agreeing texts cannot promise half a point
    assert calib.calib_loss == pytest.approx(-1 / 80)
    grown = calib.with_live(600, 0)
    assert grown.texts == 680 and grown.admitted(0.005)  # agreeing traffic tightens the bound
    drifted = calib.with_live(600, 12)
    assert not drifted.admitted(0.005) and drifted.bound > 0.02
    assert Evidence(0, 0, 0).admitted(1.0) and not Evidence(0, 0, 0).admitted(0.99)
    r = grown.report(0.005)
    assert r["admitted"] and r["calibration_texts"] == 80 and r["live_texts"] == 600
