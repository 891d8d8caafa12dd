"""Bundles: round trip, checksums, atomic writes, safetensors only."""

import json

import pytest
import torch

from dihs_model import bundle as bundle_mod
from dihs_model.bundle import BundleError, load_bundle, new_bundle, save_bundle
from dihs_model.calibrate import calibrate_bundle
from dihs_model.data import Examples


@pytest.fixture
def tiny_bundle(tiny_checkpoint):
    return new_bundle(str(tiny_checkpoint), ["neg", "pos"], 32)


def _examples():
    texts = ["good great fun", "bad awful dull", "love the movie", "hate the plot"] * 4
    return Examples(texts, [1, 0, 1, 0] * 4, ["neg", "pos"])


def test_round_trip_gives_identical_outputs(tiny_bundle, tmp_path):
    out = save_bundle(tiny_bundle, tmp_path / "out" / "b")
    loaded = load_bundle(out)
    ids, mask = tiny_bundle.encode(["good movie", "the plot was awful and dull"])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids, mask).logits, tiny_bundle.model.eval()(ids, mask).logits)
    assert loaded.labels == ["neg", "pos"] and set(loaded.meta["files"]) >= {
        "model.safetensors",
        "config.json",
    }
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b"]  # no temp folders left


def test_calibrated_bundle_stores_heads_and_neurons_in_importance_order(tiny_bundle, tmp_path):
    cal = calibrate_bundle(tiny_bundle, _examples(), progress=False)
    for name in ("michel", "fisher", "attention"):
        assert torch.tensor(cal.meta["importance"]["heads"][name]).shape == (3, 4)
    for name in ("michel", "fisher"):
        assert torch.tensor(cal.meta["importance"]["neurons"][name]).shape == (3, 64)
    for kind in ("heads", "neurons"):
        michel = torch.tensor(cal.meta["importance"][kind]["michel"])
        assert (michel[:, :-1] >= michel[:, 1:]).all()
    assert all(sorted(row) == [0, 1, 2, 3] for row in cal.meta["head_order"])
    assert all(sorted(row) == list(range(64)) for row in cal.meta["neuron_order"])
    assert cal.meta["levels"][0]["heads"] == [4, 4, 4] and cal.meta["levels"][0]["neurons"] == [64, 64, 64]
    ids, mask = cal.encode(["good movie"])
    with torch.no_grad():  # same function, heads and neurons only moved
        assert (cal.model(ids, mask).logits - tiny_bundle.model(ids, mask).logits).abs().max() < 1e-5
    loaded = load_bundle(save_bundle(cal, tmp_path / "c"))
    assert loaded.meta["head_order"] == cal.meta["head_order"]
    assert loaded.meta["neuron_order"] == cal.meta["neuron_order"]


def _rewrite_meta(path, change):
    meta = json.loads((path / "dihs.json").read_text())
    change(meta)
    (path / "dihs.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("labels"), "labels: Field required"),
        (lambda m: m.update(labels="pos"), "labels: Input should be a valid list"),
        (lambda m: m["levels"][1].update(neurons=[1, 2]), "has 3 head counts and 2 neuron counts"),
        (
            lambda m: m["levels"][1].update(heads=[1, 1, 1, 1], neurons=[1, 1, 1, 1]),
            "has 4 layers; the model has 3",
        ),
        (lambda m: m["levels"][1].update(heads=[9, 9, 9]), "keeps more heads or neurons than the model has"),
        (lambda m: m["levels"].pop(0), "levels must start with the full model"),
        (lambda m: m["cascade"]["plans"][0].pop("first"), "cascade.plans.0.first: Field required"),
    ],
)
def test_a_malformed_dihs_json_is_refused_with_one_line(tiny_bundle, tmp_path, change, message):
    out = save_bundle(calibrate_bundle(tiny_bundle, _examples(), progress=False), tmp_path / "b")
    _rewrite_meta(out, change)
    with pytest.raises(BundleError) as e:
        load_bundle(out, verify=False)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_format_1_bundle_is_refused_by_name_and_upgraded_by_calibrate(tiny_bundle, tmp_path):
    out = save_bundle(tiny_bundle, tmp_path / "b")

    def to_v1(m):  # what a format-1 bundle looked like: heads-only levels, no neuron order
        m.update(
            format_version=1,
            levels=[{"name": "h100", "target_ratio": 1.0, "heads": [4, 4, 4], "heads_ratio": 1.0}],
        )
        m.pop("neuron_order")

    _rewrite_meta(out, to_v1)
    with pytest.raises(
        BundleError, match=r"bundle format 1; this version reads 2: upgrade it with `dihs calibrate"
    ):
        load_bundle(out, verify=False)
    old = load_bundle(out, verify=False, upgrade=True)
    assert old.meta["format_version"] == 2 and "levels" not in old.meta
    assert old.meta["neuron_order"] == [list(range(64))] * 3
    cal = calibrate_bundle(old, _examples(), progress=False)
    assert cal.meta["levels"][0]["neurons"] == [64, 64, 64]


def test_existing_output_needs_force(tiny_bundle, tmp_path):
    out = save_bundle(tiny_bundle, tmp_path / "b")
    with pytest.raises(BundleError, match="--force"):
        save_bundle(tiny_bundle, out)
    tiny_bundle.meta["note"] = "second"
    save_bundle(tiny_bundle, out, force=True)
    assert json.loads((out / "dihs.json").read_text())["note"] == "second"


def test_failed_write_leaves_nothing(tiny_bundle, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_mod, "save_file", boom)
    with pytest.raises(OSError):
        save_bundle(tiny_bundle, tmp_path / "out" / "b")
    assert list((tmp_path / "out").iterdir()) == []


def test_corrupt_or_missing_files_are_refused(tiny_bundle, tmp_path):
    out = save_bundle(tiny_bundle, tmp_path / "b")
    w = out / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(out)
    w.unlink()
    with pytest.raises(BundleError, match="model.safetensors is missing"):
        load_bundle(out)
    with pytest.raises(BundleError, match="not a DIHS bundle"):
        load_bundle(tmp_path / "nowhere")


def test_pickle_checkpoints_are_refused(tiny_checkpoint, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(BundleError, match="only safetensors"):
        new_bundle(str(pickled), ["a", "b"], 32)
    with pytest.raises(BundleError, match="only safetensors"):
        new_bundle(str(pickled / "pytorch_model.bin"), ["a", "b"], 32)
