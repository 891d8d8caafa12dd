"""Open Inference Protocol v2 request parsing: JSON bodies and tritonclient's binary tensor extension."""

from __future__ import annotations

import json
import struct

from fastapi import Request

from .errors import ApiError
from .protocol import V2InferRequest


def pydantic_message(e: ValueError) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg'].removeprefix('Value error, ')}".lstrip(": ")
                         for x in errors()[:3])
    return str(e)


async def read_v2(request: Request) -> V2InferRequest:
    """JSON body, or the binary tensor extension (JSON header + raw tensors) that tritonclient sends."""
    body = await request.body()
    header_len = request.headers.get("inference-header-content-length")
    try:
        if header_len is None:
            return V2InferRequest.model_validate_json(body)
        n = int(header_len)
        head = json.loads(body[:n])
        raw, offset = body[n:], 0
        for inp in head.get("inputs", []):
            size = (inp.get("parameters") or {}).pop("binary_data_size", None)
            if size is not None:
                inp["data"] = _unpack_bytes(raw[offset : offset + size]) if inp.get("datatype") == "BYTES" else None
                offset += size
        return V2InferRequest.model_validate(head)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(422, f"cannot parse the inference request: {pydantic_message(e)}"[:500]) from None


def _unpack_bytes(buf: bytes) -> list[str]:
    out, i = [], 0
    while i < len(buf):
        (n,) = struct.unpack_from("<I", buf, i)
        out.append(buf[i + 4 : i + 4 + n].decode("utf-8"))
        i += 4 + n
    return out


def v2_texts(req: V2InferRequest) -> list[str]:
    texts = [t for t in req.inputs if t.name == "text"]
    if len(req.inputs) != 1 or not texts:
        raise ApiError(422, "send exactly one input, named 'text', datatype BYTES")
    t = texts[0]
    if t.datatype != "BYTES":
        raise ApiError(422, f"input 'text' must have datatype BYTES, not {t.datatype}")
    data = t.data
    while data and isinstance(data[0], list):  # [[...]] for shape [n, 1]
        data = [x for row in data for x in row]
    if not all(isinstance(x, str) for x in data):
        raise ApiError(422, "input 'text' data must be strings")
    count = 1
    for s in t.shape:
        count *= s
    if count != len(data):
        raise ApiError(422, f"input 'text' has shape {t.shape} but {len(data)} elements")
    return data
