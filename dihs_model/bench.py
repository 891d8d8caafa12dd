"""Latency vs FLOPs: each width level sliced (what it removes is not computed) vs masked (zeroed,
the same compute as dense), against its FLOP-ideal speedup; and a replay of a test set one input at
a time, the cascade against the full model, gate and second passes included.

Variants are interleaved (A B C ... A B C ...) after a warm-up, so drift on a noisy machine hits
all of them alike; `dense` is timed twice (`dense` and `dense-again`) to show the noise floor.
With several dtypes (float32 and int8, say) every variant runs in each, interleaved in one run, and
speedups are against the first dtype's dense. On a GPU each call is bracketed by
torch.cuda.synchronize(), so the time is the kernels' and not only their launch.
"""

from __future__ import annotations

import statistics
import time

import torch
from tqdm import tqdm

from .budget import Budget
from .bundle import Bundle
from .cascade import ARRIVAL_SEED, EscalationTracker, cascade_flops, plan_from_meta
from .passes import margin
from .precision import level_weight_bytes, with_dtype

SHAPES = ((1, 32), (1, 128), (8, 32), (8, 128))  # (batch, seq_len)


def _variants(bundle: Bundle, model):
    """(mode, budget, forward kwargs): dense twice, then every ladder level sliced and masked."""
    shape = model.shape
    weight = next(model.parameters())
    full = Budget.full(shape)
    yield "dense", full, {}
    yield "dense-again", full, {}
    for lv in bundle.meta["levels"][1:]:
        b = Budget.from_meta(lv)
        yield "sliced", b, {"budget": b}
        hm = torch.zeros(shape.n_layers, shape.n_heads, device=weight.device, dtype=weight.dtype)
        nm = torch.zeros(shape.n_layers, shape.ffn, device=weight.device, dtype=weight.dtype)
        for layer in range(shape.n_layers):
            hm[layer, : b.heads[layer]], nm[layer, : b.neurons[layer]] = 1.0, 1.0
        yield "masked", b, {"head_mask": hm, "neuron_mask": nm}


def _sync(device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


@torch.inference_mode()
def bench(
    bundle: Bundle,
    shapes=SHAPES,
    warmup: int = 10,
    repeats: int = 20,
    threads: int = 1,
    progress: bool = True,
    dtypes: tuple[str, ...] = ("float32",),
) -> dict:
    """Every variant in every dtype, interleaved; speedups are against the first dtype's dense."""
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    shape, device = bundle.model.shape, bundle.device
    models = {d: with_dtype(bundle.model.eval(), d) for d in dtypes}
    sync = _sync(device)
    vocab = bundle.model.encoder.get_input_embeddings().num_embeddings
    rows = []
    # a model never sees more than the bundle's max_length tokens: time what it would really run
    shapes = list(dict.fromkeys((b, min(t, bundle.max_length)) for b, t in shapes))
    try:
        for batch, seq in tqdm(shapes, desc="bench", unit="shape", disable=not progress):
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(min(1000, vocab // 2), vocab, (batch, seq), generator=g).to(
                device
            )  # skip specials
            mask = torch.ones_like(ids)
            variants = [(d, m, *v) for d, m in models.items() for v in _variants(bundle, m)]
            times = {i: [] for i in range(len(variants))}
            for rep in range(warmup + repeats):
                for i, (_, model, _, _, kw) in enumerate(variants):
                    sync()
                    t0 = time.perf_counter()
                    model(ids, mask, **kw)
                    sync()
                    if rep >= warmup:
                        times[i].append((time.perf_counter() - t0) * 1e3)
            dense_ms = statistics.median(times[0])
            own_dense = {
                d: statistics.median(times[i])
                for i, (d, _, mode, _, _) in enumerate(variants)
                if mode == "dense"
            }
            for i, (dtype, model, mode, budget, _) in enumerate(variants):
                med = statistics.median(times[i])
                q = statistics.quantiles(times[i], n=10)
                ratio = budget.flops_ratio(shape, [seq])
                rows.append(
                    {
                        "dtype": dtype,
                        "mode": mode,
                        "level": budget.name,
                        "weight_bytes": level_weight_bytes(model, budget),
                        "flops_ratio": round(ratio, 4),
                        "heads_ratio": round(budget.heads_ratio(shape), 4),
                        "neurons_ratio": round(budget.neurons_ratio(shape), 4),
                        "batch": batch,
                        "seq_len": seq,
                        "median_ms": round(med, 3),
                        "p10_ms": round(q[0], 3),
                        "p90_ms": round(q[-1], 3),
                        # masked runs everything: its work is dense whatever the mask says
                        "ideal_speedup": round(1.0 if mode == "masked" else 1.0 / ratio, 4),
                        "speedup": round(dense_ms / med, 4),
                        "speedup_in_dtype": round(
                            own_dense[dtype] / med, 4
                        ),  # against this dtype's own dense
                        "of_ideal": round(dense_ms / med * (1.0 if mode == "masked" else ratio), 4),
                    }
                )
    finally:
        torch.set_num_threads(prev_threads)
    gpu = {"device_name": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}
    return {
        "threads": threads,
        "warmup": warmup,
        "repeats": repeats,
        "dtypes": list(dtypes),
        "baseline": dtypes[0],
        "device": str(device),
        **gpu,
        "torch": torch.__version__,
        "rows": rows,
        "stacking": stacking(rows),
    }


def stacking(rows: list[dict]) -> list[dict]:
    """Whether a dtype and width multiply: each sliced level in another dtype against the product of
    that dtype's dense speedup and the level's baseline speedup (1.0 = they multiply exactly)."""
    by = {(r["dtype"], r["mode"], r["level"], r["batch"], r["seq_len"]): r for r in rows}
    base = rows[0]["dtype"] if rows else None
    out = []
    for (d, mode, level, b, t), r in by.items():
        if d == base or mode != "sliced":
            continue
        product = (
            by[(d, "dense", rows[0]["level"], b, t)]["speedup"] * by[(base, "sliced", level, b, t)]["speedup"]
        )
        out.append(
            {
                "dtype": d,
                "level": level,
                "batch": b,
                "seq_len": t,
                "speedup": r["speedup"],
                "product": round(product, 4),
                "of_product": round(r["speedup"] / product, 4),
            }
        )
    return out


@torch.inference_mode()
def replay(
    bundle: Bundle,
    texts: list[str],
    target: float = 0.5,
    threads: int = 1,
    warmup: int = 20,
    progress: bool = True,
) -> dict:
    """Each text alone (batch 1, in one seeded arrival order), through the full model and through the
    cascade plan for `target` (first pass, margin gate with its live tracker, second pass if escalated),
    interleaved text by text; tokenization is done beforehand for both (it is the same work)."""
    plan = plan_from_meta(bundle.meta, target)
    if plan is None:
        raise ValueError(f"the bundle has no cascade plan for FLOPs target {target:g}: run `dihs calibrate`")
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    model, shape, device = bundle.model.eval(), bundle.model.shape, bundle.device
    sync = _sync(device)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(ARRIVAL_SEED)).tolist()
    encoded = [bundle.encode([texts[i]]) for i in order]
    tracker = EscalationTracker(plan)

    def dense(ids, mask):
        model(ids, mask)

    def cascade(ids, mask) -> bool:
        _, conf = margin(model(ids, mask, budget=plan.first).logits)
        escalate = tracker(float(conf[0]))
        if escalate:
            model(ids, mask, budget=plan.second)
        return escalate

    totals, escalated, tokens = {"dense": 0.0, "cascade": 0.0}, [], []
    try:
        for ids, mask in encoded[:warmup]:
            dense(ids, mask), cascade(ids, mask)
        tracker = EscalationTracker(plan)  # the warm-up's decisions do not count
        for ids, mask in tqdm(encoded, desc="replay", unit="text", disable=not progress):
            for name, fn in (("dense", dense), ("cascade", cascade)):
                sync()
                t0 = time.perf_counter()
                out = fn(ids, mask)
                sync()
                totals[name] += time.perf_counter() - t0
                if name == "cascade":
                    escalated.append(bool(out))
            tokens.append(int(mask.sum()))
    finally:
        torch.set_num_threads(prev_threads)
    return {
        "target_flops_ratio": target,
        "n": len(texts),
        "threads": threads,
        "device": str(device),
        "dense_total_s": round(totals["dense"], 3),
        "cascade_total_s": round(totals["cascade"], 3),
        "time_ratio": round(totals["cascade"] / totals["dense"], 4),
        "flops_ratio": round(cascade_flops(shape, plan.first, plan.second, tokens, escalated), 4),
        "escalated": round(sum(escalated) / len(escalated), 4),
        "first_pass": plan.first.name,
        "second_pass": (plan.second or Budget.full(shape)).name,
    }


@torch.inference_mode()
def budget_costs(
    model, budgets: list[Budget | None], batch: int, seq_len: int, repeats: int = 3
) -> list[float]:
    """Seconds per text of each budget (None: the full model) at this batch shape on the model's own
    device and threads: the median of `repeats` interleaved calls after one warm-up round."""
    device = next(model.parameters()).device
    sync = _sync(device)
    vocab = model.encoder.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch, seq_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    times: list[list[float]] = [[] for _ in budgets]
    for rep in range(repeats + 1):
        for i, b in enumerate(budgets):
            sync()
            t0 = time.perf_counter()
            model(ids, mask, budget=b)
            sync()
            if rep:
                times[i].append((time.perf_counter() - t0) / batch)
    return [statistics.median(t) for t in times]


def plot_bench(result: dict, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys((r["batch"], r["seq_len"]) for r in result["rows"]))
    fig, axes = plt.subplots(1, len(shapes), figsize=(3.6 * len(shapes), 3.6), sharey=True, squeeze=False)
    for ax, (b, t) in zip(axes[0], shapes):
        rows = [r for r in result["rows"] if (r["batch"], r["seq_len"]) == (b, t)]
        base = rows[0].get("dtype", "float32")
        for dtype in dict.fromkeys(r.get("dtype", base) for r in rows):
            # sliced levels from the dtype's own dense point; masked (the noise reference) for the
            # baseline only
            for mode, style in (("sliced", "o-"), ("masked", "s--"))[: 2 if dtype == base else 1]:
                kinds = ("dense", mode) if mode == "sliced" else (mode,)
                rs = sorted(
                    (r for r in rows if r["mode"] in kinds and r.get("dtype", base) == dtype),
                    key=lambda r: r["flops_ratio"],
                )
                ax.plot(
                    [r["flops_ratio"] for r in rs], [r["speedup"] for r in rs], style, label=f"{mode} {dtype}"
                )
        rs = sorted(
            (r for r in rows if r["mode"] == "sliced" and r.get("dtype", base) == base),
            key=lambda r: r["flops_ratio"],
        )
        ax.plot(
            [r["flops_ratio"] for r in rs],
            [r["ideal_speedup"] for r in rs],
            ":",
            color="gray",
            label="FLOP ideal",
        )
        ax.set(title=f"batch {b}, seq {t}", xlabel="FLOPs ratio")
        ax.grid(alpha=0.3)
    where = result.get("device_name") or f"{result['threads']} thread(s), CPU"
    axes[0][0].set_ylabel(f"speedup vs dense {result.get('baseline', 'float32')} ({where})")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
