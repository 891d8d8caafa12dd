"""Head and FFN-neuron importance on a calibration set, and the order it implies.

- michel:    E_x |dL(x)/dm_u|: a first-order estimate of the loss change from removing unit u
             (Michel et al. 2019, for heads; the same Taylor score for FFN neurons);
- fisher:    sum_x (dL(x)/dm_u)^2, the Fisher information of the unit's mask (Kwon et al. 2022);
- attention: mean over tokens of the head's maximum attention weight, the "confidence" of
             Voita et al. 2019; needs no labels; heads only.

m is a mask variable at 1 (every head and neuron on), on heads' outputs ([B, L, H]) and on FFN
activations ([B, L, F]); gradients are per example. Scores are raw (not normalised), so a head's and
a neuron's are in the same units and budget.allocate can rank them together.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .budgeted import BudgetedClassifier
from .device import model_device

SCORERS = ("michel", "fisher", "attention")
NEURON_SCORERS = ("michel", "fisher")
Batch = tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]  # (indices, ids, mask, labels)


def mask_gradients(model: BudgetedClassifier, batches: Iterable[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example gradients of the loss w.r.t. the head and neuron masks: ([N, L, H], [N, L, F])."""
    L, H, Fn = model.shape.n_layers, model.shape.n_heads, model.shape.ffn
    head_grads, neuron_grads = [], []
    for _, ids, mask, labels in batches:
        dev = model_device(model)
        hm = torch.ones(ids.shape[0], L, H, device=dev, requires_grad=True)
        nm = torch.ones(ids.shape[0], L, Fn, device=dev, requires_grad=True)
        loss = F.cross_entropy(model(ids, mask, head_mask=hm, neuron_mask=nm).logits, labels, reduction="sum")
        gh, gn = torch.autograd.grad(loss, (hm, nm))
        head_grads.append(gh)
        neuron_grads.append(gn)
    return torch.cat(head_grads), torch.cat(neuron_grads)


def michel_scores(grads: torch.Tensor) -> torch.Tensor:
    return grads.abs().mean(0)


def fisher_scores(grads: torch.Tensor) -> torch.Tensor:
    return grads.pow(2).sum(0)


@torch.no_grad()
def attention_scores(model: BudgetedClassifier, batches: Iterable[Batch]) -> torch.Tensor:
    """Mean (over real query tokens of all examples) of each head's max attention weight: [L, H]."""
    total, tokens = None, 0.0
    for _, ids, mask, _ in batches:
        att = model(ids, mask, output_attentions=True).attentions  # L x [B, H, T, T]
        conf = torch.stack([a.max(dim=-1).values for a in att], dim=1)  # [B, L, H, T]
        real = mask[:, None, None, :].to(conf.dtype)
        s = (conf * real).sum(dim=(0, 3))
        total = s if total is None else total + s
        tokens += float(mask.sum())
    return total / tokens


def score_units(
    model: BudgetedClassifier, batches: list[Batch], progress: bool = True
) -> dict[str, dict[str, torch.Tensor]]:
    """{"heads": {scorer: [L, H]}, "neurons": {scorer: [L, F]}}, CPU tensors, in current stored positions."""
    was_training = model.training
    model.eval()
    it = tqdm(batches, desc="calibrate", unit="batch", disable=not progress)
    gh, gn = mask_gradients(model, it)
    heads = {
        "michel": michel_scores(gh),
        "fisher": fisher_scores(gh),
        "attention": attention_scores(model, batches),
    }
    neurons = {"michel": michel_scores(gn), "fisher": fisher_scores(gn)}
    model.train(was_training)
    return {
        "heads": {k: v.cpu() for k, v in heads.items()},
        "neurons": {k: v.cpu() for k, v in neurons.items()},
    }


def unit_order(scores: torch.Tensor) -> list[list[int]]:
    """Per layer, positions from most to least important."""
    return scores.argsort(dim=1, descending=True, stable=True).tolist()


def neuron_scorer(order_by: str) -> str:
    """The scorer that orders neurons when `order_by` orders heads (attention has no neuron score)."""
    return order_by if order_by in NEURON_SCORERS else "michel"


def ordered(
    scores: dict[str, dict[str, torch.Tensor]], head_order, neuron_order
) -> dict[str, dict[str, torch.Tensor]]:
    """The scores moved to the positions that `reorder(model, head_order, neuron_order)` gives."""
    hp, np_ = torch.tensor(head_order), torch.tensor(neuron_order)
    return {
        "heads": {k: s.gather(1, hp) for k, s in scores["heads"].items()},
        "neurons": {k: s.gather(1, np_) for k, s in scores["neurons"].items()},
    }
