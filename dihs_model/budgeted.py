"""The runtime model: one set of encoder weights, any budget as slices of it.

`BudgetedClassifier.forward(..., budget=b)` runs layer l with only its first b.heads[l] heads'
Q/K/V rows and O columns and its first b.neurons[l] FFN neurons (views, see surgery.py), so what a
budget removes costs nothing. `head_mask` / `neuron_mask` instead multiply heads' outputs and FFN
activations by a mask: the same compute as dense, differentiable, used for importance scoring and
as the reference that slicing must match.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .arch import LayerParts, encoder_parts
from .budget import Budget
from .surgery import ffn_slices, output_cols, qkv_rows


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
        self.kernels = None  # int8 kernels for the encoder's Linear slices (precision.with_dtype), else float

    def _linear(
        self, key: tuple, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """One encoder projection; key = (layer, projection, width) names the slice for packed kernels."""
        if self.kernels is None:
            return F.linear(x, weight, bias)
        return self.kernels(key, x, weight, bias)

    def _qkv(self, li: int, p: LayerParts, x: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        """The first k heads' queries, keys and values [B, T, k*d]. int8 runs them as one matmul on
        the three slices packed together (one activation quantization and one kernel call instead of
        three: the same numbers, 1.07-1.58x faster per layer here, scripts/int8_kernels.py)."""
        d = self.shape.head_dim
        lins = (p.query, p.key, p.value)
        if self.kernels is not None and self.kernels.fuse_qkv:

            def parts():
                rows = [qkv_rows(lin.weight, lin.bias, k, d) for lin in lins]
                bias = None if rows[0][1] is None else torch.cat([b for _, b in rows])
                return torch.cat([w for w, _ in rows]), bias

            return self.kernels.fused((li, "qkv", k), x, parts, 3 * k * d).split(k * d, dim=-1)
        return tuple(
            self._linear((li, name, k), x, *qkv_rows(lin.weight, lin.bias, k, d))
            for name, lin in zip(("q", "k", "v"), lins)
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        budget: Budget | None = None,
        head_mask: torch.Tensor | None = None,
        neuron_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ClassifierOutput:
        """budget: None = the full model; head_mask [L, H] or [B, L, H]; neuron_mask [L, F] or [B, L, F]."""
        attentions = [] if output_attentions else None
        x = self.hidden(input_ids, attention_mask, budget, head_mask, neuron_mask, attentions)  # [B, T, C]
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)  # mean over real tokens
        return ClassifierOutput(self.classifier(self.dropout(pooled)), attentions)

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        budget: Budget | None = None,
        head_mask: torch.Tensor | None = None,
        neuron_mask: torch.Tensor | None = None,
        attentions: list | None = None,
        n_layers: int | None = None,
    ) -> torch.Tensor:
        """The encoder's last hidden states [B, T, C] (after the first `n_layers` layers if given);
        appends attention maps to `attentions` if given."""
        L, H, Fn = self.shape.n_layers, self.shape.n_heads, self.shape.ffn
        assert budget is None or len(budget.heads) == L, (
            f"need {L} layers in the budget, got {len(budget.heads)}"
        )
        assert (head_mask is None and neuron_mask is None) or budget is None, "mask the full model only"
        x = self.parts.embeddings(input_ids=input_ids)  # [B, T, C]
        keep = attention_mask.bool()
        attn_mask = None if bool(keep.all()) else keep[:, None, None, :]  # [B, 1, 1, T]
        for li, layer in enumerate(self.parts.layers[:n_layers]):
            k, n = (H, Fn) if budget is None else (budget.heads[li], budget.neurons[li])
            hm = None if head_mask is None else head_mask[..., li, :]
            nm = None if neuron_mask is None else neuron_mask[..., li, :]
            x = self._attention(li, layer, x, k, attn_mask, hm, attentions)
            x = self._ffn(li, layer, x, n, nm)
        return x

    def _attention(
        self,
        li: int,
        p: LayerParts,
        x: torch.Tensor,
        k: int,
        attn_mask: torch.Tensor | None,
        head_mask: torch.Tensor | None,
        attentions: list | None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        d = self.shape.head_dim
        if k == 0:  # every head removed: the attention block adds only O's bias
            attn = p.output.bias.expand(B, T, C)
            if attentions is not None:
                attentions.append(x.new_zeros(B, 0, T, T))
        else:
            q, kk, v = (t.view(B, T, k, d).transpose(1, 2) for t in self._qkv(li, p, x, k))  # [B, k, T, d]
            drop = self.shape.attn_dropout if self.training else 0.0
            if attentions is None:
                ctx = F.scaled_dot_product_attention(
                    q, kk, v, attn_mask=attn_mask, dropout_p=drop, scale=d**-0.5
                )
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
            attn = self._linear((li, "o", k), ctx, output_cols(p.output.weight, k, d), p.output.bias)
        return p.attn_norm(self.dropout(attn) + x)

    def _ffn(
        self, li: int, p: LayerParts, x: torch.Tensor, n: int, neuron_mask: torch.Tensor | None
    ) -> torch.Tensor:
        if (
            n == self.shape.ffn
        ):  # the whole weights (F.linear is what nn.Linear runs): the full model's exact path
            a = p.act(self._linear((li, "ffn_in", n), x, p.ffn_in.weight, p.ffn_in.bias))
            if neuron_mask is not None:  # [F] or [B, F]
                a = a * (neuron_mask if neuron_mask.dim() == 1 else neuron_mask[:, None, :])
            h = self._linear((li, "ffn_out", n), a, p.ffn_out.weight, p.ffn_out.bias)
        elif n == 0:  # every neuron removed: the block adds only the second linear's bias
            h = p.ffn_out.bias.expand_as(x)
        else:
            w_in, b_in, w_out = ffn_slices(p.ffn_in, p.ffn_out, n)
            h = self._linear(
                (li, "ffn_out", n),
                p.act(self._linear((li, "ffn_in", n), x, w_in, b_in)),
                w_out,
                p.ffn_out.bias,
            )
        return p.ffn_norm(self.dropout(h) + x)
