"""No input reaches a 5xx: every route (v1 classify and explain, v2 infer as JSON and as the binary
tensor extension) fuzzed with hypothesis over arbitrary JSON values, not only schema-shaped ones:
any JSON document, the schema's keys holding any JSON value, and every string JSON can carry (lone
surrogates and control characters included, sent \\u-escaped). Every answer is a 2xx or a 4xx with
a JSON body in the API's error shape (in-process app, no Ray)."""

from __future__ import annotations

import json
import struct

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.backend import EngineBackend
from service.engine import Engine
from service.http import build_http_app
from service.load import LoadConfig, LoadTracker
from service.metrics import NullMetrics
from service.settings import Settings

# every string JSON can carry: any code point, lone surrogates included (json.dumps escapes them)
strings = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None), max_size=40)
words = st.sampled_from(
    [
        "good fun",
        "bad plot",
        "the movie",
        "",
        " ",
        "\u200b",
        "a" * 400,
        "\ud800",
        "good \udfff fun",
        "\ud83d\ude00 fun",
    ]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | strings
    | words
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=5) | st.dictionaries(strings | words, c, max_size=5),
    max_leaves=15,
)


def _shaped(keys: dict) -> st.SearchStrategy:
    """Objects with some of the schema's keys, each holding a schema-like or an arbitrary value."""
    return st.fixed_dictionaries({}, optional={k: v | values for k, v in keys.items()})


budget = _shaped(
    {
        "mode": st.sampled_from(["auto", "fixed", "dense", "x"]),
        "max_flops_ratio": scalars,
        "min_flops_ratio": scalars,
        "max_heads_ratio": scalars,
    }
)
v1_body = values | _shaped(
    {
        "text": words | strings,
        "texts": st.lists(words | strings, max_size=6),
        "budget": budget,
        "attention": st.booleans(),
    }
)
tensor = _shaped(
    {
        "name": st.sampled_from(["text", "x"]),
        "datatype": st.sampled_from(["BYTES", "FP32"]),
        "shape": st.lists(st.integers(-2, 5), max_size=3),
        "data": st.lists(words | strings, max_size=5),
        "parameters": values,
    }
)
v2_body = values | _shaped(
    {
        "id": values,
        "inputs": st.lists(tensor, max_size=3),
        "parameters": budget,
        "outputs": st.lists(_shaped({"name": st.sampled_from(["label", "level", "nope"])}), max_size=3),
    }
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def client():
    import tempfile
    from pathlib import Path

    from tests.conftest import tiny_calibrated_bundle

    with tempfile.TemporaryDirectory() as tmp:
        bundle = tiny_calibrated_bundle(Path(tmp))
    metrics = NullMetrics()
    engine = Engine(bundle, "tiny", LoadTracker(LoadConfig(0.25, 32)), metrics)
    app = build_http_app(
        Settings(model_name="tiny", max_texts=4, max_chars=300), EngineBackend(engine, "tiny"), metrics
    )
    return TestClient(app, raise_server_exceptions=False)


def _check(r, path: str) -> None:
    assert r.status_code < 500 and r.status_code >= 200, (path, r.status_code, r.text[:300])
    ctype = r.headers.get("content-type", "")
    if r.status_code < 300 and ctype == "image/png":
        return
    assert ctype.startswith("application/json"), (path, r.status_code, ctype)
    body = r.json()
    if r.status_code >= 400:
        err = body.get("error") if isinstance(body, dict) else None
        # v1: {"error": {"code", "type", "message"}}; v2 (OIP): {"error": "message"} or the v1 shape
        v1_shape = isinstance(err, dict) and err.get("message") and err.get("code") == r.status_code
        v2_shape = path.startswith("/v2") and isinstance(err, str) and err
        assert set(body) == {"error"} and (v1_shape or v2_shape), (path, body)


def _post_json(client, path: str, value, params=None):
    raw = json.dumps(value).encode()  # ensure_ascii: lone surrogates travel as \\u escapes
    return client.post(path, content=raw, params=params, headers={"content-type": "application/json"})


@FUZZ
@given(body=v1_body)
def test_v1_classify(client, body):
    _check(_post_json(client, "/v1/classify", body), "/v1/classify")


@FUZZ
@given(
    body=v1_body,
    params=_shaped(
        {
            "format": st.sampled_from(["json", "png", "gif"]),
            "view": st.sampled_from(["grid", "attention", "x"]),
            "layer": st.integers(-1, 4) | strings,
            "head": st.integers(-1, 5) | strings,
            "score": st.sampled_from(["input", "fisher", "x"]),
        }
    ),
)
def test_v1_explain(client, body, params):
    params = {k: v if isinstance(v, (str, int)) else json.dumps(v) for k, v in params.items()}
    params = {
        k: v.encode("utf-8", "replace").decode() if isinstance(v, str) else v for k, v in params.items()
    }
    _check(_post_json(client, "/v1/explain", body, params), "/v1/explain")


@FUZZ
@given(body=v2_body, model=st.sampled_from(["tiny", "other"]))
def test_v2_infer_json(client, body, model):
    _check(_post_json(client, f"/v2/models/{model}/infer", body), "/v2/infer")


def _mixed_encodings(word: str) -> bytes:
    """UTF-8 where it can be, else the surrogate's own bytes (invalid UTF-8); Latin-1 for some."""
    if len(word) % 3 == 1:
        return word.encode("latin-1", "replace")
    return word.encode("utf-8", "surrogatepass")


def _bytes_tensor(texts: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(t)) + t for t in texts)


@FUZZ
@given(
    head=v2_body,
    texts=st.lists(st.binary(max_size=30) | words.map(_mixed_encodings), max_size=4),
    size=st.integers(-5, 200) | st.none(),
    header_len=st.integers(-10, 400) | st.none() | strings,
    garbage=st.binary(max_size=20),
)
def test_v2_infer_binary(client, head, texts, size, header_len, garbage):
    """tritonclient's binary tensor extension: a JSON header (binary_data_size in an input's
    parameters), then the raw BYTES tensor; header length, sizes and bytes all fuzzed."""
    payload = _bytes_tensor(texts) + garbage
    if isinstance(head, dict) and isinstance(head.get("inputs"), list) and head["inputs"]:
        first = head["inputs"][0]
        if isinstance(first, dict):
            first["parameters"] = {"binary_data_size": len(payload) if size is None else size}
    header = json.dumps(head).encode()
    n = len(header) if header_len is None else header_len
    n = n.encode("utf-8", "surrogatepass") if isinstance(n, str) else str(n).encode()  # header bytes as sent
    r = client.post(
        "/v2/models/tiny/infer",
        content=header + payload,
        headers={"inference-header-content-length": n, "content-type": "application/octet-stream"},
    )
    _check(r, "/v2/infer")


def test_the_strategies_reach_served_answers(client):
    """The fuzzing is not all 4xx: schema-shaped draws are served (a 200 on each route)."""
    assert _post_json(client, "/v1/classify", {"texts": ["good fun", "bad plot"]}).status_code == 200
    assert _post_json(client, "/v1/explain", {"text": "good fun"}).status_code == 200
    infer = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["good"]}]}
    assert _post_json(client, "/v2/models/tiny/infer", infer).status_code == 200
    raw = _bytes_tensor([b"good fun"])
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    r = client.post(
        "/v2/models/tiny/infer",
        content=head + raw,
        headers={"inference-header-content-length": str(len(head))},
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("text", ["\ud800", "good \udfff fun", "fun \udbff"])
def test_a_lone_surrogate_is_a_4xx_naming_the_text(client, text):
    """A JSON string can escape half a surrogate pair; the tokenizer cannot take it (it was a 500)."""
    for path, body in (
        ("/v1/classify", {"texts": ["good", text]}),
        ("/v1/explain", {"text": text}),
        (
            "/v2/models/tiny/infer",
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]},
        ),
    ):
        r = _post_json(client, path, body)
        assert r.status_code in (400, 422), (path, r.status_code, r.text)
        if path.startswith("/v1"):  # v2's JSON parser refuses the escape itself (400 naming it)
            message = r.json()["error"]["message"]
            assert "unpaired surrogate" in message and f"text {1 if 'texts' in body else 0}" in message, (
                message
            )
