"""The surgery contract for width budgets (heads and FFN neurons), over every supported encoder
family with tiny random configs; and the FLOPs arithmetic and allocation of budget.py."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dihs_model.arch import encoder_parts, supported_families
from dihs_model.budget import Budget, allocate, encoder_flops
from dihs_model.surgery import allocate_heads, ffn_slices, output_cols, qkv_rows, reorder
from tests.conftest import random_batch, tiny_classifier, tiny_encoder

FAMILIES = supported_families()


def random_budget(shape, seed: int) -> Budget:
    """Any per-layer counts, sometimes none and sometimes all of a layer's heads or neurons."""
    g = torch.Generator().manual_seed(seed)
    L, H, F = shape.n_layers, shape.n_heads, shape.ffn
    heads = torch.randint(0, H + 1, (L,), generator=g).tolist()
    neurons = [int(x) for x in torch.randint(0, F + 1, (L,), generator=g)]
    if seed % 3 == 0:
        neurons[0], heads[-1] = 0, H
    return Budget(f"r{seed}", heads, neurons)


def masks_of(budget: Budget, shape) -> tuple[torch.Tensor, torch.Tensor]:
    hm, nm = torch.zeros(shape.n_layers, shape.n_heads), torch.zeros(shape.n_layers, shape.ffn)
    for layer in range(shape.n_layers):
        hm[layer, : budget.heads[layer]], nm[layer, : budget.neurons[layer]] = 1.0, 1.0
    return hm, nm


def test_adapters_cover_bert_and_another_family():
    assert "bert" in FAMILIES and len(FAMILIES) >= 2


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pad", [False, True])
def test_full_level_is_the_original_model_bit_for_bit(family, pad):
    model = tiny_classifier(family)
    ids, mask = random_batch(pad=pad)
    with torch.no_grad():
        ref = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(model.hidden(ids, mask), ref)
        assert torch.equal(model.hidden(ids, mask, Budget.full(model.shape)), ref)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", range(6))
def test_sliced_equals_masked_for_heads_and_neurons_together(family, seed):
    model = tiny_classifier(family, seed=seed)
    budget = random_budget(model.shape, seed)
    hm, nm = masks_of(budget, model.shape)
    ids, am = random_batch(seed=seed)
    B = ids.shape[0]
    with torch.no_grad():
        sliced = model(ids, am, budget=budget).logits
        masked = model(ids, am, head_mask=hm, neuron_mask=nm).logits
        per_example = model(
            ids, am, head_mask=hm.expand(B, *hm.shape), neuron_mask=nm.expand(B, *nm.shape)
        ).logits
    assert (sliced - masked).abs().max() < 1e-5
    assert (masked - per_example).abs().max() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_slices_are_views_of_one_weight_set(family):
    layer = encoder_parts(tiny_encoder(family)).layers[0]
    d = 8
    w, b = qkv_rows(layer.query.weight, layer.query.bias, 2, d)
    o = output_cols(layer.output.weight, 2, d)
    w_in, b_in, w_out = ffn_slices(layer.ffn_in, layer.ffn_out, 10)
    pairs = (
        (w, layer.query.weight),
        (b, layer.query.bias),
        (o, layer.output.weight),
        (w_in, layer.ffn_in.weight),
        (b_in, layer.ffn_in.bias),
        (w_out, layer.ffn_out.weight),
    )
    for sliced, full in pairs:
        assert sliced.untyped_storage().data_ptr() == full.untyped_storage().data_ptr()
    assert (
        w.shape == (2 * d, 32)
        and o.shape == (32, 2 * d)
        and w_in.shape == (10, 32)
        and w_out.shape == (32, 10)
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_reordering_heads_and_neurons_keeps_the_function_and_leaves_the_input_untouched(family):
    model = tiny_classifier(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    F = model.shape.ffn
    g = torch.Generator().manual_seed(1)
    heads = [[3, 1, 0, 2], [0, 1, 2, 3], [2, 3, 1, 0]]
    neurons = [torch.randperm(F, generator=g).tolist() for _ in range(3)]
    moved = reorder(model, heads, neurons)
    ids, am = random_batch()
    with torch.no_grad():
        assert (moved(ids, am).logits - model(ids, am).logits).abs().max() < 1e-5
        # the moved model's first head and first 5 neurons of each layer are the original model's
        # heads[layer][0] and neurons[layer][:5]: masking those there gives the same function
        hm, nm = torch.zeros(3, 4), torch.zeros(3, F)
        for layer in range(3):
            hm[layer, heads[layer][0]] = 1.0
            nm[layer, neurons[layer][:5]] = 1.0
        small = Budget("s", (1, 1, 1), (5, 5, 5))
        assert torch.allclose(
            moved(ids, am, budget=small).logits,
            model(ids, am, head_mask=hm, neuron_mask=nm).logits,
            atol=1e-5,
        )
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_allocate_heads_global_ranking_with_floor():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.05], [0.3, 0.2, 0.15, 0.12], [0.7, 0.6, 0.5, 0.4]])
    assert allocate_heads(scores, 1.0) == [4, 4, 4]
    assert allocate_heads(scores, 0.5) == [2, 1, 3]
    assert allocate_heads(scores, 0.0) == [1, 1, 1]  # the floor: one head per layer
    with pytest.raises(AssertionError, match="stored"):
        allocate_heads(scores.flip(1), 0.5)


def test_flops_count_heads_and_neurons_and_match_at_full_budget():
    shape = tiny_classifier().shape
    full = Budget.full(shape)
    assert full.flops(shape, 16) == encoder_flops(shape, [4] * 3, [64] * 3, 16)
    assert Budget("h", (2, 2, 2), (64,) * 3).flops(shape, 16) < full.flops(shape, 16)
    assert Budget("n", (4,) * 3, (32,) * 3).flops(shape, 16) < full.flops(shape, 16)
    assert Budget("z", (0,) * 3, (0,) * 3).flops(shape, 16) == 0
    assert (
        full.flops_ratio(shape, [3, 30]) == 1.0
        and full.heads_ratio(shape) == full.neurons_ratio(shape) == 1.0
    )


def _minilm_shape():
    from dihs_model.arch import EncoderShape

    return EncoderShape(
        n_layers=6, n_heads=12, head_dim=32, hidden=384, ffn=1536, attn_dropout=0.1, hidden_dropout=0.1
    )


@settings(max_examples=40, deadline=None)
@given(
    target=st.floats(0.1, 1.0),
    method=st.sampled_from(["global", "uniform"]),
    seed=st.integers(0, 1000),
    tokens=st.lists(st.integers(4, 128), min_size=1, max_size=20),
)
def test_allocation_hits_its_flops_target_and_keeps_prefixes(target, method, seed, tokens):
    shape = _minilm_shape()
    g = torch.Generator().manual_seed(seed)
    hs = torch.rand(6, 12, generator=g).sort(1, descending=True).values
    ns = torch.rand(6, 1536, generator=g).sort(1, descending=True).values * 0.05
    b = allocate(shape, target, tokens, hs, ns, method)
    b.check(shape)
    assert abs(b.flops_ratio(shape, tokens) - target) <= 0.02
    assert all(k >= 1 for k in b.heads)


def test_global_allocation_prefers_the_units_worth_more_per_flop():
    shape = _minilm_shape()
    hs = torch.full((6, 12), 1e-6)
    ns = torch.ones(6, 1536).cumsum(1).flip(1) / 1536  # neurons matter, heads barely
    b = allocate(shape, 0.5, [64], hs, ns, "global")
    assert b.heads == (1,) * 6 and b.neurons_ratio(shape) > 0.7


def test_unsupported_family_is_a_clear_error():
    from transformers import AutoModel, GPT2Config

    with pytest.raises(ValueError, match="unsupported encoder family 'gpt2'"):
        encoder_parts(AutoModel.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2)))
