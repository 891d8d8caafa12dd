"""The surgery contract, run over every supported encoder family with tiny random configs."""

import pytest
import torch

from dihs_model.arch import encoder_parts, supported_families
from dihs_model.surgery import (allocate_heads, as_prefix, encoder_flops, output_cols, qkv_rows,
                                reorder_heads)
from tests.conftest import random_batch, random_heads, tiny_classifier, tiny_encoder

FAMILIES = supported_families()


def test_adapters_cover_bert_and_another_family():
    assert "bert" in FAMILIES and len(FAMILIES) >= 2


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pad", [False, True])
def test_full_level_is_the_original_model_bit_for_bit(family, pad):
    model = tiny_classifier(family)
    ids, mask = random_batch(pad=pad)
    H, L = model.shape.n_heads, model.shape.n_layers
    with torch.no_grad():
        ref = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(model.hidden(ids, mask), ref)
        assert torch.equal(model.hidden(ids, mask, heads=[H] * L), ref)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", range(6))
def test_sliced_equals_masked_for_random_head_sets(family, seed):
    model = tiny_classifier(family, seed=seed)
    L, H = model.shape.n_layers, model.shape.n_heads
    heads, mask = random_heads(L, H, seed)
    ids, am = random_batch(seed=seed)
    with torch.no_grad():
        sliced = model(ids, am, heads=heads).logits
        masked = model(ids, am, head_mask=mask).logits
        per_example = model(ids, am, head_mask=mask.expand(ids.shape[0], L, H)).logits
    assert (sliced - masked).abs().max() < 1e-5
    assert (masked - per_example).abs().max() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_slices_are_views_of_one_weight_set(family):
    layer = encoder_parts(tiny_encoder(family)).layers[0]
    d = 8
    w, b = qkv_rows(layer.query.weight, layer.query.bias, 2, d)
    o = output_cols(layer.output.weight, 2, d)
    for sliced, full in ((w, layer.query.weight), (b, layer.query.bias), (o, layer.output.weight)):
        assert sliced.untyped_storage().data_ptr() == full.untyped_storage().data_ptr()
    assert w.shape == (2 * d, 32) and o.shape == (32, 2 * d)


@pytest.mark.parametrize("family", FAMILIES)
def test_reordering_heads_keeps_the_function_and_leaves_the_input_untouched(family):
    model = tiny_classifier(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    order = [[3, 1, 0, 2], [0, 1, 2, 3], [2, 3, 1, 0]]
    moved = reorder_heads(model, order)
    ids, am = random_batch()
    with torch.no_grad():
        assert (moved(ids, am).logits - model(ids, am).logits).abs().max() < 1e-5
        # the first head of the moved layer 0 is the original head 3
        assert torch.allclose(moved(ids, am, heads=[[0], [0], [0]]).logits,
                              model(ids, am, heads=[[3], [0], [2]]).logits, atol=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_allocate_heads_global_ranking_with_floor():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.05], [0.3, 0.2, 0.15, 0.12], [0.7, 0.6, 0.5, 0.4]])
    assert allocate_heads(scores, 1.0) == [[0, 1, 2, 3]] * 3
    sel = allocate_heads(scores, 0.5)
    assert sum(map(len, sel)) == 6 and sel[0] == [0, 1] and sel[2] == [0, 1, 2] and sel[1] == [0]
    assert as_prefix(sel) == [2, 1, 3]
    assert allocate_heads(scores, 0.0) == [[0], [0], [0]]  # the floor: one head per layer
    assert as_prefix([[1, 2]]) is None


def test_flops_fall_with_heads_and_match_at_full_budget():
    shape = tiny_classifier().shape
    full = encoder_flops(shape, [4, 4, 4], 16)
    assert encoder_flops(shape, [4, 4, 4], 16) == full
    assert encoder_flops(shape, [2, 2, 2], 16) < full
    assert encoder_flops(shape, [0, 0, 0], 16) > 0  # the FFN still runs


def test_unsupported_family_is_a_clear_error():
    from transformers import GPT2Config, AutoModel

    with pytest.raises(ValueError, match="unsupported encoder family 'gpt2'"):
        encoder_parts(AutoModel.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2)))
