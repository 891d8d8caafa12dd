"""Issue 3, item 4: does a per-input head gate beat the bundle's global head order at equal heads?

The gate is a ridge regression from the mean-pooled embedding output (free: every forward computes
it) to each head's per-example importance (|dL/dm_h|, normalised per layer as Michel's score),
fitted on the bundle's training split without its calibration part. At a ratio, each layer keeps
the ladder's head count k_l, and the gate picks *which* k_l heads per input; the global order keeps
the same k_l heads (its prefix) for every input. For reference, a third choice uses the per-example importance
itself (it needs the label). All three run as head masks, which give the outputs of slicing.

    python scripts/gate_diagnostic.py bundles/et --data election-tweets --json gate-et.json

It writes accuracy per ratio, the paired comparison gate vs order, and how much of the per-example
top-k_l each choice overlaps. Not a library feature: the gate did not win (see the README).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

from dihs_model.bundle import BundleError, load_bundle
from dihs_model.data import (
    BUILTIN_TASKS,
    DataError,
    load_eval,
    load_split,
    split_calibration,
)
from dihs_model.evaluate import write_json
from dihs_model.importance import mask_gradients
from dihs_model.levels import prefix_counts
from dihs_model.paired import compare

RATIOS = (0.75, 0.5, 0.3, 0.25)
FIT_EXAMPLES = 3000  # per-example gradients are one backward pass each batch: enough, and bounded
RIDGE = 0.01  # per fitted example


@torch.no_grad()
def pooled_embeddings(bundle, ex) -> torch.Tensor:
    """[N, C]: the embedding layer's output, averaged over each input's real tokens."""
    out = torch.zeros(len(ex), bundle.model.shape.hidden)
    for idx, ids, mask, _ in bundle.batches(ex, 64):
        m = mask.unsqueeze(-1).float()
        out[idx] = (bundle.model.parts.embeddings(input_ids=ids) * m).sum(1) / m.sum(1)
    return out


def per_example_importance(bundle, ex) -> torch.Tensor:
    """[N, L, H]: |dL/dm| per input, normalised per layer."""
    batches = list(bundle.batches(ex, 32))
    grads = mask_gradients(bundle.model, batches).abs()
    out, pos = torch.zeros_like(grads), 0
    for idx, *_ in batches:
        out[idx] = grads[pos : pos + len(idx)]
        pos += len(idx)
    return out / out.norm(dim=2, keepdim=True).clamp_min(1e-12)


class RidgeGate:
    """Standardised pooled embeddings + bias -> per-head importance [L, H]."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.mu, self.sd = x.mean(0), x.std(0).clamp_min(1e-6)
        a = self._design(x)
        self.shape = y.shape[1:]
        lam = RIDGE * len(a)
        self.w = torch.linalg.solve(a.T @ a + lam * torch.eye(a.shape[1]), a.T @ y.reshape(len(y), -1))

    def _design(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(x - self.mu) / self.sd, torch.ones(len(x), 1)], 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (self._design(x) @ self.w).reshape(len(x), *self.shape)


def top_k_masks(scores: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """[N, L, H] 0/1: in each layer l, the counts[l] heads with the highest scores of each input."""
    m = torch.zeros_like(scores)
    for layer, k in enumerate(counts):
        if k:
            m[:, layer].scatter_(1, scores[:, layer].topk(k, dim=1).indices, 1.0)
    return m


@torch.no_grad()
def correct_under(bundle, ex, batches, masks: torch.Tensor) -> list[bool]:
    """batches: `bundle.batches(ex, ...)` as a list, tokenized once for every choice and ratio."""
    pred = torch.zeros(len(ex), dtype=torch.long)
    for idx, ids, mask, _ in batches:
        pred[idx] = bundle.model(ids, mask, head_mask=masks[idx]).logits.argmax(-1)
    return [int(p) == y for p, y in zip(pred.tolist(), ex.labels)]


def run(bundle, fit, test, ratios=RATIOS, seed: int = 0) -> dict:
    bundle.model.eval()
    keep = sorted(random.Random(seed).sample(range(len(fit)), min(FIT_EXAMPLES, len(fit))))
    fit = fit.subset(keep)
    gate = RidgeGate(pooled_embeddings(bundle, fit), per_example_importance(bundle, fit))
    truth = per_example_importance(bundle, test)
    order = torch.tensor(bundle.meta["importance"][bundle.meta["order_by"]])  # stored order: descending per layer
    choices = {"order": order.expand_as(truth), "gate": gate(pooled_embeddings(bundle, test)), "per_example_truth": truth}
    batches, rows = list(bundle.batches(test, 64)), []
    for ratio in ratios:
        counts = prefix_counts(order, ratio)
        masks = {name: top_k_masks(s, counts) for name, s in choices.items()}
        correct = {name: correct_under(bundle, test, batches, m) for name, m in masks.items()}
        overlap = {name: float((m * masks["per_example_truth"]).sum() / (len(test) * sum(counts)))
                   for name, m in masks.items() if name != "per_example_truth"}
        rows.append({"ratio": ratio, "heads_per_layer": counts,
                     "accuracy": {name: sum(c) / len(test) for name, c in correct.items()},
                     "gate_vs_order": compare(correct["gate"], correct["order"]),
                     "overlap_with_per_example_top_k": overlap})
    return {"n_fit": len(fit), "n_test": len(test), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--data", required=True, help="the data the bundle was trained on (task or CSV): the gate fits on its training split")
    p.add_argument("--test", help="what to evaluate on (a built-in task's default: its test split)")
    p.add_argument("--json", required=True)
    a = p.parse_args(argv)
    if a.test is None and a.data not in BUILTIN_TASKS:
        print("error: --data is a file: give --test, the file to evaluate on", file=sys.stderr)
        return 2
    try:
        bundle = load_bundle(a.bundle)
        fit = split_calibration(load_split(a.data).train)[0]
        test = load_eval(a.test or a.data, bundle.labels)
    except (BundleError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    result = {"bundle": a.bundle, "data": a.data, "test": a.test or a.data, **run(bundle, fit, test)}
    write_json(result, Path(a.json))
    for r in result["rows"]:
        acc, c = r["accuracy"], r["gate_vs_order"]
        print(f"{r['ratio']:<5g} order {acc['order']:.4f}  gate {acc['gate']:.4f} ({c['wins']}/{c['losses']}, p {c['p_value']:.2f})  "
              f"per-example truth {acc['per_example_truth']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
