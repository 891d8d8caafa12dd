"""What deciding a budget costs per request, next to the dense forward it steers (batch 1).

Two decisions are timed: the service's `LadderPolicy.decide` (token statistics -> complexity ->
policy -> ladder level) and the cascade's gate (top-two logit margin, through a full window of the
EscalationTracker that sets the threshold), which is all the DIHS cascade adds to a first pass
besides the passes themselves.
Interleaved with the dense forward, medians of `repeats`, on one thread, like `bench`.
"""

from __future__ import annotations

import statistics
import time

import torch

from .budget import Budget
from .bundle import Bundle
from .cascade import TRACK_WINDOW, CascadePlan, EscalationTracker
from .levels import LadderPolicy


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _decisions(model, ladder: LadderPolicy, ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """What is timed, as calls on one input: the dense forward and the two decisions beside it."""
    logits = model(ids, mask).logits
    first = Budget("first", (1,) * model.shape.n_layers, (0,) * model.shape.n_layers)
    tracker = EscalationTracker(CascadePlan(0.5, first, 0.25, 1.0, calib_escalated=0.25, calib_accuracy=0.0))
    g = torch.Generator().manual_seed(0)
    for c in torch.randn(TRACK_WINDOW, generator=g).tolist():  # a full window: every call also drops one
        tracker(c)

    def gate() -> bool:  # the cascade's test: top-two logit margin against the tracked threshold
        top2 = logits.float().topk(2, dim=-1).values
        return tracker(float(top2[0, 0] - top2[0, 1]))

    return {
        "dense_forward": lambda: model(ids, mask),
        "complexity_and_policy": lambda: ladder.decide(ids, mask, 0.5, [("auto", 0.0, 1.0)]),
        "cascade_gate": gate,
    }


@torch.inference_mode()
def decision_cost(
    bundle: Bundle, seq_lens=(32, 128), warmup: int = 10, repeats: int = 50, threads: int = 1
) -> dict:
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = bundle.model.eval()
    ladder = LadderPolicy(bundle.meta, bundle.tokenizer)
    vocab = model.encoder.get_input_embeddings().num_embeddings
    rows = []
    try:
        for seq in dict.fromkeys(min(t, bundle.max_length) for t in seq_lens):
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(min(1000, vocab // 2), vocab, (1, seq), generator=g)
            timed = _decisions(model, ladder, ids, torch.ones_like(ids))
            times = {k: [] for k in timed}
            for _ in range(warmup + repeats):  # interleaved: drift hits all three alike
                for k, fn in timed.items():
                    times[k].append(_ms(fn))
            med = {k: statistics.median(v[warmup:]) for k, v in times.items()}
            rows.append(
                {
                    "batch": 1,
                    "seq_len": seq,
                    **{f"{k}_ms": round(v, 4) for k, v in med.items()},
                    "complexity_and_policy_share": round(
                        med["complexity_and_policy"] / med["dense_forward"], 5
                    ),
                    "cascade_gate_share": round(med["cascade_gate"] / med["dense_forward"], 5),
                }
            )
    finally:
        torch.set_num_threads(prev)
    return {"threads": threads, "warmup": warmup, "repeats": repeats, "rows": rows}
