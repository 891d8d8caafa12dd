"""Fine-tuning an encoder classifier (the full model, or width budgets with budget_robust_loss) with
AdamW and a linear warm-up/decay schedule."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .budget import Budget
from .bundle import Bundle
from .data import Examples
from .precision import fast_bfloat16


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    seed: int = 0
    # bfloat16 autocast for the forward passes (weights and optimizer stay float32); auto: where
    # bfloat16 runs in hardware (precision.fast_bfloat16). 6.7x per step on this AMX CPU, but the one
    # election-tweets bundle trained so lost 1.4 points at FLOPs 0.3 (docs/results.md): off by default
    autocast: str = "float32"
    # An epoch is at least this many examples (recycling a small set): election-tweets' epoch, where
    # the defaults were chosen (145 steps of 32). A 700-text set ran 16 steps per epoch without it, so
    # its full model and its small widths were trained on a tenth of the updates the defaults assume.
    min_epoch_examples: int = 4640

    def steps_per_epoch(self, n: int) -> int:
        return max(-(-n // self.batch_size), -(-self.min_epoch_examples // self.batch_size))


def _epoch_batches(ex: Examples, cfg: TrainConfig, rng: random.Random) -> list[list[int]]:
    """One epoch's batches: shuffled passes over `ex` until the epoch has its steps."""
    steps, batches = cfg.steps_per_epoch(len(ex)), []
    while len(batches) < steps:
        batches += _shuffled_batches(ex, cfg.batch_size, rng)
    return batches[:steps]


def _shuffled_batches(ex: Examples, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length (bucketed), so little compute goes to padding."""
    idx = list(range(len(ex)))
    rng.shuffle(idx)
    chunks = [idx[i : i + batch_size * 50] for i in range(0, len(idx), batch_size * 50)]
    batches = []
    for chunk in chunks:
        chunk.sort(key=lambda i: len(ex.texts[i]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def full_model_loss(model, ids, mask, labels, rng) -> torch.Tensor:
    return F.cross_entropy(
        model(ids, mask).logits.float(), labels
    )  # float: the loss stays float32 under autocast


def budget_robust_loss(always: list[Budget], others: list[Budget]):
    """DynaBERT-style loss over width budgets (Hou et al. 2020; slimmable networks): the full model
    learns from the labels; every budget in `always` (the smallest) and one budget sampled from
    `others` learn from the full model's soft predictions (distillation) and the labels. Heads and
    neurons must be in importance order."""

    def loss_fn(model, ids, mask, labels, rng):
        full = model(ids, mask).logits.float()  # losses in float32 under bfloat16 autocast
        soft = full.detach().softmax(-1)
        loss = F.cross_entropy(full, labels)
        for budget in (*always, *([rng.choice(others)] if others else [])):
            logits = model(ids, mask, budget=budget).logits.float()
            loss = (
                loss
                + 0.5 * F.cross_entropy(logits, labels)
                + 0.5 * F.kl_div(logits.log_softmax(-1), soft, reduction="batchmean")
            )
        return loss

    return loss_fn


def fine_tune(
    bundle: Bundle,
    train: Examples,
    cfg: TrainConfig,
    progress: bool = True,
    loss_fn=full_model_loss,
    desc: str = "train",
    on_step: Callable[[int], None] | None = None,
) -> dict:
    """Train `bundle.model` in place on `train`; returns a summary (loss, steps, seconds).
    `on_step(k)` is called after the k-th step (1-based)."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model = bundle.model
    model.train()
    # The word-embedding table is half of MiniLM's weights but barely moves in fine-tuning:
    # freezing it saves its gradient and optimizer work on every step.
    model.encoder.get_input_embeddings().weight.requires_grad_(False)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.dim() > 1]
    no_decay = [p for n, p in params if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    steps = cfg.epochs * cfg.steps_per_epoch(len(train))
    warmup = max(1, int(steps * cfg.warmup_fraction))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    device = next(model.parameters()).device
    bf16 = cfg.autocast == "bfloat16" or (cfg.autocast == "auto" and fast_bfloat16(device))
    t0, losses = time.perf_counter(), []
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress)
    for epoch in range(cfg.epochs):
        for idx in _epoch_batches(train, cfg, rng):
            ids, mask = bundle.encode([train.texts[i] for i in idx])
            labels = torch.tensor([train.labels[i] for i in idx], device=ids.device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model, ids, mask, labels, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(1)
            if on_step is not None:
                on_step(len(losses))
            bar.set_postfix(epoch=epoch + 1, loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    bar.close()
    model.eval()
    return {
        "steps": steps,
        "epochs": cfg.epochs,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "seconds": round(time.perf_counter() - t0, 1),
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "min_epoch_examples": cfg.min_epoch_examples,
        "autocast": "bfloat16" if bf16 else "float32",
    }
