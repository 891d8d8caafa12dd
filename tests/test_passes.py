"""forward_grouped's length chunks: the cheapest split, and the same logits as one row at a time."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dihs_model.budget import Budget
from dihs_model.passes import chunks_for, forward_grouped, length_chunks
from tests.conftest import tiny_classifier


def _cost(lengths, runs, fixed):
    return sum(fixed + len(r) * max(lengths[i] for i in r) for r in runs)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 128), min_size=1, max_size=7), st.sampled_from([0.0, 8.0, 32.0, 1000.0]))
def test_chunks_cover_every_row_once_at_the_least_cost(lengths, fixed):
    runs = length_chunks(lengths, fixed)
    assert sorted(i for r in runs for i in r) == list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    cheapest = min(  # every split of the sorted rows into consecutive runs
        _cost(lengths, [order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))], fixed)
        for k in range(len(order))
        for cuts in itertools.combinations(range(1, len(order)), k)
    )
    assert _cost(lengths, runs, fixed) == pytest.approx(cheapest)


def test_a_huge_fixed_cost_keeps_one_chunk_and_none_splits_by_length():
    assert length_chunks([5, 80, 6, 81], 1e9) == [[0, 2, 1, 3]]
    assert length_chunks([5, 80, 6, 81], 0.0) == [[0], [2], [1], [3]]
    shape = tiny_classifier().shape
    assert chunks_for([5, 80], None, shape, "cuda") == [[0, 1]]  # a GPU pads instead
    assert chunks_for([5, 80], None, shape, "cpu") == [[0], [1]]


@pytest.mark.parametrize("ratio", [None, 0.5])  # the full model, half the heads and neurons
def test_chunked_rows_get_the_logits_they_get_alone(ratio):
    torch.manual_seed(0)
    model = tiny_classifier().eval()
    lengths = [3, 30, 4, 28, 16, 2]
    ids = torch.randint(5, 64, (len(lengths), max(lengths)))
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    shape = model.shape
    budget = (
        None
        if ratio is None
        else Budget(
            "half", tuple([shape.n_heads // 2] * shape.n_layers), tuple([shape.ffn // 2] * shape.n_layers)
        )
    )
    assert len(chunks_for(lengths, budget, shape, "cpu")) > 1  # the batch really runs in several chunks
    got = forward_grouped(model, ids, mask, [budget] * len(lengths))
    for i, n in enumerate(lengths):
        with torch.inference_mode():
            alone = model(ids[i : i + 1, :n], mask[i : i + 1, :n], budget=budget).logits[0]
        torch.testing.assert_close(got[i], alone, rtol=1e-5, atol=1e-5)
