"""Every request and response model of the HTTP API, and the one error shape."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


RENAMED = {"max_heads_ratio": "max_flops_ratio", "min_heads_ratio": "min_flops_ratio"}  # format-1 budgets


class Budget(Strict):
    mode: Literal["auto", "fixed", "dense"] = Field(
        "auto",
        description="auto: from input complexity and load; fixed: the largest level within "
        "max_flops_ratio; dense: the full model",
    )
    max_flops_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="never spend more than this share of the full model's FLOPs"
    )
    min_flops_ratio: float = Field(
        0.0, ge=0.0, le=1.0, description="never spend less than this share of the full model's FLOPs"
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        """The heads-ratio controls are refused by name: a heads share no longer says what a budget costs."""
        for old, new in RENAMED.items():
            if isinstance(data, dict) and old in data:
                raise ValueError(
                    f"{old} was replaced by {new}: budgets cover heads and FFN neurons and are "
                    f"FLOPs ratios now"
                )
        return data

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_flops_ratio > self.max_flops_ratio:
            raise ValueError(
                f"min_flops_ratio {self.min_flops_ratio:g} is above max_flops_ratio {self.max_flops_ratio:g}"
            )
        return self


class ClassifyRequest(Strict):
    text: str | None = Field(None, description="one text (or use texts)")
    texts: list[str] | None = Field(None, description="several texts, answered in order")
    budget: Budget = Field(default_factory=Budget)

    @model_validator(mode="after")
    def _one_of(self):
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts)


class Units(Strict):
    """Attention heads or FFN neurons: how many of a kind were computed for an input."""

    active: int = Field(description="units computed for this input")
    total: int = Field(description="units of this kind in the full model")
    ratio: float = Field(description="active / total")
    per_layer: list[int] = Field(description="units computed in each layer")


class PassRun(Strict):
    budget: str = Field(description="the width budget of this pass, e.g. f15")
    flops_ratio: float = Field(description="its FLOPs / the full model's at this input's length")
    heads: list[int] = Field(description="heads this pass computed in each layer")
    neurons: list[int] = Field(description="FFN neurons this pass computed in each layer")


class Result(Strict):
    label: str
    probabilities: dict[str, float]
    heads: Units = Field(
        description="heads computed, summed over the passes run (a cascade's two passes can exceed the total)"
    )
    neurons: Units = Field(description="FFN intermediate neurons computed, summed over the passes run")
    flops_ratio: float = Field(
        description="FLOPs of every pass this input ran / the full model's, at its length"
    )
    passes: list[PassRun] = Field(description="the passes run, in order; the answer is the last one's")
    plan: str | None = Field(
        description="auto: the plan the load chose (full, cascade T, single B); else null"
    )
    margin: float | None = Field(description="cascade: the first pass's top-two logit margin")
    threshold: float | None = Field(
        description="cascade: the live escalation threshold the margin was held against"
    )
    escalated: bool = Field(
        description="the first pass's margin was at or under the threshold: a second pass ran"
    )
    complexity: float = Field(description="input complexity in [0, 1]")
    pressure: float = Field(description="load pressure in [0, 1] when the budget was chosen")
    level: str = Field(description="budget level name, e.g. f50 = 50% of the full model's FLOPs")
    reason: str = Field(description="why this budget")
    truncated: bool = Field(description="the text was longer than the model's max tokens and was cut")


class ClassifyResponse(Strict):
    model: str
    results: list[Result]


class ExplainRequest(Strict):
    text: str = Field(description="one text to classify and explain")
    budget: Budget = Field(default_factory=Budget)
    attention: bool = Field(
        True,
        description="include the attention maps of the heads that ran (T x T each: "
        "up to several MB for long texts at full budget)",
    )


class Complexity(Strict):
    tokens: int = Field(description="real tokens, specials included")
    subword_rate: float = Field(description="share of word-piece continuations")
    length_percentile: float
    subword_percentile: float
    score: float = Field(description="mean of the two percentiles: the complexity in [0, 1]")


class HeadExplanation(Strict):
    position: int = Field(description="stored position in the layer = importance rank (0 = most important)")
    head: int = Field(description="the head's id in the base checkpoint")
    active: bool = Field(description="the head ran at this budget")
    input_importance: float = Field(description="|dL/dm_h| for this input (see per_input_method)")
    input_gradient: float = Field(
        description="dL/dm_h for this input; > 0: dropping the head lowers the loss"
    )
    global_importance: dict[str, float] = Field(
        description="the bundle's calibration scores: michel, fisher, attention"
    )
    attention: list[list[float]] | None = Field(
        description="T x T attention weights (rows: query tokens, each sums to 1; columns: keys), rounded; "
        "null if the head did not run or attention was not asked for"
    )


class LayerExplanation(Strict):
    layer: int
    active: int = Field(description="heads that ran in this layer: positions 0..active-1")
    neurons_active: int = Field(
        description="FFN neurons that ran in this layer: positions 0..neurons_active-1"
    )
    heads: list[HeadExplanation] = Field(description="every head of the layer, in stored order")


class ExplainResponse(Strict):
    model: str
    text: str
    tokens: list[str] = Field(description="the T tokens the model saw (after truncation)")
    label: str = Field(description="the prediction at the chosen budget, as /v1/classify serves it")
    probabilities: dict[str, float]
    heads: Units = Field(description="as /v1/classify: heads computed, summed over the passes run")
    neurons: Units = Field(description="as /v1/classify: FFN neurons computed, summed over the passes run")
    flops_ratio: float = Field(description="as /v1/classify: FLOPs of every pass run / the full model's")
    passes: list[PassRun] | None = Field(None, description="as /v1/classify")
    plan: str | None = Field(None, description="as /v1/classify")
    margin: float | None = Field(None, description="as /v1/classify")
    threshold: float | None = Field(None, description="as /v1/classify")
    escalated: bool | None = Field(None, description="as /v1/classify")
    complexity: float = Field(description="input complexity in [0, 1]")
    complexity_signals: Complexity
    pressure: float = Field(description="the load pressure published when the budget was chosen")
    level: str
    reason: str = Field(description="why this budget")
    truncated: bool
    per_input_method: str = Field(description="how input_importance was computed")
    global_methods: dict[str, str] = Field(description="how each global importance score was computed")
    order_by: str | None = Field(description="the global scorer that orders heads (stored positions)")
    input_importance: list[list[float]] = Field(
        description="[layers][heads] |dL/dm| for this input, stored order"
    )
    layers: list[LayerExplanation]


class ErrorBody(Strict):
    code: int
    type: str
    message: str = Field(description="what went wrong and what to fix")


class ErrorResponse(Strict):
    error: ErrorBody


class V2ErrorResponse(Strict):
    """The Open Inference Protocol's error shape, on every /v2 path."""

    error: str = Field(description="what went wrong and what to fix")


# --- Open Inference Protocol v2 (KServe / Triton HTTP) ---


class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    inputs: list[V2Tensor]
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[V2Tensor]
    parameters: dict[str, Any] | None = None


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
