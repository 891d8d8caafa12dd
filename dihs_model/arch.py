"""The only module that knows transformers' module paths: one adapter per encoder family.

Everything else works on `EncoderParts`: the embeddings module, and per layer the
Q/K/V/O projections, the two layer norms and the feed-forward block of a post-LN encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerParts:
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    output: nn.Linear  # attention output projection (O)
    attn_norm: nn.LayerNorm
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    ffn_norm: nn.LayerNorm
    act: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EncoderShape:
    n_layers: int
    n_heads: int
    head_dim: int
    hidden: int
    ffn: int
    attn_dropout: float
    hidden_dropout: float

    @property
    def total_heads(self) -> int:
        return self.n_layers * self.n_heads


@dataclass(frozen=True)
class EncoderParts:
    embeddings: nn.Module  # called as embeddings(input_ids=ids): [B, T] -> [B, T, C]
    layers: list[LayerParts]
    shape: EncoderShape


def _bert_like(model: nn.Module) -> EncoderParts:
    """BERT and RoBERTa share the layer layout (MiniLM is a BERT)."""
    cfg = model.config
    layers = [
        LayerParts(
            query=layer.attention.self.query,
            key=layer.attention.self.key,
            value=layer.attention.self.value,
            output=layer.attention.output.dense,
            attn_norm=layer.attention.output.LayerNorm,
            ffn_in=layer.intermediate.dense,
            ffn_out=layer.output.dense,
            ffn_norm=layer.output.LayerNorm,
            act=layer.intermediate.intermediate_act_fn,
        )
        for layer in model.encoder.layer
    ]
    shape = EncoderShape(
        n_layers=cfg.num_hidden_layers,
        n_heads=cfg.num_attention_heads,
        head_dim=cfg.hidden_size // cfg.num_attention_heads,
        hidden=cfg.hidden_size,
        ffn=cfg.intermediate_size,
        attn_dropout=cfg.attention_probs_dropout_prob,
        hidden_dropout=cfg.hidden_dropout_prob,
    )
    return EncoderParts(embeddings=model.embeddings, layers=layers, shape=shape)


def _distilbert(model: nn.Module) -> EncoderParts:
    cfg = model.config
    layers = [
        LayerParts(
            query=block.attention.q_lin,
            key=block.attention.k_lin,
            value=block.attention.v_lin,
            output=block.attention.out_lin,
            attn_norm=block.sa_layer_norm,
            ffn_in=block.ffn.lin1,
            ffn_out=block.ffn.lin2,
            ffn_norm=block.output_layer_norm,
            act=block.ffn.activation,
        )
        for block in model.transformer.layer
    ]
    shape = EncoderShape(
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        head_dim=cfg.dim // cfg.n_heads,
        hidden=cfg.dim,
        ffn=cfg.hidden_dim,
        attn_dropout=cfg.attention_dropout,
        hidden_dropout=cfg.dropout,
    )
    return EncoderParts(embeddings=model.embeddings, layers=layers, shape=shape)


ADAPTERS: dict[str, Callable[[nn.Module], EncoderParts]] = {
    "bert": _bert_like,
    "roberta": _bert_like,
    "distilbert": _distilbert,
}


def supported_families() -> list[str]:
    return sorted(ADAPTERS)


def encoder_parts(model: nn.Module) -> EncoderParts:
    """Views of `model`'s modules in the family-neutral layout (shares parameters, copies nothing)."""
    family = model.config.model_type
    if family not in ADAPTERS:
        raise ValueError(
            f"unsupported encoder family {family!r}; supported: {', '.join(supported_families())}"
        )
    return ADAPTERS[family](model)
