"""Every request and response model of the HTTP API, and the one error shape."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(Strict):
    mode: Literal["auto", "fixed", "dense"] = Field(
        "auto", description="auto: from input complexity and load; fixed: the largest level within "
        "max_heads_ratio; dense: all heads")
    max_heads_ratio: float = Field(1.0, ge=0.0, le=1.0, description="never compute more than this share of heads")
    min_heads_ratio: float = Field(0.0, ge=0.0, le=1.0, description="never compute less than this share of heads")

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_heads_ratio > self.max_heads_ratio:
            raise ValueError(f"min_heads_ratio {self.min_heads_ratio:g} is above max_heads_ratio {self.max_heads_ratio:g}")
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


class Heads(Strict):
    active: int = Field(description="heads computed for this input")
    total: int = Field(description="heads in the full model")
    ratio: float = Field(description="active / total")
    per_layer: list[int] = Field(description="heads computed in each layer")


class Result(Strict):
    label: str
    probabilities: dict[str, float]
    heads: Heads
    complexity: float = Field(description="input complexity in [0, 1]")
    pressure: float = Field(description="load pressure in [0, 1] when the budget was chosen")
    level: str = Field(description="budget level name, e.g. h50 = 50% of heads")
    reason: str = Field(description="why this budget")
    truncated: bool = Field(description="the text was longer than the model's max tokens and was cut")


class ClassifyResponse(Strict):
    model: str
    results: list[Result]


class ErrorBody(Strict):
    code: int
    type: str
    message: str = Field(description="what went wrong and what to fix")


class ErrorResponse(Strict):
    error: ErrorBody


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
