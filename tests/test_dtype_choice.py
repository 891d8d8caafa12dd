"""`--dtype auto`: the fastest dtype whose answers agree with float32's on the calibration split
within a stated bound (dihs_model/dtype_choice.py). Timings are injected: no test depends on which
dtype this machine runs fastest."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dihs_model import dtype_choice
from dihs_model.data import Examples
from dihs_model.dtype_choice import choose_dtype, measure_agreement
from dihs_model.meta import MetaError, validate
from service.backend import ModelInfo
from service.engine import Engine
from service.load import LoadConfig, LoadTracker
from service.metrics import NullMetrics
from tests.conftest import distinct_texts, tiny_calibrated_bundle

CPU = torch.device("cpu")
TEXTS = distinct_texts(64)


def examples():
    return Examples(TEXTS, [i % 2 for i in range(len(TEXTS))], ["neg", "pos"])


def outliers(bundle):
    """The bundle with one weight of every encoder projection row made 300x larger: per-channel int8
    then rounds the rest of that row to zero, so int8 answers differ from float32's (bfloat16 keeps
    8 bits of mantissa, so it still mostly agrees)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in bundle.model.encoder.named_parameters():
            if p.dim() == 2 and "embeddings" not in name:
                cols = torch.randint(0, p.shape[1], (p.shape[0],), generator=g)
                p[torch.arange(p.shape[0]), cols] *= 300.0
    return bundle


def with_agreement(bundle):
    return replace(bundle, meta={**bundle.meta, "dtype_agreement": measure_agreement(bundle, examples())})


def fixed_timer(seconds: dict):
    def timer(models, budgets, batch, seq_len):
        assert budgets[0] is None and "float32" in models  # the full model first; the reference timed
        return {d: seconds[d] for d in models}

    return timer


@pytest.fixture
def no_fast_bfloat16(monkeypatch):
    """As on a CPU without AMX or AVX512-BF16: int8 is then the only candidate."""
    monkeypatch.setattr(dtype_choice, "fast_bfloat16", lambda device: False)


def test_calibration_stores_where_each_dtype_answers_differently(tmp_path):
    bundle = tiny_calibrated_bundle(tmp_path)
    record = bundle.meta["dtype_agreement"]
    assert record["texts"] == bundle.meta["calibration"]["examples"]
    assert set(record["disagree"]) == {"int8", "bfloat16"}
    for dtype, per_plan in record["plans"].items():
        assert "full" in per_plan and len(per_plan) == len(bundle.meta["cascade"]["plans"]) + 2
        # a text counts once however many plans answer it differently
        assert max(per_plan.values()) <= record["disagree"][dtype] <= sum(per_plan.values())


def test_a_model_made_to_disagree_in_int8_serves_float32_and_says_why(tmp_path, no_fast_bfloat16):
    bundle = with_agreement(outliers(tiny_calibrated_bundle(tmp_path)))
    record = bundle.meta["dtype_agreement"]
    assert record["disagree"]["int8"] >= 10, record  # 22 of 64 here
    engine = Engine(
        bundle,
        "tiny",
        LoadTracker(LoadConfig(slo_s=0.25, queue_capacity=32)),
        NullMetrics(),
        dtype="auto",
        max_dtype_disagreement=0.2,
    )
    assert engine.dtype == "float32" and ModelInfo.of(engine, "tiny").dtype == "float32"
    reason = engine.dtype_choice.reason
    assert reason.startswith("float32: no other dtype agrees") and "int8: bound" in reason, reason
    (int8,) = [o for o in engine.dtype_choice.options if o.dtype == "int8"]
    assert not int8.agrees and int8.bound95 > 0.2 and int8.texts == len(TEXTS)
    assert ModelInfo.of(engine, "tiny").dtype_choice["options"][1]["disagree"] == record["disagree"]["int8"]


def test_the_fastest_dtype_that_agrees_is_served(tmp_path, no_fast_bfloat16):
    bundle = with_agreement(tiny_calibrated_bundle(tmp_path))
    assert bundle.meta["dtype_agreement"]["disagree"]["int8"] == 0
    # 0 of 64 texts: the 95% bound is 4.6%, so a 5% limit admits int8 and a 4% one does not
    fast = fixed_timer({"float32": 1.0, "int8": 0.4})
    choice = choose_dtype(bundle, CPU, max_disagreement=0.05, timer=fast)
    assert choice.dtype == "int8" and "2.50x float32" in choice.reason and "0 of 64" in choice.reason
    strict = choose_dtype(bundle, CPU, max_disagreement=0.04, timer=fast)
    assert strict.dtype == "float32" and "4.57% above" in strict.reason
    marginal = choose_dtype(
        bundle, CPU, max_disagreement=0.05, timer=fixed_timer({"float32": 1.0, "int8": 0.97})
    )
    assert marginal.dtype == "float32" and "1.05x faster" in marginal.reason


def test_bfloat16_is_weighed_only_where_the_cpu_runs_it_in_hardware(tmp_path, monkeypatch):
    bundle = with_agreement(tiny_calibrated_bundle(tmp_path))
    monkeypatch.setattr(dtype_choice, "fast_bfloat16", lambda device: True)
    timer = fixed_timer({"float32": 1.0, "int8": 0.5, "bfloat16": 0.4})
    assert choose_dtype(bundle, CPU, max_disagreement=0.05, timer=timer).dtype == "bfloat16"
    monkeypatch.setattr(dtype_choice, "fast_bfloat16", lambda device: False)
    choice = choose_dtype(bundle, CPU, max_disagreement=0.05, timer=timer)
    assert choice.dtype == "int8"
    assert "not run in hardware" in next(o.note for o in choice.options if o.dtype == "bfloat16")


def test_a_pin_in_the_bundle_and_an_explicit_dtype_need_no_measurement(tmp_path):
    bundle = tiny_calibrated_bundle(tmp_path)

    def no_timing(*_):
        raise AssertionError("nothing is timed")

    pinned = replace(bundle, meta={**bundle.meta, "dtype": "int8"})
    assert choose_dtype(pinned, CPU, timer=no_timing).dtype == "int8"
    assert "pinned by the bundle" in choose_dtype(pinned, CPU, timer=no_timing).reason
    assert choose_dtype(pinned, CPU, "float32", timer=no_timing).dtype == "float32"  # the flag wins
    with pytest.raises(MetaError, match="dtype"):
        validate({**bundle.meta, "dtype": "float16"}, "dihs.json")


def test_a_bundle_calibrated_before_dtype_agreement_serves_float32(tmp_path, no_fast_bfloat16):
    bundle = tiny_calibrated_bundle(tmp_path)
    old = replace(bundle, meta={k: v for k, v in bundle.meta.items() if k != "dtype_agreement"})
    choice = choose_dtype(old, CPU, max_disagreement=1.0, timer=fixed_timer({"float32": 1.0, "int8": 0.1}))
    assert choice.dtype == "float32" and "dihs calibrate --dtypes" in choice.reason
