"""What running a batch in chunks of similar length buys on this CPU: random batches of a task's
held-out texts through forward_grouped's forward, as one chunk padded to the longest text against
length_chunks at several fixed costs per forward (token-equivalents), interleaved, one torch thread.

    python scripts/chunk_bench.py BUNDLE OUT.json [--plot OUT.png] [--batches 40]

The default CHUNK_FIXED_TOKENS (dihs_model/passes.py) and its scaling with a budget's FLOPs came
from this program's figures; it writes each variant's time relative to one chunk.
"""

import argparse
import json
import random
import time

import torch

from dihs_model.budget import Budget
from dihs_model.bundle import load_bundle
from dihs_model.data import load_split
from dihs_model.passes import chunk_fixed_tokens, length_chunks
from loadtests.common import task_of

FIXED = (16, 32, 64, 128)


def run(model, ids, mask, budget, fixed):
    lengths = mask.sum(1).tolist()
    runs = [list(range(len(lengths)))] if fixed is None else length_chunks(lengths, fixed)
    for rows in runs:
        T = max(lengths[i] for i in rows)
        model(ids[rows, :T], mask[rows, :T], budget=budget)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle"), ap.add_argument("out"), ap.add_argument("--plot")
    ap.add_argument("--batches", type=int, default=40)
    a = ap.parse_args()
    torch.set_num_threads(1)
    bundle = load_bundle(a.bundle)
    model = bundle.model.eval()
    texts = list(load_split(*task_of(None, "text", "label", a.bundle)).test.texts)
    smallest = Budget.from_meta(bundle.meta["levels"][-1])
    rng, rows = random.Random(0), []
    for size in (16, 12, 8):
        batches = [
            bundle.tokenizer(
                rng.sample(texts, size),
                padding=True,
                truncation=True,
                max_length=bundle.max_length,
                return_tensors="pt",
            )
            for _ in range(a.batches)
        ]
        for budget, name in ((None, "f100"), (smallest, smallest.name)):
            ratio = (
                1.0
                if budget is None
                else budget.flops_ratio(model.shape, [int(t) for t in batches[0]["attention_mask"].sum(1)])
            )
            default = round(chunk_fixed_tokens(ratio), 1)
            variants = list(dict.fromkeys([None, *FIXED, default]))  # the default may be one of FIXED
            spent = dict.fromkeys(variants, 0.0)
            with torch.inference_mode():
                for enc in batches[:3]:  # warm-up
                    for v in variants:
                        run(model, enc["input_ids"], enc["attention_mask"], budget, v)
                for enc in batches:
                    for v in variants:
                        t0 = time.perf_counter()
                        run(model, enc["input_ids"], enc["attention_mask"], budget, v)
                        spent[v] += time.perf_counter() - t0
            row = {
                "batch": size,
                "level": name,
                "one_chunk_ms_per_text": round(spent[None] / a.batches / size * 1e3, 3),
                "default_fixed_tokens": default,
                "time_vs_one_chunk": {str(v): round(spent[v] / spent[None], 4) for v in variants[1:]},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "bundle": a.bundle,
        "threads": 1,
        "batches_per_row": a.batches,
        "torch": torch.__version__,
        "rows": rows,
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.6))
        for r in rows:
            xs = [float(k) for k in r["time_vs_one_chunk"]][: len(FIXED)]  # FIXED's, then the default if new
            ax.plot(
                xs,
                list(r["time_vs_one_chunk"].values())[: len(FIXED)],
                marker="o",
                label=f"{r['level']} batch {r['batch']}",
            )
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("fixed cost per forward (token-equivalents)")
        ax.set_ylabel("time / one padded chunk")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)


if __name__ == "__main__":
    main()
