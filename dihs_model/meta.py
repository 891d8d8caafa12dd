"""`dihs.json`: the bundle's typed schema, read and written here only, validated on load and save.

Format 2 (width budgets): heads *and* FFN neurons are stored in importance order, and every budget
(ladder level, cascade pass) names its heads and neurons per layer. Format 1 bundles (heads-only
budgets) are refused with one line naming the command that upgrades them (`dihs calibrate`).
Records of how the bundle was made (train, budget_robust, eval, data, cascade signals...) are
kept as they are written; the fields that code reads back are typed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .validation import validation_message

FORMAT_VERSION = 2
META_FILE = "dihs.json"


class MetaError(ValueError):
    """A dihs.json that cannot be used, said in one line."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class BudgetMeta(_Open):
    name: str
    heads: list[int] = Field(min_length=1)
    neurons: list[int] = Field(min_length=1)

    @model_validator(mode="after")
    def _layers(self):
        if len(self.heads) != len(self.neurons):
            raise ValueError(
                f"budget {self.name!r} has {len(self.heads)} head counts and "
                f"{len(self.neurons)} neuron counts"
            )
        if min(self.heads) < 0 or min(self.neurons) < 0:
            raise ValueError(f"budget {self.name!r} has a negative count")
        return self


class LevelMeta(BudgetMeta):
    target_flops_ratio: float = Field(gt=0.0, le=1.0)
    flops_ratio: float = Field(gt=0.0, le=1.0)
    heads_ratio: float = Field(ge=0.0, le=1.0)
    neurons_ratio: float = Field(ge=0.0, le=1.0)


class PlanMeta(_Open):
    target_flops_ratio: float = Field(gt=0.0, lt=1.0)
    first: BudgetMeta
    first_ratio: float
    threshold: float
    calib_escalated: float
    calib_accuracy: float
    calib_agreement: float
    second: BudgetMeta | None
    second_ratio: float
    calib_full_only: int | None = Field(
        None, ge=0
    )  # paired counts (absent in bundles calibrated before them)
    calib_plan_only: int | None = Field(None, ge=0)


class CascadeMeta(_Open):
    confidence: str
    plans: list[PlanMeta]


class Importance(BaseModel):
    heads: dict[str, list[list[float]]]
    neurons: dict[str, list[list[float]]]


class Calibration(_Open):
    examples: int = Field(ge=1)
    tokens: list[int] = Field(min_length=1)


class DtypeAgreement(_Open):
    texts: int = Field(ge=1)  # calibration texts compared
    disagree: dict[str, int]  # dtype -> texts some plan answers differently from float32


class BundleMeta(_Open):
    format_version: int
    base_model: str
    labels: list[str] = Field(min_length=2)
    max_length: int = Field(gt=0)
    head_order: list[list[int]] = Field(min_length=1)
    neuron_order: list[list[int]] = Field(min_length=1)
    order_by: str | None = None
    allocation: str | None = None
    importance: Importance | None = None
    calibration: Calibration | None = None
    levels: list[LevelMeta] | None = None
    cascade: CascadeMeta | None = None
    dtype_agreement: DtypeAgreement | None = None
    dtype: Literal["float32", "bfloat16", "int8"] | None = None  # pinned: what `--dtype auto` serves
    # "in progress": `dihs train --early-out` wrote this bundle before its width training; served,
    # auto keeps to the full model until the width-trained bundle replaces it
    width_training: Literal["in progress"] | None = None
    files: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self):
        L = len(self.head_order)
        if len(self.neuron_order) != L:
            raise ValueError(f"head_order has {L} layers, neuron_order {len(self.neuron_order)}")
        for lv in self.levels or []:
            if len(lv.heads) != L:
                raise ValueError(f"level {lv.name!r} has {len(lv.heads)} layers; the model has {L}")
        for plan in self.cascade.plans if self.cascade else []:
            for budget in (plan.first, plan.second):
                if budget is not None and (len(budget.heads) != L or len(budget.neurons) != L):
                    raise ValueError(
                        f"cascade plan {plan.target_flops_ratio:g}'s budget {budget.name!r} has "
                        f"{len(budget.heads)} layers; the model has {L}"
                    )
        if self.levels is not None and (not self.levels or self.levels[0].flops_ratio != 1.0):
            raise ValueError("levels must start with the full model (flops_ratio 1.0)")
        return self


def width_training_in_progress(meta: dict) -> bool:
    """Whether this is the early bundle of a `dihs train` whose width training has not finished."""
    return meta.get("width_training") == "in progress"


def not_servable(meta: dict, folder: str | None = None) -> str | None:
    """Why `dihs serve` / `dihs explain` cannot use this bundle, in one line (None: they can): it
    needs the width ladder, the cascade plans and the complexity calibration `dihs calibrate` adds.
    `folder`: the bundle's folder, named in the message (None: a bundle loaded from elsewhere)."""
    if not meta.get("levels") or not meta.get("cascade") or "complexity" not in meta:
        where = folder or "the bundle"
        return (
            f"{where} has no width ladder or cascade plans: run `dihs calibrate {folder or 'BUNDLE'}` first"
        )
    return None


def validate(meta: dict, where: str) -> dict:
    """`meta` unchanged if it fits the schema, else MetaError naming the first problem."""
    if meta.get("format_version") != FORMAT_VERSION:
        got = meta.get("format_version")
        hint = (
            (
                f": upgrade it with `dihs calibrate {Path(where).parent}` "
                "(keeps the weights, adds FFN-neuron importance and width budgets)"
            )
            if got == 1
            else ""
        )
        raise MetaError(f"{where} has bundle format {got!r}; this version reads {FORMAT_VERSION}{hint}")
    try:
        BundleMeta.model_validate(meta)
    except ValidationError as e:
        raise MetaError(f"{where} is malformed: {validation_message(e, limit=1, skip=())}") from None
    return meta


def read_meta(path: Path, allow_v1: bool = False) -> dict:
    """The bundle folder's dihs.json, validated (allow_v1: a format-1 record is returned as it is, for
    `upgrade_v1` once the model's shape is known)."""
    f = Path(path) / META_FILE
    if not f.is_file():
        raise MetaError(f"{path} is not a DIHS bundle (no {META_FILE}); create one with `dihs train`")
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MetaError(f"{f} is corrupt: {e}") from None
    if not isinstance(meta, dict):
        raise MetaError(f"{f} is malformed: not a JSON object")
    if allow_v1 and meta.get("format_version") == 1:
        return meta
    return validate(meta, str(f))


def upgrade_v1(meta: dict, n_layers: int, ffn: int, where: str) -> dict:
    """A format-1 record as format 2 before calibration: every neuron in its original place; what
    calibration rebuilds (importance, ladder, plans) is dropped."""
    drop = ("importance", "levels", "cascade", "complexity", "order_by", "calibration", "budget_robust")
    keep = {k: v for k, v in meta.items() if k not in drop}
    return validate(
        {
            **keep,
            "format_version": FORMAT_VERSION,
            "upgraded_from_format": 1,
            "neuron_order": [list(range(ffn)) for _ in range(n_layers)],
        },
        where,
    )


def dumps(meta: dict, where: str) -> str:
    return json.dumps(validate(meta, where), indent=1)
