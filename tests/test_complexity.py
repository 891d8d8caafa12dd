"""dihs_model.complexity: raw token signals (padding, out-of-vocabulary ids), percentiles against stored
quantiles, fitted quantiles, and the score's monotonicity (test_policy covers range and determinism)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dihs_model.complexity import N_QUANTILES, ComplexityScorer, raw_signals


class Tok:
    """Plain words at ids 0-9, "##" continuation pieces at ids 10-19."""

    def get_vocab(self):
        return {f"w{i}": i for i in range(10)} | {f"##p{i}": i for i in range(10, 20)}


def _batch(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r, dtype=torch.long), 1
    return ids, mask


def _scorer(length_q: list[float], subword_q: list[float]) -> ComplexityScorer:
    return ComplexityScorer.from_meta(
        {"complexity": {"length_quantiles": length_q, "subword_quantiles": subword_q}}, Tok()
    )


def test_raw_signals_count_real_tokens_and_their_continuation_share():
    cont = _scorer([0.0] * N_QUANTILES, [0.0] * N_QUANTILES).continuation
    # padding with a "##" id must not count; ids past the vocabulary (25) are no pieces
    ids, mask = _batch([[1, 11, 12, 2], [13], [3, 25, 11]], pad_id=15)
    lengths, rates = raw_signals(ids, mask, cont)
    assert lengths == [4.0, 1.0, 3.0]
    assert rates == pytest.approx([0.5, 1.0, 1 / 3], abs=1e-6)


def test_an_input_with_no_real_tokens_has_a_zero_rate_not_a_nan():
    ids = torch.tensor([[11, 12]])
    lengths, rates = raw_signals(ids, torch.zeros_like(ids), _scorer([0.0], [0.0]).continuation)
    assert lengths == [0.0] and rates == [0.0]


def test_percentiles_are_the_empirical_cdf_of_the_stored_quantiles():
    # the calibration lengths were 0..100 (one per quantile); subword rates all 0.5
    scorer = _scorer([float(i) for i in range(N_QUANTILES)], [0.5] * N_QUANTILES)
    ids, mask = _batch([[11] * 30, [1] * 30, [1] * 101, [11, 1]])
    s = scorer.signals(ids, mask)
    assert [x["tokens"] for x in s] == [30, 30, 101, 2]
    # 30 lies on one quantile: mid-rank 30.5 of 100
    assert s[0]["length_percentile"] == pytest.approx(0.305, abs=1e-4)
    assert s[2]["length_percentile"] == 1.0  # past every calibration input
    # rates 1.0, 0.0 and 0.5 against a calibration where every rate was 0.5
    assert [x["subword_percentile"] for x in s] == [1.0, 0.0, 0.0, pytest.approx(0.505, abs=1e-4)]
    for x in s:
        assert x["score"] == pytest.approx((x["length_percentile"] + x["subword_percentile"]) / 2, abs=1e-4)


def test_fit_stores_the_calibration_quantiles_and_round_trips_through_meta():
    batches = [_batch([[1] * n for n in range(1, 6)]), _batch([[11, 1] * 3, [11] * 4])]
    scorer = ComplexityScorer.fit(Tok(), batches)
    meta = scorer.to_meta()
    assert len(meta["length_quantiles"]) == len(meta["subword_quantiles"]) == N_QUANTILES
    assert meta["length_quantiles"][0] == 1.0 and meta["length_quantiles"][-1] == 6.0
    assert meta["subword_quantiles"][0] == 0.0 and meta["subword_quantiles"][-1] == 1.0
    assert meta["length_quantiles"] == sorted(meta["length_quantiles"])
    again = ComplexityScorer.from_meta({"complexity": meta}, Tok())
    ids, mask = _batch([[1, 11, 12], [2] * 7])
    assert again.signals(ids, mask) == scorer.signals(ids, mask)


@settings(max_examples=40, deadline=None)
@given(
    plain=st.integers(1, 30),
    pieces=st.integers(0, 30),
    more_plain=st.integers(0, 10),
    more_pieces=st.integers(1, 10),
)
def test_adding_continuation_pieces_never_lowers_the_score(plain, pieces, more_plain, more_pieces):
    g = torch.Generator().manual_seed(0)
    length_q = torch.randint(1, 40, (N_QUANTILES,), generator=g).sort().values.float().tolist()
    subword_q = torch.rand(N_QUANTILES, generator=g).sort().values.tolist()
    scorer = _scorer(length_q, subword_q)
    base = [1] * plain + [11] * pieces
    # longer, and at least as high a share of pieces: more_pieces / (more_plain + more_pieces) is added
    # only where it does not dilute the share
    extra = [1] * more_plain + [11] * more_pieces
    if more_pieces / len(extra) < pieces / len(base):
        extra = [11] * more_pieces
    ids, mask = _batch([base, base + extra])
    a, b = scorer.signals(ids, mask)
    assert b["length_percentile"] >= a["length_percentile"]
    assert b["subword_percentile"] >= a["subword_percentile"]
    assert b["score"] >= a["score"]
