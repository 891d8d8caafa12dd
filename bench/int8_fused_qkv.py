"""int8 with Q, K and V as one packed matmul against three separate ones, every ladder level at batch
1 and 8 x 32 and 128 tokens, interleaved medians on 1 thread (the figures in docs/results.md).

    python bench/int8_fused_qkv.py BUNDLE OUT.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from dihs_model.budget import Budget
from dihs_model.bundle import load_bundle
from dihs_model.precision import prepare, with_dtype


def main(bundle_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    bundle = load_bundle(bundle_path)
    levels = [None] + [Budget.from_meta(lv) for lv in bundle.meta["levels"][1:]]
    names = [lv["name"] for lv in bundle.meta["levels"]]
    fused, three = with_dtype(bundle.model, "int8"), with_dtype(bundle.model, "int8")
    three.kernels.fuse_qkv = False
    prepare(fused, levels)
    prepare(three, levels)
    out = {}
    for B, T in ((1, 32), (1, 128), (8, 32), (8, 128)):
        ids = torch.randint(1000, 20000, (B, T), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        for name, level in zip(names, levels):
            times: dict[str, list[float]] = {"fused": [], "three": []}
            with torch.inference_mode():
                for rep in range(13 if B * T <= 256 else 7):
                    for key, model in (("fused", fused), ("three", three)):
                        t0 = time.perf_counter()
                        model(ids, mask, budget=level)
                        if rep:  # the first round warms up
                            times[key].append(time.perf_counter() - t0)
            f, s = statistics.median(times["fused"]), statistics.median(times["three"])
            out[f"b{B}_s{T}_{name}"] = {
                "fused_ms": round(f * 1e3, 2),
                "three_ms": round(s * 1e3, 2),
                "speedup": round(s / f, 3),
            }
            print(f"batch {B} x {T} {name}: {out[f'b{B}_s{T}_{name}']}", flush=True)
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
