"""dihs_model.budget: the Budget type's checks, names and meta records, the FLOPs formulas, allocation's
edge cases and the Allocator built from a bundle's meta (test_surgery covers allocation accuracy)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dihs_model.arch import EncoderShape
from dihs_model.budget import (
    FULL_NAME,
    Allocator,
    Budget,
    allocate,
    budget_name,
    encoder_flops,
    head_flops,
    heads_only,
    level_name,
    neuron_flops,
    unit_costs,
)

SHAPE = EncoderShape(
    n_layers=2, n_heads=4, head_dim=8, hidden=32, ffn=16, attn_dropout=0.0, hidden_dropout=0.0
)


def _scores(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Head [L, H] and neuron [L, F] scores, descending within each layer (the stored order)."""
    g = torch.Generator().manual_seed(seed)
    hs = torch.rand(SHAPE.n_layers, SHAPE.n_heads, generator=g).sort(1, descending=True).values
    ns = torch.rand(SHAPE.n_layers, SHAPE.ffn, generator=g).sort(1, descending=True).values * 0.1
    return hs, ns


def test_counts_are_stored_as_int_tuples_and_the_key_ignores_the_name():
    a = Budget("a", [2, torch.tensor(3)], (8.0, 16))
    assert a.heads == (2, 3) and a.neurons == (8, 16)
    assert all(type(x) is int for x in a.heads + a.neurons)
    b = Budget("b", (2, 3), (8, 16))
    assert a.key == b.key and a != b


def test_heads_and_neurons_need_one_count_per_layer():
    with pytest.raises(AssertionError):
        Budget("x", (1, 2), (3,))


@pytest.mark.parametrize(
    "heads, neurons, message",
    [
        ((4, 4, 4), (16, 16, 16), "has 3 layers; the model has 2"),
        ((5, 4), (16, 16), "keeps more heads or neurons than a layer has"),
        ((4, 4), (16, 17), "keeps more heads or neurons than a layer has"),
        ((-1, 4), (16, 16), "keeps more heads or neurons"),
    ],
)
def test_check_refuses_a_budget_that_does_not_fit_the_shape(heads, neurons, message):
    with pytest.raises(ValueError, match=message) as e:
        Budget("bad", heads, neurons).check(SHAPE)
    assert "'bad'" in str(e.value)


def test_check_accepts_every_fitting_budget_including_empty_layers():
    Budget("z", (0, 0), (0, 0)).check(SHAPE)
    Budget.full(SHAPE).check(SHAPE)


def test_full_budget_is_full_and_named_f100():
    full = Budget.full(SHAPE)
    assert full.heads == (4, 4) and full.neurons == (16, 16) and full.name == FULL_NAME
    assert full.is_full(SHAPE)
    assert not Budget("h", (4, 3), (16, 16)).is_full(SHAPE)
    assert not Budget("n", (4, 4), (16, 15)).is_full(SHAPE)
    assert budget_name(None) == FULL_NAME and budget_name(Budget("f50", (2, 2), (8, 8))) == "f50"


@pytest.mark.parametrize("target, name", [(1.0, FULL_NAME), (0.5, "f50"), (0.35, "f35"), (0.075, "f8")])
def test_level_names_are_the_target_in_percent(target, name):
    assert level_name(target) == name


def test_counts_meta_round_trips_and_to_meta_adds_rounded_ratios_and_extras():
    b = Budget("f50", (2, 1), (8, 4))
    assert Budget.from_meta(b.counts_meta()) == b
    assert b.counts_meta() == {"name": "f50", "heads": [2, 1], "neurons": [8, 4]}
    rec = b.to_meta(SHAPE, [10, 20], target_flops_ratio=0.5)
    assert rec["target_flops_ratio"] == 0.5 and rec["heads"] == [2, 1]
    assert rec["heads_ratio"] == pytest.approx(3 / 8) and rec["neurons_ratio"] == pytest.approx(12 / 32)
    assert rec["flops_ratio"] == pytest.approx(b.flops_ratio(SHAPE, [10, 20]), abs=5e-5)
    assert rec["flops_ratio"] == round(rec["flops_ratio"], 4)


def test_unit_flops_follow_the_matmul_shapes():
    # T=10, C=32, d=8: Q/K/V rows and O columns (4 x T*C*d MACs), scores and weighted values
    # (2 x T*T*d MACs), 2 FLOPs per MAC; a neuron: one row of T*C and one column of T*C MACs
    assert head_flops(SHAPE, 10) == 2 * 10 * 32 * 8 * 4 + 2 * 10 * 10 * 8 * 2 == 23680
    assert neuron_flops(SHAPE, 10) == 2 * 10 * 32 * 2 == 1280
    assert unit_costs(SHAPE, [10, 10, 3]) == (
        2 * head_flops(SHAPE, 10) + head_flops(SHAPE, 3),
        2 * neuron_flops(SHAPE, 10) + neuron_flops(SHAPE, 3),
    )
    assert encoder_flops(SHAPE, [1, 2], [3, 0], 10) == 3 * 23680 + 3 * 1280


def test_the_flops_ratio_weighs_inputs_by_their_flops_not_equally():
    # half the heads, every neuron: attention (quadratic in T) dominates long inputs, so there the
    # ratio nears the heads ratio of 0.5, and the long input's FLOPs dominate a mixed ratio
    b = heads_only(SHAPE, (2, 2), "h")
    short, long = b.flops_ratio(SHAPE, [4]), b.flops_ratio(SHAPE, [60])
    assert 0.5 < long < short
    mixed = b.flops_ratio(SHAPE, [4, 60])
    assert long < mixed < (short + long) / 2 - 1e-2
    full = Budget.full(SHAPE)
    want = (b.flops(SHAPE, 4) + b.flops(SHAPE, 60)) / (full.flops(SHAPE, 4) + full.flops(SHAPE, 60))
    assert mixed == pytest.approx(want, rel=1e-12)


def test_heads_only_keeps_every_neuron():
    b = heads_only(SHAPE, [1, 3], "old")
    assert b.heads == (1, 3) and b.neurons == (16, 16) and b.neurons_ratio(SHAPE) == 1.0
    assert b.heads_ratio(SHAPE) == pytest.approx(0.5)


@settings(max_examples=40, deadline=None)
@given(
    heads=st.lists(st.integers(0, 4), min_size=2, max_size=2),
    neurons=st.lists(st.integers(0, 16), min_size=2, max_size=2),
    layer=st.integers(0, 1),
    tokens=st.lists(st.integers(1, 64), min_size=1, max_size=5),
)
def test_flops_ratio_is_in_the_unit_interval_and_grows_with_every_unit(heads, neurons, layer, tokens):
    b = Budget("b", heads, neurons)
    r = b.flops_ratio(SHAPE, tokens)
    assert 0.0 <= r <= 1.0 + 1e-12
    if heads[layer] < SHAPE.n_heads:
        more = list(heads)
        more[layer] += 1
        assert Budget("m", more, neurons).flops_ratio(SHAPE, tokens) > r
    if neurons[layer] < SHAPE.ffn:
        more = list(neurons)
        more[layer] += 1
        assert Budget("m", heads, more).flops_ratio(SHAPE, tokens) > r


def test_a_target_of_one_is_the_full_model_under_the_given_name():
    b = allocate(SHAPE, 1.0, [10], method="global", name="top")
    assert b.name == "top" and b.is_full(SHAPE)
    assert allocate(SHAPE, 1.0, [10]).name == FULL_NAME


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target=0.5, method="random"), "random"),
        (dict(target=0.0), "0.0"),
        (dict(target=1.5), "1.5"),
        (dict(target=0.5, method="global"), "global allocation needs importance scores"),
    ],
)
def test_allocation_refuses_bad_arguments(kwargs, message):
    with pytest.raises(AssertionError, match=message):
        allocate(SHAPE, tokens=[10], **kwargs)


def test_uniform_allocation_keeps_the_same_counts_per_layer_and_the_head_floor():
    b = allocate(SHAPE, 0.5, [10, 20], method="uniform")
    assert len(set(b.heads)) == 1 and len(set(b.neurons)) == 1 and b.name == "f50"
    tiny = allocate(SHAPE, 0.05, [10], method="uniform")
    assert tiny.heads == (1, 1)  # round(0.05 * 4) is 0 heads: the floor keeps one
    assert allocate(SHAPE, 0.05, [10], method="uniform", min_heads=2).heads == (2, 2)


def test_global_allocation_keeps_the_head_floor_and_stays_within_the_shape():
    hs, ns = _scores()
    for min_heads in (1, 2):
        b = allocate(SHAPE, 0.3, [12], hs, ns, "global", min_heads=min_heads)
        b.check(SHAPE)
        assert min(b.heads) >= min_heads


def test_allocator_from_meta_uses_the_bundles_scores_tokens_and_method():
    # under "fisher" layer 0's heads matter, under "michel" layer 1's: the two allocations differ
    hs = torch.tensor([[1.0, 0.9, 0.8, 0.7], [1e-4, 9e-5, 8e-5, 7e-5]])
    ns = torch.linspace(1e-3, 1e-4, SHAPE.ffn).repeat(SHAPE.n_layers, 1)
    meta = {
        "order_by": "fisher",
        "allocation": "global",
        "calibration": {"tokens": [7, 30, 12]},
        "importance": {
            "heads": {"fisher": hs.tolist(), "michel": hs.flip(0).tolist()},
            "neurons": {"fisher": ns.tolist(), "michel": ns.flip(0).tolist()},
        },
    }
    allocator = Allocator.from_meta(meta, SHAPE)
    assert allocator.method == "global" and allocator.tokens == [7, 30, 12]
    got = allocator(0.4)
    assert got == allocate(SHAPE, 0.4, [7, 30, 12], hs, ns, "global")
    assert got.heads[0] > got.heads[1]
    assert allocator.ratio(got) == pytest.approx(got.flops_ratio(SHAPE, [7, 30, 12]), rel=1e-12)
    uniform = Allocator.from_meta(meta, SHAPE, method="uniform")
    assert uniform(0.4, name="mine") == allocate(SHAPE, 0.4, [7, 30, 12], method="uniform", name="mine")
