"""Policy: monotone, bounded, deterministic (property-based); complexity: in [0, 1], deterministic."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dihs_model.complexity import ComplexityScorer, raw_signals
from dihs_model.policy import PolicyConfig, choose_level, limits_error

LADDER = [1.0, 0.75, 0.5, 0.35, 0.25]
unit = st.floats(0.0, 1.0)


@given(c1=unit, c2=unit, p=unit)
def test_more_complexity_never_lowers_the_budget(c1, c2, p):
    lo, hi = sorted((c1, c2))
    assert LADDER[choose_level(LADDER, hi, p).level] >= LADDER[choose_level(LADDER, lo, p).level]


@given(c=unit, p1=unit, p2=unit)
def test_more_pressure_never_raises_the_budget(c, p1, p2):
    lo, hi = sorted((p1, p2))
    assert LADDER[choose_level(LADDER, c, hi).level] <= LADDER[choose_level(LADDER, c, lo).level]


@settings(max_examples=300)
@given(c=unit, p=unit, a=unit, b=unit, mode=st.sampled_from(["auto", "fixed", "dense"]))
def test_budget_stays_within_the_request_limits(c, p, a, b, mode):
    lo, hi = sorted((a, b))
    if limits_error(LADDER, lo, hi):
        return
    d = choose_level(LADDER, c, p, mode, lo, hi)
    r = LADDER[d.level]
    if mode == "dense":
        assert r == 1.0
    else:
        assert lo - 1e-9 <= r <= hi + 1e-9 and r >= LADDER[-1]
    assert d == choose_level(LADDER, c, p, mode, lo, hi)  # deterministic


def test_no_pressure_means_the_full_model_and_full_pressure_the_floor():
    assert choose_level(LADDER, 0.0, 0.0).level == 0
    assert choose_level(LADDER, 0.0, 1.0).level == len(LADDER) - 1
    assert choose_level(LADDER, 1.0, 1.0).level < len(LADDER) - 1  # complex inputs keep more heads
    assert "min_flops_ratio" in limits_error(LADDER, 0.8, 0.2)
    assert limits_error(LADDER, 0.0, 0.1).startswith("no budget level")


@given(st.lists(st.lists(st.integers(5, 63), min_size=1, max_size=20), min_size=1, max_size=8))
def test_complexity_scores_are_in_unit_interval_and_deterministic(seqs):
    class Tok:
        def get_vocab(self):
            return {f"##p{i}": i for i in range(40, 64)} | {f"w{i}": i for i in range(5, 40)}

    T = max(map(len, seqs))
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    scorer = ComplexityScorer.fit(Tok(), [(ids, mask)])
    a, b = scorer.signals(ids, mask), scorer.signals(ids, mask)
    assert a == b
    assert all(0.0 <= x["score"] <= 1.0 for x in a)
    again = ComplexityScorer.from_meta({"complexity": scorer.to_meta()}, Tok())
    assert again.signals(ids, mask) == a
    # the "##" share is counted as a plain membership test counts it (ids 64+ lie past the vocabulary)
    wide = torch.where(ids == 63, torch.full_like(ids, 70), ids)
    pieces = torch.tensor(sorted(i for t, i in Tok().get_vocab().items() if t.startswith("##")))
    expected = (torch.isin(wide, pieces) & mask.bool()).sum(1).float() / mask.sum(1)
    assert raw_signals(wide, mask, scorer.continuation)[1] == expected.tolist()


def _meta_with_auroc(auroc):
    return {"cascade": {"signals": {"signals": {"length_and_subword": {"auroc": auroc, "flops_share": 0.0}}}}}


@pytest.mark.parametrize("auroc, protect", [(0.5, 0.0), (0.45, 0.0), (0.75, 0.5), (1.0, 1.0), (0.6, 0.2)])
def test_complexity_gets_a_say_only_as_far_as_it_predicts_errors(auroc, protect):
    assert PolicyConfig.from_meta(_meta_with_auroc(auroc)).protect == pytest.approx(protect)


def test_bundles_without_the_measurement_keep_the_old_default():
    assert PolicyConfig.from_meta({}) == PolicyConfig()
    assert PolicyConfig.from_meta(_meta_with_auroc(None)) == PolicyConfig()


def test_with_a_chance_level_signal_every_input_gets_the_same_budget_under_pressure():
    cfg = PolicyConfig.from_meta(_meta_with_auroc(0.5))
    ladder = [1.0, 0.75, 0.5, 0.35, 0.25]
    levels = {choose_level(ladder, c, 1.0, cfg=cfg).level for c in (0.0, 0.3, 0.7, 1.0)}
    assert levels == {len(ladder) - 1}
