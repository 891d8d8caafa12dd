"""dihs_model.meta: dihs.json's schema checks and their one-line errors, reading a bundle's file, the
format-1 upgrade, serialization and the servability checks."""

import json
import re

import pytest

from dihs_model.meta import (
    FORMAT_VERSION,
    META_FILE,
    MetaError,
    dumps,
    not_servable,
    read_meta,
    upgrade_v1,
    validate,
    width_training_in_progress,
)

WHERE = "/bundles/b/dihs.json"


def _meta(**over) -> dict:
    """A minimal valid format-2 record: two layers of two heads and three neurons."""
    meta = {
        "format_version": FORMAT_VERSION,
        "base_model": "tiny",
        "labels": ["neg", "pos"],
        "max_length": 32,
        "head_order": [[0, 1], [1, 0]],
        "neuron_order": [[0, 1, 2], [2, 1, 0]],
        "train": {"epochs": 1},  # a record of how the bundle was made: kept as written
    }
    return {**meta, **over}


def _level(name: str, ratio: float, heads=(2, 2), neurons=(3, 3)) -> dict:
    return {
        "name": name,
        "heads": list(heads),
        "neurons": list(neurons),
        "target_flops_ratio": ratio,
        "flops_ratio": ratio,
        "heads_ratio": ratio,
        "neurons_ratio": ratio,
    }


def test_a_valid_record_is_returned_unchanged():
    meta = _meta(levels=[_level("f100", 1.0), _level("f50", 0.5, (1, 1), (1, 2))])
    assert validate(meta, WHERE) is meta
    assert json.loads(dumps(meta, WHERE)) == meta


def test_format_1_is_refused_with_the_command_that_upgrades_it():
    with pytest.raises(MetaError) as e:
        validate(_meta(format_version=1), WHERE)
    assert str(e.value).startswith(f"{WHERE} has bundle format 1; this version reads {FORMAT_VERSION}")
    assert "`dihs calibrate /bundles/b`" in str(e.value)


@pytest.mark.parametrize("version, shown", [(3, "3"), (None, "None"), ("2", "'2'")])
def test_other_formats_are_refused_without_an_upgrade_hint(version, shown):
    meta = _meta(format_version=version)
    with pytest.raises(MetaError, match=rf"has bundle format {shown}; this version reads") as e:
        validate(meta, WHERE)
    assert "calibrate" not in str(e.value)


@pytest.mark.parametrize(
    "over, problem",
    [
        (dict(labels=["only"]), "labels: List should have at least 2 items"),
        (dict(max_length=0), "max_length: Input should be greater than 0"),
        (dict(neuron_order=[[0, 1, 2]]), "head_order has 2 layers, neuron_order 1"),
        (dict(levels=[_level("f100", 1.0, (2,), (3,))]), "level 'f100' has 1 layers; the model has 2"),
        (dict(levels=[_level("f50", 0.5)]), "levels must start with the full model"),
        (dict(levels=[]), "levels must start with the full model"),
        (dict(levels=[_level("f100", 1.0, (2, 2), (3,))]), "budget 'f100' has 2 head counts and 1 neuron"),
        (dict(levels=[_level("f100", 1.0, (2, -1))]), "budget 'f100' has a negative count"),
        (dict(levels=[_level("f100", 1.0), _level("f0", 0.0)]), "levels.1.target_flops_ratio"),
        (dict(dtype="float16"), "dtype: Input should be 'float32', 'bfloat16' or 'int8'"),
        (dict(calibration={"examples": 0, "tokens": [3]}), "calibration.examples"),
    ],
)
def test_a_malformed_record_names_its_first_problem_in_one_line(over, problem):
    with pytest.raises(MetaError) as e:
        validate(_meta(**over), WHERE)
    msg = str(e.value)
    assert msg.startswith(f"{WHERE} is malformed: ") and problem in msg and "\n" not in msg


def test_a_cascade_plan_must_be_cheaper_than_the_full_model():
    plan = {
        "target_flops_ratio": 0.5,
        "first": {"name": "f25", "heads": [1, 1], "neurons": [1, 1]},
        "first_ratio": 0.25,
        "threshold": 1.5,
        "calib_escalated": 0.2,
        "calib_accuracy": 0.9,
        "calib_agreement": 0.95,
        "second": None,
        "second_ratio": 0.0,
    }
    validate(_meta(cascade={"confidence": "logit_margin", "plans": [plan]}), WHERE)
    with pytest.raises(MetaError, match="cascade.plans.0.target_flops_ratio"):
        validate(
            _meta(cascade={"confidence": "logit_margin", "plans": [{**plan, "target_flops_ratio": 1.0}]}),
            WHERE,
        )


def test_read_meta_explains_a_missing_corrupt_or_non_object_file(tmp_path):
    with pytest.raises(MetaError, match=re.escape(f"{tmp_path} is not a DIHS bundle (no {META_FILE})")):
        read_meta(tmp_path)
    f = tmp_path / META_FILE
    for raw, problem in [
        (b'{"format_version": 2,', "is corrupt"),
        (b"\xff\xfe{}", "is corrupt"),
        (b"[1, 2]", "not a JSON object"),
    ]:
        f.write_bytes(raw)
        with pytest.raises(MetaError, match=problem) as e:
            read_meta(tmp_path)
        assert str(e.value).startswith(str(f))


def test_read_meta_validates_and_keeps_format_1_only_when_asked(tmp_path):
    (tmp_path / META_FILE).write_text(json.dumps(_meta()), encoding="utf-8")
    assert read_meta(tmp_path) == _meta()
    v1 = {k: v for k, v in _meta(format_version=1).items() if k != "neuron_order"}
    (tmp_path / META_FILE).write_text(json.dumps(v1), encoding="utf-8")
    assert read_meta(tmp_path, allow_v1=True) == v1
    with pytest.raises(MetaError, match=re.escape(f"upgrade it with `dihs calibrate {tmp_path}`")):
        read_meta(tmp_path)


def test_upgrade_v1_keeps_the_weights_order_and_drops_what_calibration_rebuilds():
    v1 = {k: v for k, v in _meta(format_version=1).items() if k != "neuron_order"}
    v1 |= {
        "levels": [{"name": "h50", "heads": [1, 1]}],
        "importance": {},
        "complexity": {},
        "order_by": "michel",
    }
    up = upgrade_v1(v1, n_layers=2, ffn=3, where=WHERE)
    assert up["format_version"] == FORMAT_VERSION and up["upgraded_from_format"] == 1
    assert up["neuron_order"] == [[0, 1, 2], [0, 1, 2]]
    assert up["head_order"] == v1["head_order"] and up["train"] == v1["train"]
    assert not {"levels", "importance", "complexity", "order_by"} & set(up)
    with pytest.raises(MetaError, match="head_order has 2 layers, neuron_order 3"):
        upgrade_v1(v1, n_layers=3, ffn=3, where=WHERE)


def test_dumps_refuses_what_it_could_not_read_back():
    with pytest.raises(MetaError, match="is malformed"):
        dumps(_meta(labels=[]), WHERE)


def test_serving_needs_the_ladder_the_plans_and_the_complexity_calibration():
    ready = _meta(
        levels=[_level("f100", 1.0)], cascade={"confidence": "logit_margin", "plans": [{}]}, complexity={}
    )
    assert not_servable(ready, "b") is None
    for missing in ("levels", "cascade", "complexity"):
        meta = {k: v for k, v in ready.items() if k != missing}
        assert not_servable(meta, "bundles/b") == (
            "bundles/b has no width ladder or cascade plans: run `dihs calibrate bundles/b` first"
        )


def test_only_an_early_bundle_is_marked_width_training_in_progress():
    assert width_training_in_progress(_meta(width_training="in progress"))
    assert not width_training_in_progress(_meta())
    assert not width_training_in_progress(_meta(width_training="done"))


def _plan(first_layers: int) -> dict:
    budget = {"name": "f25", "heads": [1] * first_layers, "neurons": [1] * first_layers}
    return {
        "target_flops_ratio": 0.5,
        "first": budget,
        "first_ratio": 0.25,
        "threshold": 0.3,
        "calib_escalated": 0.4,
        "calib_accuracy": 0.9,
        "calib_agreement": 0.95,
        "second": None,
        "second_ratio": 1.0,
    }


def test_a_cascade_plan_budget_must_have_the_models_layers():
    assert validate(_meta(cascade={"confidence": "logit_margin", "plans": [_plan(2)]}), WHERE)
    with pytest.raises(MetaError, match=r"cascade plan 0.5's budget 'f25' has 1 layers; the model has 2"):
        validate(_meta(cascade={"confidence": "logit_margin", "plans": [_plan(1)]}), WHERE)


def test_a_bundle_loaded_from_elsewhere_is_named_as_such():
    assert not_servable(_meta()) == (
        "the bundle has no width ladder or cascade plans: run `dihs calibrate BUNDLE` first"
    )
