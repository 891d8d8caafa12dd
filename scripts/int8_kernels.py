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
One encoder layer's six projections (Q, K, V, O, FFN in, FFN out) at the token counts of batch 1
and 8 x 32 and 128 tokens: fbgemm as precision.py runs it, fbgemm with Q, K and V as one matmul,
and oneDNN's qlinear_pointwise (the kept successor) both ways: what replacing the kernel would cost.
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


def _fbgemm_pack(w: torch.Tensor, b: torch.Tensor):
    s = (w.abs().amax(1) / 127).clamp_min(1e-8).double()
    qw = torch.quantize_per_channel(w, s, torch.zeros_like(s, dtype=torch.long), 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(qw, b)


def _onednn_linear(w: torch.Tensor, b: torch.Tensor):
    """x -> x @ w.T + b with oneDNN on plain int8 tensors, the activation quantized per tensor (uint8)."""
    scale = (w.abs().amax(1) / 127).clamp_min(1e-8)
    packed = torch.ops.onednn.qlinear_prepack(
        (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), None
    )
    zeros = torch.zeros(w.shape[0], dtype=torch.long)

    def run(x):
        s = float(x.abs().amax()) / 127 + 1e-12
        xq = torch.clamp(torch.round(x / s) + 128, 0, 255).to(torch.uint8)
        return torch.ops.onednn.qlinear_pointwise(
            xq, s, 128, packed, scale, zeros, b, 1.0, 0, torch.float32, "none", [None], ""
        )

    return run


def layer_candidates(tokens: int, C: int = 384, ffn: int = 1536) -> dict:
    g = torch.Generator().manual_seed(0)
    shapes = {"q": (C, C), "k": (C, C), "v": (C, C), "o": (C, C), "in": (ffn, C), "out": (C, ffn)}
    W = {k: (torch.randn(*s, generator=g) * 0.05, torch.randn(s[0], generator=g)) for k, s in shapes.items()}
    W["qkv"] = (torch.cat([W[k][0] for k in "qkv"]), torch.cat([W[k][1] for k in "qkv"]))
    fb = {k: _fbgemm_pack(*v) for k, v in W.items()}
    on = {k: _onednn_linear(*v) for k, v in W.items()}
    x, h = torch.randn(tokens, C, generator=g), torch.randn(tokens, ffn, generator=g).relu()

    def fbgemm(keys):
        return lambda: [
            torch.ops.quantized.linear_dynamic(h if k == "out" else x, fb[k], False) for k in keys
        ]

    def onednn(keys):
        return lambda: [on[k](h if k == "out" else x) for k in keys]

    fns = {
        "float32": lambda: [
            F.linear(h if k == "out" else x, *W[k]) for k in ("q", "k", "v", "o", "in", "out")
        ],
        "fbgemm_per_projection": fbgemm(("q", "k", "v", "o", "in", "out")),  # precision.py today
        "fbgemm_fused_qkv": fbgemm(("qkv", "o", "in", "out")),
        "onednn_per_projection": onednn(("q", "k", "v", "o", "in", "out")),
        "onednn_fused_qkv": onednn(("qkv", "o", "in", "out")),
    }
    with torch.inference_mode():
        ms = timed(fns, repeats=30)
    base = ms["fbgemm_per_projection"]
    return {k: {"ms": round(v, 3), "vs_fbgemm_today": round(base / v, 3)} for k, v in ms.items()}


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
        "layers": {f"b{b}_s{t}": layer_candidates(b * t) for b in (1, 8) for t in (32, 128)},
    }
    Path(out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for name, r in result["projections"].items():
        print(name, r["shape"], {k: v["speedup"] for k, v in r.items() if k != "shape"})
    for lv, r in result["levels"].items():
        print(lv, {k: v["speedup"] for k, v in r.items()})
    for shape, r in result["layers"].items():
        print("one layer", shape, {k: v["vs_fbgemm_today"] for k, v in r.items()})


if __name__ == "__main__":
    main(*sys.argv[1:3])
