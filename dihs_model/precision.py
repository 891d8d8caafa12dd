"""Number formats a model runs in: float32, bfloat16, or int8 width levels.

int8 quantizes each sliced Linear weight a budget uses once (per output channel, symmetric) and
keeps it packed, keyed by (layer, projection, width): a width level then runs as a model of that
size quantized on its own would, and budgets, the cascade and explanations are unchanged on top.
Activations are quantized per batch on the fly (dynamic quantization). The kernel is fbgemm's
dynamic int8 linear (`torch.ops.quantized.linear_dynamic`), picked by measurement on this CPU
(scripts/int8_kernels.py, docs/bench/int8-kernels-cpu.json); it takes the weight as a torch
quantized tensor, a type torch marks deprecated. Its successor here is oneDNN's
`torch.ops.onednn.qlinear_pointwise` on plain int8 tensors (what PT2E's X86InductorQuantizer
lowers to), measured beside it by the same script.

bfloat16 casts the whole model (fast where the CPU has AMX or AVX512-BF16, and on GPUs).
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Iterable

import torch

from .budget import Budget

DTYPES = ("float32", "bfloat16", "int8")


class DtypeError(ValueError):
    """A dtype that is unknown or cannot run on the asked device, as one line."""


def check_dtype(dtype: str, device: torch.device) -> None:
    if dtype not in DTYPES:
        raise DtypeError(f"unknown dtype {dtype!r}: choose {', '.join(DTYPES)}")
    if dtype == "int8" and device.type != "cpu":
        raise DtypeError("int8 runs on the CPU (fbgemm kernels): use --device cpu, or bfloat16 on a GPU")


def fast_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run in hardware here: a CUDA GPU that supports them, or a CPU with
    AMX or AVX512-BF16 (elsewhere a CPU emulates them, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's own probes (private)
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def dtype_name(model) -> str:
    """The dtype a model runs in, as DTYPES names it."""
    if getattr(model, "kernels", None) is not None:
        return "int8"
    return str(next(model.parameters()).dtype).removeprefix("torch.")


class Int8Kernels:
    """Packed int8 weights of every slice a forward has asked for, quantized on first use and kept."""

    def __init__(self, fuse_qkv: bool = True) -> None:
        self.fuse_qkv = fuse_qkv  # Q, K and V as one packed matmul (False: three, for comparisons)
        self._packed: dict[tuple, object] = {}
        self._bytes: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def __call__(
        self, key: tuple, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return self.fused(key, x, lambda: (weight, bias), weight.shape[0])

    def fused(self, key: tuple, x: torch.Tensor, parts, out_features: int) -> torch.Tensor:
        """A projection whose weight is built only when first packed: `parts()` gives (weight, bias),
        e.g. Q, K and V's slices concatenated."""
        packed = self._packed.get(key)
        if packed is None:
            packed = self._pack(key, *parts())
        out = torch.ops.quantized.linear_dynamic(x.reshape(-1, x.shape[-1]), packed, False)
        return out.view(*x.shape[:-1], out_features)

    def _pack(self, key: tuple, weight: torch.Tensor, bias: torch.Tensor | None):
        w = weight.detach().float().contiguous()
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-8).double()
        with warnings.catch_warnings():  # the deprecation the module docstring names, once per slice
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            qw = torch.quantize_per_channel(
                w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8
            )
        packed = torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())
        with self._lock:
            self._packed.setdefault(key, packed)
            # int8 weight, a float scale per output channel, a float bias
            self._bytes[key] = w.numel() + 4 * w.shape[0] + (0 if bias is None else 4 * bias.numel())
        return self._packed[key]

    def weight_bytes(self, keys: Iterable[tuple] | None = None) -> int:
        """Bytes of the packed weights for `keys` (default: every slice packed so far)."""
        return sum(self._bytes[k] for k in (self._bytes if keys is None else keys))


def with_dtype(model, dtype: str):
    """The model running in `dtype`: itself for float32; a bfloat16 copy; or an int8 view that shares
    the float weights (kept for slicing and explanations) and adds the packed int8 slices."""
    if dtype == "float32":
        return model
    if dtype == "bfloat16":
        return copy.deepcopy(model).to(torch.bfloat16)
    if dtype == "int8":
        view = copy.copy(model)  # a new Module object over the same parameters and submodules
        view.kernels = Int8Kernels()
        return view
    raise DtypeError(f"unknown dtype {dtype!r}: choose {', '.join(DTYPES)}")


def differentiable(model):
    """The model on float kernels: an int8 view's own float weights (its packed kernels have no
    gradient), for mask gradients; any other model as it is."""
    if getattr(model, "kernels", None) is None:
        return model
    view = copy.copy(model)
    view.kernels = None
    return view


@torch.inference_mode()
def prepare(model, budgets: Iterable[Budget | None]) -> None:
    """Quantize (int8) every slice `budgets` use now, at load, instead of on their first request."""
    if getattr(model, "kernels", None) is None:
        return
    device = next(model.parameters()).device
    ids = torch.ones((1, 2), dtype=torch.long, device=device)  # any token: only the slices' shapes matter
    mask = torch.ones_like(ids)
    for b in budgets:
        model(ids, mask, budget=b)


def level_weight_bytes(model, budget: Budget | None) -> int:
    """Bytes of the encoder Linear weights a budget runs on, in the model's dtype (int8: packed)."""
    shape = model.shape
    b = budget or Budget.full(shape)
    C, d = shape.hidden, shape.head_dim
    kernels = getattr(model, "kernels", None)
    total = 0
    for layer in range(shape.n_layers):
        rows, n = b.heads[layer] * d, b.neurons[layer]
        # (out, in) of Q, K, V, O, FFN in, FFN out; each with a bias of `out` floats
        for out_f, in_f in ((rows, C), (rows, C), (rows, C), (C, rows), (n, C), (C, n)):
            if kernels is not None:
                total += out_f * in_f + 4 * out_f + 4 * out_f
            else:
                total += (out_f * in_f + out_f) * next(model.parameters()).element_size()
    return total
