"""Per-request explanations: which heads ran for one input, how much each mattered, where they looked.

`explain(bundle, text, budget, ...)` runs the model once at the chosen width budget (the served
prediction, with the attention maps of the heads that ran) and once more on the full model with a
head-mask variable m = 1 ([1, L, H]) to get this input's head importance |dL/dm_h|, the loss being
cross-entropy against the predicted label (Michel et al. 2019's score for a single input). No Ray,
no HTTP: the service (service/batching.py `Engine.explain`) and `dihs explain` both call it.

The JSON (every list in stored order: position p of layer l is the p-th most important head of
that layer by the bundle's `order_by` scorer; `head` is the head's id in the base checkpoint):

    {
      "text": str, "tokens": [str, ...],            # T tokens, specials included, after truncation
      "label": str, "probabilities": {label: float},  # the prediction at the chosen budget
      "heads": {"active": int, "total": int, "ratio": float, "per_layer": [int] * L},
      "neurons": {"active": int, "total": int, "ratio": float, "per_layer": [int] * L},  # FFN units
      "flops_ratio": float,                         # this budget's FLOPs / dense FLOPs at this length
      "complexity": float,                          # score in [0, 1], as /v1/classify reports it
      "complexity_signals": {"tokens": int, "subword_rate": float, "length_percentile": float,
                             "subword_percentile": float, "score": float},
      "pressure": float, "level": str, "reason": str, "truncated": bool,
      "per_input_method": str,                      # how input_importance was computed
      "global_methods": {"michel": str, "fisher": str, "attention": str},
      "order_by": str | null,                       # the scorer that ordered the heads
      "input_importance": [[float] * H] * L,        # this input's |dL/dm|, stored order
      "layers": [{
        "layer": int, "active": int,                # heads that ran in this layer (a prefix)
        "neurons_active": int,                      # FFN neurons that ran in this layer (a prefix)
        "heads": [{
          "position": int, "head": int, "active": bool,
          "input_importance": float,                # |dL/dm_h| for this input
          "input_gradient": float,                  # dL/dm_h (> 0: dropping the head lowers the loss)
          "global_importance": {"michel": float, "fisher": float, "attention": float},
          "attention": [[float] * T] * T | null     # rows: query tokens, sum to 1; null if the head
        }] * H                                      #   did not run or attention was not asked for
      }] * L
    }
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .budget import Budget
from .bundle import Bundle
from .complexity import ComplexityScorer
from .device import model_device
from .precision import differentiable

PER_INPUT_METHOD = (
    "|dL/dm_h|: gradient of the cross-entropy loss against the predicted label w.r.t. a "
    "head mask m = 1 on the full model (all heads on), for this one input (Michel et al. 2019)"
)
GLOBAL_METHODS = {
    "michel": "E_x |dL/dm_h| over the calibration set (Michel et al. 2019), not normalised: "
    "in the same units as the FFN neurons' scores, which it is ranked with",
    "fisher": "sum_x (dL/dm_h)^2 over the calibration set (Kwon et al. 2022)",
    "attention": "mean over tokens of the head's largest attention weight (Voita et al. 2019)",
}


def input_gradients(model, ids: torch.Tensor, mask: torch.Tensor, label: int) -> torch.Tensor:
    """dL/dm for one input on the full model: [L, H], L = cross-entropy against `label` (an int8 model:
    on the float weights its levels were quantized from)."""
    model = differentiable(model)
    L, H = model.shape.n_layers, model.shape.n_heads
    with torch.enable_grad():
        m = torch.ones(1, L, H, device=ids.device, requires_grad=True)
        logits = model(ids, mask, head_mask=m.to(next(model.parameters()).dtype)).logits
        loss = F.cross_entropy(logits.float(), torch.tensor([label], device=ids.device))
        (g,) = torch.autograd.grad(loss, m)
    return g[0].float().cpu()


def _level_name(bundle: Bundle, budget: Budget) -> str:
    for lv in bundle.meta.get("levels") or []:
        if Budget.from_meta(lv).key == budget.key:
            return lv["name"]
    return budget.name or "custom"


def _units(per_layer: list[int], per_layer_total: int) -> dict:
    total = per_layer_total * len(per_layer)
    return {
        "active": sum(per_layer),
        "total": total,
        "ratio": round(sum(per_layer) / total, 4),
        "per_layer": per_layer,
    }


def explain(
    bundle: Bundle,
    text: str,
    budget: Budget | None,
    *,
    level: str | None = None,
    reason: str = "",
    signal: dict | None = None,
    pressure: float = 0.0,
    attention: bool = True,
    model=None,
    decimals: int = 4,
) -> dict:
    """Explain the prediction for `text` at `budget` (None: the full model).

    level/reason/signal/pressure: the budget decision to report (the service's engine, which
    `dihs explain` runs too); `model` defaults to `bundle.model` (the engine passes its own,
    possibly on a GPU).
    """
    model = bundle.model if model is None else model
    L, H = model.shape.n_layers, model.shape.n_heads
    shown = budget or Budget.full(model.shape)
    shown.check(model.shape)
    counts = list(shown.heads)
    enc = bundle.tokenizer([text], truncation=True, max_length=bundle.max_length, return_tensors="pt")
    device = model_device(model)
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)  # [1, T], no padding
    if signal is None and "complexity" in bundle.meta:
        signal = ComplexityScorer.from_meta(bundle.meta, bundle.tokenizer).signals(
            enc["input_ids"], enc["attention_mask"]
        )[0]
    signal = signal or {}

    with torch.no_grad():
        out = model(ids, mask, budget=budget, output_attentions=True)
    probs = out.logits.float().softmax(-1)[0].cpu()
    pred = int(probs.argmax())
    grads = input_gradients(model, ids, mask, pred)  # [L, H]
    importance = grads.abs()
    heads_importance = (bundle.meta.get("importance") or {}).get("heads", {})
    glob = {name: torch.tensor(s, dtype=torch.float64) for name, s in heads_importance.items()}
    order = bundle.meta["head_order"]

    def r(x: torch.Tensor):
        return x.double().round(decimals=decimals).tolist()

    layers = []
    for layer in range(L):
        att = out.attentions[layer][0] if attention else None  # [k_l, T, T]
        assert att is None or att.shape[0] == counts[layer], (att.shape, counts[layer])
        heads = []
        for p in range(H):
            heads.append(
                {
                    "position": p,
                    "head": int(order[layer][p]),
                    "active": p < counts[layer],
                    "input_importance": round(float(importance[layer, p]), 8),
                    "input_gradient": round(float(grads[layer, p]), 8),
                    "global_importance": {name: round(float(s[layer, p]), 8) for name, s in glob.items()},
                    "attention": r(att[p].float().cpu()) if att is not None and p < counts[layer] else None,
                }
            )
        layers.append(
            {"layer": layer, "active": counts[layer], "neurons_active": shown.neurons[layer], "heads": heads}
        )

    labels = bundle.labels
    return {
        "text": text,
        "tokens": bundle.tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist()),
        "label": labels[pred],
        "probabilities": {name: round(float(x), 6) for name, x in zip(labels, probs)},
        "heads": _units(counts, H),
        "neurons": _units(list(shown.neurons), model.shape.ffn),
        "flops_ratio": round(shown.flops_ratio(model.shape, [int(ids.shape[1])]), 4),
        "complexity": signal.get("score", 0.0),
        "complexity_signals": signal,
        "pressure": round(float(pressure), 4),
        "level": level or _level_name(bundle, shown),
        "reason": reason,
        "truncated": bool(enc.encodings[0].overflowing),
        "per_input_method": PER_INPUT_METHOD,
        "global_methods": {k: GLOBAL_METHODS.get(k, k) for k in glob},
        "order_by": bundle.meta.get("order_by"),
        "input_importance": [[round(float(x), 8) for x in row] for row in importance],
        "layers": layers,
    }


def find_head(explanation: dict, layer: int, head: int) -> dict:
    """The record of original head id `head` in `layer`; ValueError (one line) if out of range."""
    layers = explanation["layers"]
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} is out of range: the model has layers 0..{len(layers) - 1}")
    heads = layers[layer]["heads"]
    for h in heads:
        if h["head"] == head:
            return h
    raise ValueError(f"head {head} is out of range: layer {layer} has heads 0..{len(heads) - 1}")


def top_head(explanation: dict) -> tuple[int, int]:
    """(layer, head id) of the active head that mattered most for this input."""
    best = max(
        (
            (h["input_importance"], ly["layer"], h["head"])
            for ly in explanation["layers"]
            for h in ly["heads"]
            if h["active"]
        ),
        default=(0.0, 0, explanation["layers"][0]["heads"][0]["head"]),
    )
    return best[1], best[2]
