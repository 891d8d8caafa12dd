"""An exported width level runs in ONNX Runtime alone and answers as the bundle does at that level."""

import json

import numpy as np
import pytest
import torch

from dihs_cli.cli import main
from dihs_model.budget import Budget
from dihs_model.bundle import load_bundle, save_bundle
from tests.conftest import tiny_calibrated_bundle

ort = pytest.importorskip("onnxruntime")


def _saved(tmp_path):
    return save_bundle(tiny_calibrated_bundle(tmp_path), tmp_path / "bundle")


TEXTS = ["good great fun", "bad awful dull plot", "love the movie", "hate it", "the movie was good and fun"]


def _run(folder, texts):
    from transformers import AutoTokenizer  # the exported tokenizer, loaded as any user would

    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(texts, padding=True, return_tensors="np")
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {
        "input_ids": enc["input_ids"].astype(np.int64),
        "attention_mask": enc["attention_mask"].astype(np.int64),
    }
    return sess.run(["logits"], feed)[0]


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_exported_level_gives_the_bundles_predictions(tmp_path, dtype, capsys):
    path = _saved(tmp_path)
    bundle = load_bundle(path)
    level = bundle.meta["levels"][2]
    out = tmp_path / "exported"
    assert main(["export", str(path), "--level", level["name"], "--out", str(out), "--dtype", dtype]) == 0
    assert level["name"] in capsys.readouterr().out
    info = json.loads((out / "dihs-level.json").read_text())
    assert info["level"] == level and info["labels"] == bundle.labels and info["dtype"] == dtype
    got = _run(out, TEXTS)
    ids, mask = bundle.encode(TEXTS)
    with torch.inference_mode():
        ref = bundle.model(ids, mask, budget=Budget.from_meta(level)).logits.numpy()
    if dtype == "float32":
        np.testing.assert_allclose(got, ref, atol=1e-4)
    else:  # ONNX Runtime's dynamic int8: close to the level's float answers
        assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max() + 0.05
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_smaller_levels_export_smaller_files(tmp_path):
    path = _saved(tmp_path)
    levels = load_bundle(path).meta["levels"]
    sizes = []
    for lv in (levels[0], levels[-1]):
        assert main(["export", str(path), "--level", lv["name"], "--out", str(tmp_path / lv["name"])]) == 0
        sizes.append((tmp_path / lv["name"] / "model.onnx").stat().st_size)
    assert sizes[1] < sizes[0]


def test_bad_export_requests_are_one_line_and_leave_nothing(tmp_path, capsys):
    path = _saved(tmp_path)
    capsys.readouterr()
    assert main(["export", str(path), "--level", "f42", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no level 'f42'" in err[0] and "f100" in err[0]
    assert not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    assert main(["export", str(path), "--level", "f100", "--out", str(tmp_path / "taken")]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
