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
    """One forward pass at `budget` (None: the full model) over length-sorted batches, results in
    input order."""
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


# A CPU forward costs a fixed amount whatever its rows (per-op dispatch, weight reads) besides its
# tokens: rows of very different lengths run as chunks of similar length (each padded to its own
# longest) when the padding saved outweighs another forward. The fixed cost in the full model's
# token-equivalents, and how it grows as a budget's per-token cost shrinks, are what minimised the
# time of random batches of held-out tweets at batch 8-16 on a 2-core CPU (at batch 16: the full model
# 0.82x, the 25% level 0.88x one padded chunk's time; scripts/chunk_bench.py, docs/bench/chunks-cpu.json).
# On a GPU padding is nearly free: one chunk.
CHUNK_FIXED_TOKENS = 32


def chunk_fixed_tokens(flops_ratio: float) -> float:
    """The fixed cost of a forward in tokens of this budget (FLOPs ratio) at batch scale."""
    return CHUNK_FIXED_TOKENS / max(flops_ratio, 1e-3) ** 0.5


def length_chunks(lengths: list[int], fixed_tokens: float) -> list[list[int]]:
    """Positions of `lengths` in runs of similar length, one forward each, minimising the sum over
    runs of fixed_tokens + rows x longest (dynamic programming over the sorted lengths)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best, cut = [0.0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j):
            cost = best[i] + fixed_tokens + (j - i) * lengths[order[j - 1]]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], len(order)
    while j:
        runs.append(order[cut[j] : j])
        j = cut[j]
    return runs[::-1]


def chunks_for(lengths: list[int], budget: Budget | None, shape, device) -> list[list[int]]:
    """How forward_grouped runs rows of these lengths at `budget` (None: the full model) on `device`."""
    if torch.device(device).type != "cpu":
        return [list(range(len(lengths)))] if lengths else []
    ratio = 1.0 if budget is None else budget.flops_ratio(shape, lengths)
    return length_chunks(lengths, chunk_fixed_tokens(ratio))


@torch.inference_mode()
def forward_grouped(
    model,
    ids: torch.Tensor,
    mask: torch.Tensor,
    budgets: list[Budget | None],
    device: torch.device | None = None,
) -> list[torch.Tensor]:
    """Logits (float32, CPU) of each row of a right-padded batch [B, T] at its own budget: sliced
    forwards per distinct budget, its rows in chunks of similar length on a CPU (length_chunks),
    each chunk trimmed to its longest text."""
    device = device or ids.device
    groups: dict = {}
    for i, b in enumerate(budgets):
        groups.setdefault(None if b is None or b.is_full(model.shape) else b.key, (b, []))[1].append(i)
    out: list[torch.Tensor | None] = [None] * len(budgets)
    lengths = mask.sum(1).tolist()
    for key, (budget, idx) in groups.items():
        budget = None if key is None else budget
        for run in chunks_for([lengths[i] for i in idx], budget, model.shape, device):
            rows = [idx[k] for k in run]
            T = max(lengths[i] for i in rows)
            logits = (
                model(ids[rows, :T].to(device), mask[rows, :T].to(device), budget=budget).logits.float().cpu()
            )
            for i, row in zip(rows, logits):
                out[i] = row
    return out
