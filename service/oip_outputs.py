"""Open Inference Protocol v2 answers: every per-text field of a result as an output tensor, Triton's
classification extension, and the binary tensor data extension (raw tensors after a JSON header)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi.responses import Response

from .api import json_once

HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary extension's header


@dataclass(frozen=True)
class Output:
    """One output tensor: a value per text (shape [n]), or a value per label (shape [n, labels])."""

    name: str
    datatype: str
    value: Callable[[dict, list[str]], Any]
    per_label: bool = False


OUTPUTS = {
    o.name: o
    for o in (
        Output("label", "BYTES", lambda r, _: r["label"]),
        Output(
            "probabilities",
            "FP32",
            lambda r, labels: [r["probabilities"][lab] for lab in labels],
            per_label=True,
        ),
        Output("flops_ratio", "FP32", lambda r, _: r["flops_ratio"]),
        Output("heads_ratio", "FP32", lambda r, _: r["heads"]["ratio"]),
        Output("neurons_ratio", "FP32", lambda r, _: r["neurons"]["ratio"]),
        Output("level", "BYTES", lambda r, _: r["level"]),
        Output("passes", "BYTES", lambda r, _: ",".join(p["budget"] for p in r["passes"])),  # e.g. "f15,f100"
        Output("escalated", "BOOL", lambda r, _: r["escalated"]),
        Output("plan", "BYTES", lambda r, _: r["plan"] or ""),  # empty for fixed and dense texts
        Output("complexity", "FP32", lambda r, _: r["complexity"]),
        Output("pressure", "FP32", lambda r, _: r["pressure"]),
        Output("reason", "BYTES", lambda r, _: r["reason"]),
        Output("truncated", "BOOL", lambda r, _: r["truncated"]),
    )
}


@dataclass(frozen=True)
class Wanted:
    """A requested output: its name, binary or JSON data, and top-k classification (0: none)."""

    name: str
    binary: bool = False
    classification: int = 0


def metadata(labels: list[str]) -> list[dict]:
    """The outputs as model metadata tensors (-1: the batch dimension)."""
    return [
        {"name": o.name, "datatype": o.datatype, "shape": [-1, len(labels)] if o.per_label else [-1]}
        for o in OUTPUTS.values()
    ]


def tensors(results: list[dict], labels: list[str], wanted: list[Wanted]) -> list[tuple[dict, bytes | None]]:
    """Each wanted output as (its JSON tensor, its raw bytes when it goes binary)."""
    out = []
    for w in wanted:
        o = OUTPUTS[w.name]
        rows = [o.value(r, labels) for r in results]
        datatype, shape = o.datatype, [len(rows), len(labels)] if o.per_label else [len(rows)]
        if w.classification:
            rows = [top_k(row, labels, w.classification) for row in rows]
            datatype, shape = "BYTES", [len(rows), min(w.classification, len(labels))]
        flat = [x for row in rows for x in row] if len(shape) == 2 else rows
        tensor: dict = {"name": o.name, "datatype": datatype, "shape": shape}
        raw = encode(datatype, flat) if w.binary else None
        if raw is None:
            tensor["data"] = flat
        else:
            tensor["parameters"] = {"binary_data_size": len(raw)}
        out.append((tensor, raw))
    return out


def top_k(scores: list[float], labels: list[str], k: int) -> list[str]:
    """Triton's classification strings, highest score first: "score:index:label" (score as C's %f)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
    return [f"{scores[i]:f}:{i}:{labels[i]}" for i in order]


def encode(datatype: str, flat: list) -> bytes:
    """A tensor's raw bytes, row-major, little-endian; BYTES elements carry a 4-byte length prefix."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in (s.encode("utf-8") for s in flat))
    return np.asarray(flat, dtype={"FP32": "<f4", "BOOL": np.bool_}[datatype]).tobytes()


def infer_response(body: dict, outputs: list[tuple[dict, bytes | None]], timing: dict) -> Response:
    """JSON alone, or (any output binary) the JSON header followed by the raw tensors in output order,
    its length in Inference-Header-Content-Length."""
    body = {**body, "outputs": [t for t, _ in outputs]}
    raws = [raw for _, raw in outputs if raw is not None]
    head = json_once(body, timing)
    if not raws:
        return head
    headers = {HEADER_LENGTH: str(len(head.body)), "Server-Timing": head.headers["server-timing"]}
    return Response(head.body + b"".join(raws), media_type="application/octet-stream", headers=headers)
