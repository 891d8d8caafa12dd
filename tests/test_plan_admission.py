"""Plan admission on live agreement: drift withdraws a plan, counts survive a restart, another
bundle's counts are not applied."""

import json

from dihs_model.admission import Evidence
from service.plan_admission import PlanAdmission
from tests.conftest import ManualClock

NAMES = ["full", "cascade 0.5", "cascade 0.3"]


def admission(tmp_path, bundle_id="b1", **kw):
    ev = [None, Evidence(700, 0, 0), Evidence(80, 0, 0)]
    return PlanAdmission(NAMES, ev, 0.005, tmp_path / "live.json", bundle_id, clock=ManualClock(), **kw)


def test_calibration_evidence_alone_admits_only_what_it_bounds(tmp_path):
    a = admission(tmp_path)
    assert a.admitted() == [True, True, False]  # 0 in 700: bound 0.43%; 0 in 80: 3.7%
    report = a.report()
    assert report["texts_needed_if_all_agree"] == 598
    assert [p["admitted"] for p in report["plans"]] == [True, True, False]
    assert report["plans"][2]["calibration_texts"] == 80 and report["plans"][2]["loss_bound95"] == 0.0368
    assert "cascade 0.3 out (bound 0.037 on 80+0 texts)" in a.summary()


def test_agreeing_traffic_admits_and_drift_withdraws(tmp_path):
    a = admission(tmp_path)
    changed = a.record(2, [True] * 600)
    assert changed == [2] and a.admitted()[2]
    texts = 0
    while a.admitted()[1]:  # traffic the plan now answers differently: after how many texts is it out?
        a.record(1, [False])
        texts += 1
    assert 1 <= texts <= 5  # 700 agreeing calibration texts leave room for very few disagreements
    assert a.evidence(1).live_disagree == texts


def test_counts_survive_a_restart_and_another_bundles_do_not_apply(tmp_path):
    a = admission(tmp_path)
    a.record(2, [True] * 590 + [False] * 10)
    a.save()
    saved = json.loads((tmp_path / "live.json").read_text())
    assert saved["bundle"] == "b1" and len(saved["plans"]["cascade 0.3"]) == 600
    again = admission(tmp_path)
    assert again.evidence(2).live_n == 600 and again.evidence(2).live_disagree == 10
    other = admission(tmp_path, bundle_id="b2")
    assert other.evidence(2).live_n == 0


def test_the_window_ages_old_traffic_out(tmp_path):
    a = admission(tmp_path, window=100)
    a.record(2, [False] * 100)
    a.record(2, [True] * 100)
    assert a.evidence(2).live_n == 100 and a.evidence(2).live_disagree == 0


def test_an_unwritable_folder_keeps_counts_in_memory(tmp_path):
    store = tmp_path / "missing-dir" / "live.json"
    a = PlanAdmission(
        NAMES, [None, Evidence(700, 0, 0), Evidence(80, 0, 0)], 0.005, store, "b1", clock=ManualClock()
    )
    a.record(1, [True])
    a.save()
    assert not store.exists() and a.evidence(1).live_n == 1
