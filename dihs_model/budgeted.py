"""The runtime model: one set of encoder weights, any head budget as slices of it.

`BudgetedClassifier.forward(..., heads=selection)` runs each layer with only the chosen heads'
Q/K/V rows and O columns (views for prefixes, see surgery.py), so removed heads cost nothing.
`head_mask` instead multiplies heads' outputs by a mask: same compute as dense, differentiable,
used for importance scoring and as the reference that slicing must match.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .arch import LayerParts, encoder_parts
from .surgery import Selection, head_count, output_cols, qkv_rows


@dataclass
class ClassifierOutput:
    logits: torch.Tensor  # [B, n_labels]
    attentions: list[torch.Tensor] | None = None  # per layer [B, k_l, T, T] for the heads that ran


class BudgetedClassifier(nn.Module):
    """An encoder (any family arch.py knows) + mean pooling + a linear classifier."""

    def __init__(self, encoder: nn.Module, n_labels: int):
        super().__init__()
        self.encoder = encoder
        self.parts = encoder_parts(encoder)
        self.shape = self.parts.shape
        self.dropout = nn.Dropout(self.shape.hidden_dropout)
        self.classifier = nn.Linear(self.shape.hidden, n_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        heads: Selection | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ClassifierOutput:
        """heads: one HeadChoice per layer (None = all heads); head_mask: [L, H] or [B, L, H]."""
        attentions = [] if output_attentions else None
        x = self.hidden(input_ids, attention_mask, heads, head_mask, attentions)  # [B, T, C]
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)  # mean over real tokens
        return ClassifierOutput(self.classifier(self.dropout(pooled)), attentions)

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        heads: Selection | None = None,
        head_mask: torch.Tensor | None = None,
        attentions: list | None = None,
        n_layers: int | None = None,
    ) -> torch.Tensor:
        """The encoder's last hidden states [B, T, C] (after the first `n_layers` layers if given);
        appends attention maps to `attentions` if given."""
        L, H = self.shape.n_layers, self.shape.n_heads
        assert heads is None or len(heads) == L, f"need {L} head choices, got {len(heads)}"
        assert head_mask is None or heads is None, "mask heads of the full model only"
        x = self.parts.embeddings(input_ids=input_ids)  # [B, T, C]
        keep = attention_mask.bool()
        attn_mask = None if bool(keep.all()) else keep[:, None, None, :]  # [B, 1, 1, T]
        for l, layer in enumerate(self.parts.layers[:n_layers]):
            choice = H if heads is None else heads[l]
            mask_l = None if head_mask is None else head_mask[..., l, :]
            x = self._layer(layer, x, choice, attn_mask, mask_l, attentions)
        return x

    def _layer(
        self,
        p: LayerParts,
        x: torch.Tensor,
        choice,
        attn_mask: torch.Tensor | None,
        head_mask: torch.Tensor | None,
        attentions: list | None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        d = self.shape.head_dim
        k = head_count(choice)
        if k == 0:  # every head removed: the attention block adds only O's bias
            attn = p.output.bias.expand(B, T, C)
            if attentions is not None:
                attentions.append(x.new_zeros(B, 0, T, T))
        else:
            q, kk, v = (
                F.linear(x, *qkv_rows(lin.weight, lin.bias, choice, d)).view(B, T, k, d).transpose(1, 2)
                for lin in (p.query, p.key, p.value)
            )  # each [B, k, T, d]
            drop = self.shape.attn_dropout if self.training else 0.0
            if attentions is None:
                ctx = F.scaled_dot_product_attention(q, kk, v, attn_mask=attn_mask, dropout_p=drop, scale=d**-0.5)
            else:
                scores = torch.matmul(q, kk.transpose(2, 3)) * d**-0.5  # [B, k, T, T]
                if attn_mask is not None:
                    scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
                probs = scores.softmax(dim=-1)
                attentions.append(probs)
                ctx = torch.matmul(F.dropout(probs, drop, self.training), v)
            if head_mask is not None:  # [H] or [B, H]
                ctx = ctx * head_mask.view(-1 if head_mask.dim() == 2 else 1, k, 1, 1)
            ctx = ctx.transpose(1, 2).reshape(B, T, k * d)
            attn = F.linear(ctx, output_cols(p.output.weight, choice, d), p.output.bias)
        x = p.attn_norm(self.dropout(attn) + x)
        h = p.ffn_out(p.act(p.ffn_in(x)))
        return p.ffn_norm(self.dropout(h) + x)
