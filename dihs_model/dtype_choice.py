"""Which number format `--dtype auto` serves: the fastest that answers as float32 does.

Agreement is measured once, at calibration, on the calibration split: a text counts against a dtype
when any plan `auto` may serve (the full model, each cascade, the single cheapest pass) answers it
differently in that dtype than in float32, each plan through the same code `dihs eval` runs
(cascade.run_cascade). The counts are stored in the bundle (`dtype_agreement`). A dtype may be
chosen only where the one-sided 95% Clopper-Pearson bound on that share of texts (admission.py) is
within `max_disagreement`.

Speed is measured at start-up, on the machine that serves: every ladder level in float32 and in each
dtype that agrees, interleaved, at the served batch size and the calibration split's median length.
The fastest wins if it is at least MIN_SPEEDUP times float32's speed (a smaller gain is within this
machine's noise). On a GPU auto is bfloat16 without a measurement (fp32 matmuls waste tensor cores);
a bundle may pin a dtype (`dtype` in dihs.json); an explicit --dtype overrides both.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from .admission import upper_bound
from .bench import budget_costs
from .budget import Budget
from .cascade import candidate_plans, plan_label, run_cascade
from .passes import run_pass
from .precision import check_dtype, fast_bfloat16, with_dtype

CANDIDATES = ("int8", "bfloat16")  # what float32 is compared with at calibration
MIN_SPEEDUP = 1.05
ROUNDS = 3  # interleaved timing rounds at start-up (each times every level once per dtype)


def plan_answers(model, batches, n: int, meta: dict, full_only: bool = False) -> dict[str, torch.Tensor]:
    """Each candidate plan's answers on these batches (labels by plan_label); full_only: the full
    model's alone."""
    out = {}
    for plan in candidate_plans(meta)[:1] if full_only else candidate_plans(meta):
        if plan is None:
            out[plan_label(plan)] = run_pass(model, batches, None, n).preds
        else:
            out[plan_label(plan)] = run_cascade(model, batches, plan, n).preds
    return out


@torch.inference_mode()
def measure_agreement(
    bundle, examples, batch_size: int = 32, dtypes=CANDIDATES, full_only: bool = False
) -> dict:
    """{"texts": n, "disagree": {dtype: texts any plan answers differently from float32},
    "plans": {dtype: {plan: texts}}} on `examples`, for the dtypes this device runs (int8: CPU).
    full_only: the full model alone (an early bundle, on which auto serves nothing else)."""
    device = next(bundle.model.parameters()).device
    batches = list(bundle.batches(examples, batch_size))
    n = len(examples)
    reference = plan_answers(bundle.model, batches, n, bundle.meta, full_only)
    result = {"texts": n, "disagree": {}, "plans": {}}
    for dtype in dtypes:
        try:
            check_dtype(dtype, device)
        except ValueError:
            continue
        answers = plan_answers(with_dtype(bundle.model, dtype), batches, n, bundle.meta, full_only)
        differs = torch.zeros(n, dtype=torch.bool)
        per_plan = {}
        for name, preds in answers.items():
            d = preds != reference[name]
            per_plan[name] = int(d.sum())
            differs |= d
        result["disagree"][dtype] = int(differs.sum())
        result["plans"][dtype] = per_plan
    return result


@dataclass
class DtypeOption:
    """One dtype as auto weighed it."""

    dtype: str
    texts: int = 0  # calibration texts behind its agreement (0: not measured)
    disagree: int = 0
    bound95: float = 1.0  # upper 95% bound on the share of texts answered differently from float32
    agrees: bool = False  # bound95 within max_disagreement (float32 always)
    ms_per_batch: float | None = None  # every level once, at the timed batch (None: not timed)
    speedup: float | None = None  # float32's time over this one's
    note: str = ""


@dataclass
class DtypeChoice:
    """The dtype served and why, with what was weighed (start-up log, v2 config)."""

    dtype: str
    reason: str
    options: list[DtypeOption] = field(default_factory=list)
    max_disagreement: float | None = None

    def report(self) -> dict:
        return {
            "dtype": self.dtype,
            "reason": self.reason,
            "max_disagreement": self.max_disagreement,
            "options": [asdict(o) for o in self.options],
        }


Timer = Callable[[dict, list, int, int], dict]  # ({dtype: model}, budgets, batch, seq_len) -> {dtype: s}


def time_dtypes(models: dict, budgets: list, batch: int, seq_len: int, rounds: int = ROUNDS) -> dict:
    """Seconds for one forward of every budget at this batch shape, per dtype: the median over
    `rounds` rounds, each timing every dtype in turn (so drift on a noisy machine hits all alike)."""
    per_round: dict[str, list[float]] = {d: [] for d in models}
    for _ in range(rounds):
        for d, m in models.items():
            per_round[d].append(sum(budget_costs(m, budgets, batch, seq_len, repeats=1)) * batch)
    return {d: statistics.median(ts) for d, ts in per_round.items()}


def agreement_options(meta: dict, device: torch.device, max_disagreement: float) -> list[DtypeOption]:
    """float32 and each candidate this device runs fast, with the bundle's agreement counts."""
    options = [DtypeOption("float32", agrees=True, bound95=0.0, note="the reference")]
    record = meta.get("dtype_agreement") or {}
    for dtype in CANDIDATES:
        if dtype == "bfloat16" and not fast_bfloat16(device):
            options.append(DtypeOption(dtype, note="not run in hardware on this CPU (emulated: slower)"))
            continue
        if dtype not in record.get("disagree", {}):
            options.append(
                DtypeOption(dtype, note="no agreement with float32 in the bundle: `dihs calibrate --dtypes`")
            )
            continue
        n, k = record["texts"], record["disagree"][dtype]
        bound = upper_bound(k, n)
        ok = bound <= max_disagreement
        note = "" if ok else f"bound {bound:.2%} above max_dtype_disagreement {max_disagreement:.2%}"
        options.append(DtypeOption(dtype, n, k, round(bound, 5), ok, note=note))
    return options


def choose_dtype(
    bundle,
    device: torch.device,
    requested: str = "auto",
    max_disagreement: float = 0.01,
    batch: int = 8,
    timer: Timer = time_dtypes,
) -> DtypeChoice:
    """The dtype to serve `bundle` in on `device` (see the module docstring for the rule)."""
    if requested != "auto":
        check_dtype(requested, device)
        return DtypeChoice(requested, "asked for (--dtype / DIHS_DTYPE)")
    pinned = bundle.meta.get("dtype")
    if pinned is not None:
        check_dtype(pinned, device)
        return DtypeChoice(pinned, "pinned by the bundle (dtype in dihs.json)")
    if device.type == "cuda":
        if fast_bfloat16(device):
            return DtypeChoice("bfloat16", "a GPU: bfloat16 (tensor cores)")
        return DtypeChoice("float32", "a GPU without bfloat16")
    options = agreement_options(bundle.meta, device, max_disagreement)
    eligible = [o for o in options if o.agrees]
    if len(eligible) == 1:
        why = "; ".join(f"{o.dtype}: {o.note}" for o in options if o.dtype != "float32")
        return DtypeChoice("float32", f"float32: no other dtype agrees ({why})", options, max_disagreement)
    budgets = [None] + [Budget.from_meta(lv) for lv in bundle.meta["levels"][1:]]
    tokens = bundle.meta["calibration"]["tokens"]
    seq_len = max(1, min(int(statistics.median(tokens)), bundle.max_length))
    models = {o.dtype: with_dtype(bundle.model, o.dtype) for o in eligible}
    with torch.inference_mode():
        seconds = timer(models, budgets, batch, seq_len)
    for o in eligible:
        o.ms_per_batch = round(seconds[o.dtype] * 1e3, 2)
        o.speedup = round(seconds["float32"] / seconds[o.dtype], 3)
    best = max(eligible, key=lambda o: o.speedup)
    shape = f"every level at batch {batch} x {seq_len} tokens"
    if best.dtype == "float32" or best.speedup < MIN_SPEEDUP:
        return DtypeChoice(
            "float32",
            f"float32: no dtype that agrees is {MIN_SPEEDUP:g}x faster here ({shape})",
            options,
            max_disagreement,
        )
    return DtypeChoice(
        best.dtype,
        f"{best.dtype}: {best.speedup:.2f}x float32 ({shape}); answers differ from float32's on "
        f"{best.disagree} of {best.texts} calibration texts (95% bound {best.bound95:.2%}, "
        f"max {max_disagreement:.2%})",
        options,
        max_disagreement,
    )
