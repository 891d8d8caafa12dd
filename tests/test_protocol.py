"""service.protocol: the request models' own checks (budget limits, renamed format-1 fields, text or
texts, unknown fields) and the error and OIP shapes, validated directly without the HTTP app."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from service.protocol import (
    Budget,
    ClassifyRequest,
    ErrorResponse,
    ExplainRequest,
    V2ErrorResponse,
    V2InferRequest,
)


def test_a_budget_defaults_to_auto_over_the_whole_range():
    b = Budget()
    assert (b.mode, b.min_flops_ratio, b.max_flops_ratio) == ("auto", 0.0, 1.0)


@pytest.mark.parametrize(
    "old, new", [("max_heads_ratio", "max_flops_ratio"), ("min_heads_ratio", "min_flops_ratio")]
)
def test_the_heads_ratio_controls_are_refused_by_name(old, new):
    with pytest.raises(ValidationError) as e:
        Budget.model_validate({old: 0.5})
    assert f"{old} was replaced by {new}" in str(e.value)


@given(lo=st.floats(0.0, 1.0), hi=st.floats(0.0, 1.0))
def test_min_above_max_is_refused_and_every_ordered_pair_is_kept(lo, hi):
    if lo <= hi:
        b = Budget(min_flops_ratio=lo, max_flops_ratio=hi)
        assert (b.min_flops_ratio, b.max_flops_ratio) == (lo, hi)
    else:
        with pytest.raises(
            ValidationError, match=re.escape(f"min_flops_ratio {lo:g} is above max_flops_ratio {hi:g}")
        ):
            Budget(min_flops_ratio=lo, max_flops_ratio=hi)


@pytest.mark.parametrize(
    "data, where",
    [
        ({"max_flops_ratio": 1.5}, "max_flops_ratio"),
        ({"min_flops_ratio": -0.1}, "min_flops_ratio"),
        ({"mode": "cheap"}, "mode"),
        ({"flops": 0.5}, "flops"),
    ],
)
def test_out_of_range_modes_ratios_and_unknown_fields_are_refused(data, where):
    with pytest.raises(ValidationError) as e:
        Budget.model_validate(data)
    assert [err["loc"] for err in e.value.errors()] == [(where,)]


@pytest.mark.parametrize("data", [{}, {"text": "a", "texts": ["b"]}, {"text": None, "texts": None}])
def test_a_classify_request_needs_exactly_one_of_text_or_texts(data):
    with pytest.raises(ValidationError, match="give exactly one of 'text' or 'texts'"):
        ClassifyRequest.model_validate(data)


def test_all_texts_is_the_one_text_or_the_texts_in_order():
    assert ClassifyRequest(text="only").all_texts() == ["only"]
    assert ClassifyRequest(text="").all_texts() == [""]
    req = ClassifyRequest(texts=["b", "a", "b"])
    assert req.all_texts() == ["b", "a", "b"]
    req.all_texts().append("c")
    assert req.texts == ["b", "a", "b"]  # a copy: the request is left as sent


def test_requests_refuse_unknown_fields_and_validate_their_budget():
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        ClassifyRequest.model_validate({"text": "a", "model": "x"})
    with pytest.raises(ValidationError, match="max_heads_ratio was replaced"):
        ExplainRequest.model_validate({"text": "a", "budget": {"max_heads_ratio": 0.5}})
    req = ClassifyRequest.model_validate({"text": "a", "budget": {"mode": "fixed", "max_flops_ratio": 0.5}})
    assert req.budget.mode == "fixed" and req.budget.max_flops_ratio == 0.5
    assert ExplainRequest(text="a").attention is True


def test_each_request_gets_its_own_default_budget():
    a, b = ClassifyRequest(text="a"), ClassifyRequest(text="b")
    assert a.budget == Budget() and a.budget is not b.budget


def test_the_error_shapes():
    body = {"error": {"code": 422, "type": "invalid_request", "message": "fix it"}}
    assert ErrorResponse.model_validate(body).model_dump() == body
    with pytest.raises(ValidationError):
        ErrorResponse.model_validate({"error": {"code": 422, "message": "no type"}})
    assert V2ErrorResponse(error="fix it").model_dump() == {"error": "fix it"}


def test_oip_requests_keep_extension_fields():
    req = V2InferRequest.model_validate(
        {
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"], "x-tensor": 1}],
            "x-request": "kept",
        }
    )
    assert req.model_extra == {"x-request": "kept"} and req.inputs[0].model_extra == {"x-tensor": 1}
    with pytest.raises(ValidationError, match="shape"):
        V2InferRequest.model_validate({"inputs": [{"name": "text", "datatype": "BYTES", "data": []}]})
