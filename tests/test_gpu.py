"""The CUDA path on tiny random models: numerics against the CPU, training, bundles, the engine, the CLI.

Every test is skipped where torch sees no CUDA GPU (CI, the CPU build of torch).
"""

import json
import math

import pytest
import torch

from dihs_cli.cli import main
from dihs_model.arch import supported_families
from dihs_model.bundle import load_bundle, new_bundle, save_bundle
from dihs_model.calibrate import calibrate_bundle
from dihs_model.cascade import run_pass
from dihs_model.data import Examples, load_eval
from dihs_model.evaluate import evaluate, predict
from dihs_model.robust import trained_budgets
from dihs_model.train import TrainConfig, budget_robust_loss, fine_tune
from tests.conftest import (
    make_tiny_checkpoint,
    random_batch,
    random_heads,
    tiny_classifier,
    write_reviews_csv,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda", 0)
FAMILIES = supported_families()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny checkpoint, a learnable CSV and a bundle trained and calibrated on the CPU (confident
    labels)."""
    tmp = tmp_path_factory.mktemp("gpu")
    ckpt, data = make_tiny_checkpoint(tmp), write_reviews_csv(tmp / "reviews.csv", n=80)
    out = tmp / "bundle"
    assert (
        main(
            [
                "train",
                "--min-epoch-examples",
                "0",
                "--model",
                str(ckpt),
                "--data",
                str(data),
                "--out",
                str(out),
                "--epochs",
                "4",
                "--batch-size",
                "8",
                "--lr",
                "3e-3",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return ckpt, data, out


@pytest.mark.parametrize("family", FAMILIES)
def test_full_level_matches_the_hf_model_on_cuda_and_the_cpu(family):
    model = tiny_classifier(family)
    ids, mask = random_batch()
    with torch.no_grad():
        cpu_hidden, cpu_logits = model.hidden(ids, mask), model(ids, mask).logits
        model.to(CUDA)
        ids, mask = ids.to(CUDA), mask.to(CUDA)
        hf = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden, logits = model.hidden(ids, mask), model(ids, mask).logits
    assert hidden.device == CUDA
    assert torch.allclose(hidden, hf, atol=1e-5)
    assert torch.allclose(hidden.cpu(), cpu_hidden, atol=1e-4)
    assert torch.allclose(logits.cpu(), cpu_logits, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", range(4))
def test_sliced_equals_masked_on_cuda_in_fp32_and_bf16(family, seed):
    model = tiny_classifier(family, seed=seed).to(CUDA)
    heads, mask = random_heads(model.shape.n_layers, model.shape.n_heads, seed)
    ids, am = (t.to(CUDA) for t in random_batch(seed=seed))
    with torch.no_grad():
        sliced = model(ids, am, heads=heads).logits
        masked = model(ids, am, head_mask=mask.to(CUDA)).logits
        assert (sliced - masked).abs().max() < 1e-5
        model.bfloat16()
        sliced = model(ids, am, heads=heads).logits
        masked = model(ids, am, head_mask=mask.to(CUDA, torch.bfloat16)).logits
    assert sliced.dtype == torch.bfloat16 and rel_err(sliced, masked) < 2e-2


def _examples():
    texts = ["good great fun", "bad awful dull", "love the movie", "hate the plot"] * 4
    return Examples(texts, [1, 0, 1, 0] * 4, ["neg", "pos"])


def test_fine_tune_steps_on_cuda_change_the_weights(tiny_checkpoint):
    bundle = new_bundle(str(tiny_checkpoint), ["neg", "pos"], 32, device="cuda")
    assert bundle.device == CUDA and all(t.device == CUDA for t in bundle.encode(["good fun"]))
    before = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
    summary = fine_tune(
        bundle,
        _examples(),
        TrainConfig(min_epoch_examples=0, epochs=1, batch_size=8, lr=1e-3),
        progress=False,
    )
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    changed = {n for n, p in bundle.model.named_parameters() if not torch.equal(p, before[n])}
    assert "classifier.weight" in changed and len(changed) > len(before) // 2
    assert bundle.device == CUDA and not bundle.model.training


def test_save_from_cuda_then_load_on_cpu_gives_equal_weights(tiny_checkpoint, tmp_path):
    bundle = new_bundle(str(tiny_checkpoint), ["neg", "pos"], 32, device=CUDA)
    out = save_bundle(bundle, tmp_path / "b")
    assert bundle.device == CUDA  # the live model stays where it runs
    loaded = load_bundle(out)
    assert loaded.device == torch.device("cpu")
    live, disk = bundle.model.state_dict(), loaded.model.state_dict()
    assert list(live) == list(disk) and all(torch.equal(live[k].cpu(), disk[k]) for k in live)
    assert load_bundle(out, device="cuda").device == CUDA


def test_engine_on_cuda_gives_the_cpu_labels(trained):
    from service.engine import Engine
    from service.load import LoadConfig, LoadTracker
    from service.metrics import NullMetrics
    from service.routing import Item

    _, _, path = trained
    texts = [
        "good great fun movie",
        "bad awful dull plot",
        "love the film",
        "hate the story",
        "the end was dull",
        "a great actor",
    ]
    items = [
        Item(t, mode=m, max_ratio=r)
        for t in texts
        for m, r in (("dense", 1.0), ("fixed", 0.5), ("fixed", 0.25))
    ]
    results = {}
    for device in ("cpu", "cuda"):
        engine = Engine(
            load_bundle(path),
            "tiny",
            LoadTracker(LoadConfig(slo_s=0.25, queue_capacity=32)),
            NullMetrics(),
            device,
        )
        results[device] = engine.run(items)
    assert engine.device == CUDA and next(engine.model.parameters()).dtype == torch.bfloat16
    for c, g in zip(results["cpu"], results["cuda"]):
        assert c["level"] == g["level"] and c["heads"] == g["heads"]
        assert all(abs(c["probabilities"][k] - g["probabilities"][k]) < 0.05 for k in c["probabilities"])
        if max(c["probabilities"].values()) >= 0.55:  # bf16 may only flip a near tie
            assert c["label"] == g["label"]
    exp = engine.explain(items[0])
    assert exp["label"] == results["cuda"][0]["label"] and exp["heads"]["active"] == exp["heads"]["total"]


def test_predict_run_pass_evaluate_and_calibrate_on_cuda_match_the_cpu(trained):
    _, data, path = trained
    cpu, gpu = load_bundle(path), load_bundle(path, device="cuda")
    ex = load_eval(str(data), cpu.labels)
    idx, ids, mask, labels = next(gpu.batches(ex, 16))
    assert ids.device == mask.device == labels.device == CUDA

    assert predict(gpu, ex, None) == predict(cpu, ex, None)
    heads = cpu.meta["levels"][2]["heads"]
    p_cpu = run_pass(cpu.model, list(cpu.batches(ex, 16)), heads, len(ex))
    p_gpu = run_pass(gpu.model, list(gpu.batches(ex, 16)), heads, len(ex))
    assert p_gpu.preds.device.type == "cpu" and p_gpu.preds.tolist() == p_cpu.preds.tolist()
    assert torch.allclose(p_gpu.conf, p_cpu.conf, atol=1e-4)

    e_cpu, e_gpu = (evaluate(b, ex, "reviews", progress=False) for b in (cpu, gpu))
    assert [(r["policy"], r["target_heads_ratio"]) for r in e_gpu["rows"]] == [
        (r["policy"], r["target_heads_ratio"]) for r in e_cpu["rows"]
    ]
    assert all(abs(a["accuracy"] - b["accuracy"]) <= 0.05 for a, b in zip(e_cpu["rows"], e_gpu["rows"]))
    json.dumps(e_gpu)

    c_cpu, c_gpu = (calibrate_bundle(b, ex, progress=False) for b in (cpu, gpu))
    assert c_gpu.device == CUDA
    json.dumps(c_gpu.meta)  # scores came back as plain numbers
    for name in ("michel", "fisher", "attention"):  # sorted within each layer: near ties may swap heads
        a, b = torch.tensor(c_cpu.meta["importance"][name]), torch.tensor(c_gpu.meta["importance"][name])
        assert torch.allclose(a, b, rtol=1e-2, atol=1e-6), name

    summary = fine_tune(
        c_gpu,
        ex,
        TrainConfig(min_epoch_examples=0, epochs=1, batch_size=16, lr=1e-4),
        progress=False,
        loss_fn=budget_robust_loss(*trained_budgets(c_gpu.meta)),
    )
    assert math.isfinite(summary["final_loss"])


def test_cli_train_calibrate_eval_bench_on_cuda(trained, tmp_path):
    ckpt, data, _ = trained
    out = tmp_path / "gpu-bundle"
    assert (
        main(
            [
                "train",
                "--min-epoch-examples",
                "0",
                "--model",
                str(ckpt),
                "--data",
                str(data),
                "--out",
                str(out),
                "--epochs",
                "4",
                "--batch-size",
                "8",
                "--lr",
                "3e-3",
                "--budget-robust",
                "--quiet",
                "--device",
                "cuda",
            ]
        )
        == 0
    )
    meta = json.loads((out / "dihs.json").read_text())
    assert meta["eval"]["dense_accuracy"] >= 0.75 and len(meta["levels"]) == 5 and "budget_robust" in meta
    assert main(["calibrate", str(out), "--order-by", "fisher", "--quiet", "--device", "cuda:0"]) == 0
    assert (
        main(
            [
                "eval",
                str(out),
                "--data",
                str(data),
                "--json",
                str(tmp_path / "e.json"),
                "--quiet",
                "--device",
                "auto",
            ]
        )
        == 0
    )
    assert {r["policy"] for r in json.loads((tmp_path / "e.json").read_text())["rows"]} >= {"dense", "dihs"}
    for dtype, name in (("fp32", "float32"), ("bf16", "bfloat16")):
        b_json = tmp_path / f"b-{dtype}.json"
        assert (
            main(
                [
                    "bench",
                    str(out),
                    "--json",
                    str(b_json),
                    "--plot",
                    str(tmp_path / "b.png"),
                    "--quick",
                    "--warmup",
                    "2",
                    "--repeats",
                    "5",
                    "--quiet",
                    "--device",
                    "cuda",
                    "--dtype",
                    dtype,
                ]
            )
            == 0
        )
        b = json.loads(b_json.read_text())
        assert (
            b["device"] == "cuda:0"
            and b["dtype"] == name
            and b["device_name"] == torch.cuda.get_device_name(0)
        )
        assert all(r["median_ms"] > 0 and r["speedup"] > 0 for r in b["rows"])
