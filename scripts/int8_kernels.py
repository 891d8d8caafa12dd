"""Which int8 kernel: each candidate on MiniLM's projection shapes, and whole width levels in ONNX
Runtime against this project's torch path, timed interleaved in one run (1 thread).

    python scripts/int8_kernels.py BUNDLE OUT.json

Per projection [tokens, in] x [in, out] at batch 8 x 128 tokens: float32 F.linear; bfloat16
F.linear; fbgemm's dynamic int8 linear on a prepacked per-channel weight (what precision.py uses);
oneDNN's qlinear_pointwise on plain int8 tensors (the PT2E/X86InductorQuantizer lowering, the named
successor of torch's deprecated quantized tensors) with per-tensor activation quantization done in
eager torch; torch._int_mm with per-row activation scales done in eager torch; torchao's
Int8DynamicActivationInt8Weight if torchao is installed. Whole levels (f100, f50): the project's
float32 and int8 forward against `dihs export`'s ONNX graph in ONNX Runtime, float32 and int8.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

warnings.simplefilter("ignore")
torch.set_num_threads(1)
REPEATS, WARMUP = 15, 3


def timed(fns: dict, repeats: int = REPEATS) -> dict:
    times = {k: [] for k in fns}
    for rep in range(WARMUP + repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            if rep >= WARMUP:
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def projection_candidates(M: int, K: int, N: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x, w, b = (
        torch.randn(M, K, generator=g),
        torch.randn(N, K, generator=g) * 0.05,
        torch.randn(N, generator=g),
    )
    scale = w.abs().amax(1) / 127
    wq = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    qw = torch.quantize_per_channel(w, scale.double(), torch.zeros(N, dtype=torch.long), 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(qw, b)
    onednn = torch.ops.onednn.qlinear_prepack(wq, [M, K])
    wqt = wq.t().contiguous()
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()

    def onednn_q():
        s = float(x.abs().amax()) / 127
        xq = torch.clamp(torch.round(x / s) + 128, 0, 255).to(torch.uint8)
        return torch.ops.onednn.qlinear_pointwise(
            xq,
            s,
            128,
            onednn,
            scale,
            torch.zeros(N, dtype=torch.long),
            b,
            1.0,
            0,
            torch.float32,
            "none",
            [None],
            "",
        )

    def int_mm():
        s = x.abs().amax(1, keepdim=True) / 127
        return torch._int_mm((x / s).round().to(torch.int8), wqt) * s * scale + b

    fns = {
        "float32": lambda: F.linear(x, w, b),
        "bfloat16": lambda: F.linear(xb, wb, bb),
        "fbgemm_dynamic_int8": lambda: torch.ops.quantized.linear_dynamic(x, packed, False),
        "onednn_qlinear_int8": onednn_q,
        "int_mm_int8": int_mm,
    }
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        lin = torch.nn.Linear(K, N)
        lin.weight.data, lin.bias.data = w.clone(), b.clone()
        m = torch.nn.Sequential(lin)
        quantize_(m, Int8DynamicActivationInt8WeightConfig())
        fns["torchao_da8w8"] = lambda: m(x)
    except ImportError:
        pass
    ref = F.linear(x, w, b)
    errors = {k: float((f().float() - ref).abs().max() / ref.abs().max()) for k, f in fns.items()}
    with torch.inference_mode():
        ms = timed(fns)
    return {
        k: {"ms": round(v, 3), "speedup": round(ms["float32"] / v, 3), "max_rel_error": round(errors[k], 4)}
        for k, v in ms.items()
    }


def level_candidates(bundle_path: str, level: str, B: int = 8, T: int = 128) -> dict:
    import onnxruntime as ort

    from dihs_model.budget import Budget
    from dihs_model.bundle import load_bundle
    from dihs_model.export import export_level, level_record
    from dihs_model.precision import with_dtype

    bundle = load_bundle(bundle_path)
    budget = Budget.from_meta(level_record(bundle, level))
    ids = torch.randint(1000, 20000, (B, T), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    q = with_dtype(bundle.model, "int8")
    fns = {
        "torch_float32": lambda: bundle.model(ids, mask, budget=budget),
        "torch_int8_fbgemm": lambda: q(ids, mask, budget=budget),
    }
    with tempfile.TemporaryDirectory() as d:
        for dtype in ("float32", "int8"):
            out = Path(d) / dtype
            export_level(bundle, level, out, dtype=dtype)
            sess = ort.InferenceSession(str(out / "model.onnx"), so, providers=["CPUExecutionProvider"])
            fns[f"onnxruntime_{dtype}"] = lambda s=sess: s.run(None, feed)
        with torch.inference_mode():
            ms = timed(fns, repeats=10)
    return {k: {"ms": round(v, 2), "speedup": round(ms["torch_float32"] / v, 3)} for k, v in ms.items()}


def main(bundle_path: str, out: str) -> None:
    shapes = {
        "qkv": (8 * 128, 384, 384),
        "attention_out": (8 * 128, 384, 384),
        "ffn_in": (8 * 128, 384, 1536),
        "ffn_out": (8 * 128, 1536, 384),
        "ffn_in_f50": (8 * 128, 384, 768),
        "ffn_out_f50": (8 * 128, 768, 384),
    }
    result = {
        "threads": 1,
        "torch": torch.__version__,
        "batch": 8,
        "seq_len": 128,
        "projections": {name: {"shape": list(s), **projection_candidates(*s)} for name, s in shapes.items()},
        "levels": {lv: level_candidates(bundle_path, lv) for lv in ("f100", "f50")},
    }
    Path(out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for name, r in result["projections"].items():
        print(name, r["shape"], {k: v["speedup"] for k, v in r.items() if k != "shape"})
    for lv, r in result["levels"].items():
        print(lv, {k: v["speedup"] for k, v in r.items()})


if __name__ == "__main__":
    main(*sys.argv[1:3])
