"""Open Inference Protocol v2 requests: the JSON body or the binary tensor data extension (a JSON
header, then raw tensors), checked into texts, a budget and the outputs asked for. Every refusal
is a 400 naming what to fix."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from fastapi import Request

from dihs_model.validation import validation_message

from .errors import ApiError
from .oip_outputs import HEADER_LENGTH, OUTPUTS, Wanted
from .protocol import RENAMED, Budget, V2InferRequest

BUDGET_PARAMETERS = ("mode", "max_flops_ratio", "min_flops_ratio")
REQUEST_PARAMETERS = (*BUDGET_PARAMETERS, "binary_data_output")
OUTPUT_PARAMETERS = ("binary_data", "classification")


@dataclass(frozen=True)
class V2Call:
    id: str | None
    texts: list[str]
    budget: Budget
    outputs: list[Wanted]


def bad(message: str) -> ApiError:
    return ApiError(400, message)


async def read_call(request: Request) -> V2Call:
    req = await read_v2(request)
    budget, binary = _parameters(req.parameters)
    return V2Call(req.id, v2_texts(req), budget, _outputs(req.outputs, binary))


async def read_v2(request: Request) -> V2InferRequest:
    """JSON body, or the binary tensor extension (JSON header + raw tensors) that tritonclient sends."""
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise bad("compressed request bodies are not supported: send the body without Content-Encoding")
    body = await request.body()
    header_len = request.headers.get(HEADER_LENGTH)
    try:
        if header_len is None:
            return V2InferRequest.model_validate_json(body)
        if not header_len.isdigit() or int(header_len) > len(body):
            raise bad(
                f"{HEADER_LENGTH} is {header_len!r}: it must be the JSON header's byte length, at most "
                f"the body's {len(body)} bytes"
            )
        n = int(header_len)
        head = json.loads(body[:n])
        if not isinstance(head, dict):
            raise bad("the inference header must be a JSON object")
        _attach_binary(head.get("inputs"), body[n:])
        return V2InferRequest.model_validate(head)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"cannot parse the inference request: {validation_message(e)}"[:500]) from None


def _attach_binary(inputs, raw: bytes) -> None:
    """Each input with parameters.binary_data_size takes its bytes, in order, from after the header.
    (A header that is no list of objects is left for the request model to refuse.)"""
    offset = 0
    for inp in inputs if isinstance(inputs, list) else []:
        params = inp.get("parameters") if isinstance(inp, dict) else None
        size = params.pop("binary_data_size", None) if isinstance(params, dict) else None
        if size is None:
            continue
        name = inp.get("name")
        if not isinstance(size, int) or size < 0 or offset + size > len(raw):
            raise bad(
                f"input {name!r}: binary_data_size {size!r} does not fit the {len(raw) - offset} bytes left "
                "after the header"
            )
        if "data" in inp:
            raise bad(f"input {name!r} has both data and binary_data_size: send one")
        if inp.get("datatype") != "BYTES":
            raise bad(f"input {name!r} must have datatype BYTES, not {inp.get('datatype')}")
        inp["data"] = _unpack_bytes(raw[offset : offset + size], name)
        offset += size
    if offset != len(raw):
        raise bad(
            f"{len(raw) - offset} bytes after the header belong to no input: give each binary input "
            "its binary_data_size"
        )


def _unpack_bytes(buf: bytes, name: str) -> list[str]:
    out, i = [], 0
    while i < len(buf):
        if i + 4 > len(buf):
            raise bad(f"input {name!r}: binary BYTES data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", buf, i)
        if i + 4 + n > len(buf):
            raise bad(f"input {name!r}: a binary BYTES element of {n} bytes runs past the input's data")
        try:
            out.append(buf[i + 4 : i + 4 + n].decode("utf-8"))
        except UnicodeDecodeError as e:
            raise bad(
                f"input {name!r}: BYTES element {len(out)} is not valid UTF-8 (byte {e.start}): "
                "send each text UTF-8 encoded"
            ) from None
        i += 4 + n
    return out


def v2_texts(req: V2InferRequest) -> list[str]:
    texts = [t for t in req.inputs if t.name == "text"]
    if len(req.inputs) != 1 or not texts:
        raise bad("send exactly one input, named 'text', datatype BYTES")
    t = texts[0]
    if t.datatype != "BYTES":
        raise bad(f"input 'text' must have datatype BYTES, not {t.datatype}")
    if t.parameters:
        raise bad(
            f"input 'text' parameter {sorted(t.parameters)[0]!r} is not supported; inputs take only "
            "binary_data_size (the binary tensor extension)"
        )
    data = t.data
    while data and all(isinstance(row, list) for row in data):  # [[...]] for shape [n, 1]
        data = [x for row in data for x in row]
    if not all(isinstance(x, str) for x in data):
        raise bad("input 'text' data must be strings")
    count = 1
    for s in t.shape:
        count *= s
    if count != len(data):
        raise bad(f"input 'text' has shape {t.shape} but {len(data)} elements")
    return data


def _parameters(parameters: dict | None) -> tuple[Budget, bool]:
    """The request's budget and whether outputs default to binary data."""
    params = dict(parameters or {})
    binary = params.pop("binary_data_output", False)
    if not isinstance(binary, bool):
        raise bad(f"parameters.binary_data_output must be true or false, not {binary!r}")
    unknown = sorted(set(params) - set(BUDGET_PARAMETERS) - set(RENAMED))
    if unknown:
        raise bad(f"unknown parameter {unknown[0]!r}; parameters are {', '.join(REQUEST_PARAMETERS)}")
    try:
        return Budget(**params), binary
    except ValueError as e:
        raise bad(f"parameters: {validation_message(e)}") from None


def _outputs(outputs: list[dict] | None, binary: bool) -> list[Wanted]:
    """The outputs asked for, in order; all of them when none are named."""
    if not outputs:
        return [Wanted(name, binary) for name in OUTPUTS]
    wanted, seen = [], set()
    for o in outputs:
        name = o.get("name")
        if not isinstance(name, str) or name not in OUTPUTS:
            raise bad(f"unknown output {name!r}; outputs are {', '.join(OUTPUTS)}")
        if name in seen:
            raise bad(f"output {name!r} is asked for twice")
        seen.add(name)
        params = o.get("parameters") or {}
        if not isinstance(params, dict):
            raise bad(f"output {name!r}: parameters must be an object")
        unknown = sorted(set(params) - set(OUTPUT_PARAMETERS))
        if unknown:
            raise bad(
                f"output {name!r}: unknown parameter {unknown[0]!r}; output parameters are "
                f"{', '.join(OUTPUT_PARAMETERS)}"
            )
        own = params.get("binary_data", binary)
        if not isinstance(own, bool):
            raise bad(f"output {name!r}: binary_data must be true or false, not {own!r}")
        k = params.get("classification", 0)
        if "classification" in params:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise bad(f"output {name!r}: classification must be a count of classes >= 1, not {k!r}")
            if not OUTPUTS[name].per_label:
                raise bad(f"output {name!r} has no classes: classification applies to 'probabilities'")
        wanted.append(Wanted(name, own, k))
    return wanted
