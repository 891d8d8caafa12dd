"""Latency vs heads: sliced (heads removed) vs masked (heads zeroed, same compute as dense).

Variants are interleaved (A B C ... A B C ...) after a warm-up, so drift on a noisy machine hits
all of them alike; `dense` is timed twice (`dense` and `dense-again`) to show the noise floor.
The model is timed on its own device and dtype; on a GPU each call is bracketed by
torch.cuda.synchronize(), so the time is the kernels' and not only their launch.
"""

from __future__ import annotations

import statistics
import time

import torch
from tqdm import tqdm

from .bundle import Bundle
from .surgery import encoder_flops

BENCH_RATIOS = (1.0, 0.75, 0.5, 0.25)
SHAPES = ((1, 32), (1, 128), (8, 32), (8, 128))  # (batch, seq_len)


def _variants(bundle: Bundle, ratios):
    L, H = bundle.model.shape.n_layers, bundle.model.shape.n_heads
    weight = next(bundle.model.parameters())
    yield "dense", 1.0, H, {}
    yield "dense-again", 1.0, H, {}
    for r in ratios:
        k = round(r * H)
        yield "sliced", k / H, k, {"heads": [k] * L}
        mask = torch.zeros(L, H, device=weight.device, dtype=weight.dtype)
        mask[:, :k] = 1.0
        yield "masked", k / H, k, {"head_mask": mask}


@torch.inference_mode()
def bench(bundle: Bundle, ratios=BENCH_RATIOS, shapes=SHAPES, warmup: int = 10, repeats: int = 20,
          threads: int = 1, progress: bool = True) -> dict:
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    model, shape = bundle.model.eval(), bundle.model.shape
    device, dtype = bundle.device, next(model.parameters()).dtype
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    vocab = model.encoder.get_input_embeddings().num_embeddings
    rows = []
    # a model never sees more than the bundle's max_length tokens: time what it would really run
    shapes = list(dict.fromkeys((b, min(t, bundle.max_length)) for b, t in shapes))
    try:
        for batch, seq in tqdm(shapes, desc="bench", unit="shape", disable=not progress):
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(min(1000, vocab // 2), vocab, (batch, seq), generator=g).to(device)  # skip specials
            mask = torch.ones_like(ids)
            variants = list(_variants(bundle, ratios))
            times = {i: [] for i in range(len(variants))}
            for rep in range(warmup + repeats):
                for i, (_, _, _, kw) in enumerate(variants):
                    sync()
                    t0 = time.perf_counter()
                    model(ids, mask, **kw)
                    sync()
                    if rep >= warmup:
                        times[i].append((time.perf_counter() - t0) * 1e3)
            dense_ms = statistics.median(times[0])
            dense_flops = encoder_flops(shape, [shape.n_heads] * shape.n_layers, seq)
            for i, (mode, ratio, k, _) in enumerate(variants):
                med = statistics.median(times[i])
                q = statistics.quantiles(times[i], n=10)
                flops = encoder_flops(shape, [k] * shape.n_layers, seq)
                rows.append({
                    "mode": mode, "heads_ratio": ratio, "batch": batch, "seq_len": seq,
                    "median_ms": round(med, 3), "p10_ms": round(q[0], 3), "p90_ms": round(q[-1], 3),
                    # masked runs all heads: its work is dense whatever the mask says
                    "ideal_speedup": round(dense_flops / (dense_flops if mode == "masked" else flops), 4),
                    "speedup": round(dense_ms / med, 4),
                })
    finally:
        torch.set_num_threads(prev_threads)
    gpu = {"device_name": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}
    return {"threads": threads, "warmup": warmup, "repeats": repeats, "dtype": str(dtype).removeprefix("torch."),
            "device": str(device), **gpu, "torch": torch.__version__, "rows": rows}


def plot_bench(result: dict, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys((r["batch"], r["seq_len"]) for r in result["rows"]))
    fig, axes = plt.subplots(1, len(shapes), figsize=(3.6 * len(shapes), 3.6), sharey=True, squeeze=False)
    for ax, (b, t) in zip(axes[0], shapes):
        rows = [r for r in result["rows"] if (r["batch"], r["seq_len"]) == (b, t)]
        for mode, style in (("sliced", "o-"), ("masked", "s--")):
            rs = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["heads_ratio"])
            ax.plot([r["heads_ratio"] for r in rs], [r["speedup"] for r in rs], style, label=mode)
        rs = sorted((r for r in rows if r["mode"] == "sliced"), key=lambda r: r["heads_ratio"])
        ax.plot([r["heads_ratio"] for r in rs], [r["ideal_speedup"] for r in rs], ":", color="gray", label="FLOP ideal")
        ax.set(title=f"batch {b}, seq {t}", xlabel="heads ratio")
        ax.grid(alpha=0.3)
    where = result.get("device_name") or f"{result['threads']} thread(s), CPU"
    axes[0][0].set_ylabel(f"speedup vs dense ({result.get('dtype', 'float32')}, {where})")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
