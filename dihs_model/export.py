"""One width level as a standalone model: an ONNX file that ONNX Runtime runs without this project.

The level's budget is baked in (only its heads' and neurons' weights are in the graph), inputs are
`input_ids` and `attention_mask` [batch, tokens] (int64), the output `logits` [batch, labels].
`int8` quantizes the exported graph with ONNX Runtime's dynamic quantization (weights per output
channel). The folder also holds the tokenizer and `dihs-level.json` (labels, the level's budget).

A plain-transformers safetensors checkpoint is not offered: transformers 5 derives a head's size
from hidden_size / num_attention_heads and has dropped `pruned_heads`, so a layer with k < H heads
of the original head size has no config that describes it.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch

from .budget import Budget
from .bundle import Bundle, atomic_folder, bundle_checksum

FORMATS = ("onnx",)
EXPORT_DTYPES = ("float32", "int8")
MODEL_FILE = "model.onnx"
LEVEL_FILE = "dihs-level.json"


class ExportError(ValueError):
    """A level or format that cannot be exported, as one line."""


class _Level(torch.nn.Module):
    def __init__(self, model, budget: Budget):
        super().__init__()
        self.model, self.budget = model, budget

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask, budget=self.budget).logits


def level_record(bundle: Bundle, name: str) -> dict:
    """The ladder level `name` as dihs.json records it."""
    levels = bundle.meta.get("levels") or []
    for lv in levels:
        if lv["name"] == name:
            return lv
    names = ", ".join(lv["name"] for lv in levels) or "none: run `dihs calibrate` first"
    raise ExportError(f"the bundle has no level {name!r}; its levels: {names}")


def export_level(
    bundle: Bundle, name: str, out: Path, fmt: str = "onnx", dtype: str = "float32", force: bool = False
) -> dict:
    """Write level `name` of the bundle to the folder `out` (atomically); returns what was written."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: choose {', '.join(FORMATS)}")
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"an exported level is {' or '.join(EXPORT_DTYPES)}, not {dtype!r}")
    record = level_record(bundle, name)
    budget = Budget.from_meta(record)
    model = (
        copy.deepcopy(bundle.model).float().cpu().eval()
    )  # the bundle's own model stays where and as it is
    ids = torch.full((2, 8), 1, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 6:] = (
        0  # padding in the example, so the trace keeps the attention-mask path (forward skips it without)
    )
    axes = {
        "input_ids": {0: "batch", 1: "tokens"},
        "attention_mask": {0: "batch", 1: "tokens"},
        "logits": {0: "batch"},
    }
    with atomic_folder(Path(out), force) as tmp:
        path = tmp / MODEL_FILE
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Level(model, budget),
                (ids, mask),
                str(path),
                dynamo=False,
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=17,
            )
        if dtype == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            plain = tmp / "float32.onnx"
            path.rename(plain)
            quantize_dynamic(str(plain), str(path), weight_type=QuantType.QInt8, per_channel=True)
            plain.unlink()
        bundle.tokenizer.save_pretrained(tmp)
        info = {
            "level": record,
            "labels": bundle.labels,
            "max_length": bundle.max_length,
            "dtype": dtype,
            "format": fmt,
            "bundle_checksum": bundle_checksum(bundle.meta),
            "inputs": ["input_ids", "attention_mask"],
            "outputs": ["logits"],
            "bytes": path.stat().st_size,
        }
        (tmp / LEVEL_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
