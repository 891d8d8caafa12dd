"""Running budgets over inputs: one budget over fixed batches (evaluation, calibration), and one
model batch whose inputs carry different budgets (the service's engine, `dihs explain`).

Evaluation, calibration and serving share these, so an input gets the same answer from each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .budget import Budget


@dataclass
class PassResult:
    preds: torch.Tensor  # [N], on the CPU
    conf: torch.Tensor  # [N] logit margin of the top two classes, on the CPU
    tokens: list[int]  # real tokens per input, for FLOPs


def margin(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, top-two logit margin) per row: the cascade's confidence."""
    top2 = logits.float().topk(2, dim=-1)
    return top2.indices[:, 0], top2.values[:, 0] - top2.values[:, 1]


@torch.no_grad()
def run_pass(model, batches, budget: Budget | None, n: int) -> PassResult:
    """One forward pass at `budget` (None: the full model) over length-sorted batches, results in input order."""
    preds, conf, tokens = torch.zeros(n, dtype=torch.long), torch.zeros(n), [0] * n
    for idx, ids, mask, _ in batches:
        p, c = margin(model(ids, mask, budget=budget).logits)
        preds[idx], conf[idx] = p.cpu(), c.cpu()
        for i, t in zip(idx, mask.sum(1).tolist()):
            tokens[i] = t
    return PassResult(preds, conf, tokens)


class Passes:
    """Passes over fixed batches, each budget run once: calibration asks for the same budgets several
    times (plans, then the signal report), evaluation for the same budget in several rows."""

    def __init__(self, model, batches, n: int):
        self.model, self.batches, self.n = model, batches, n
        self._done: dict = {}

    def __call__(self, budget: Budget | None) -> PassResult:
        full = budget is None or budget.is_full(self.model.shape)
        key = None if full else budget.key
        if key not in self._done:
            self._done[key] = run_pass(self.model, self.batches, None if full else budget, self.n)
        return self._done[key]


@torch.inference_mode()
def forward_grouped(model, ids: torch.Tensor, mask: torch.Tensor, budgets: list[Budget | None],
                    device: torch.device | None = None) -> list[torch.Tensor]:
    """Logits (float32, CPU) of each row of a right-padded batch [B, T] at its own budget: one sliced
    forward per distinct budget, each group trimmed to its longest text."""
    groups: dict = {}
    for i, b in enumerate(budgets):
        groups.setdefault(None if b is None or b.is_full(model.shape) else b.key, (b, []))[1].append(i)
    out: list[torch.Tensor | None] = [None] * len(budgets)
    for key, (budget, idx) in groups.items():
        sub_mask = mask[idx]
        T = int(sub_mask.sum(1).max())
        logits = model(ids[idx, :T].to(device or ids.device), sub_mask[:, :T].to(device or ids.device),
                       budget=None if key is None else budget).logits.float().cpu()
        for i, row in zip(idx, logits):
            out[i] = row
    return out
