"""Open Inference Protocol v2 without Ray: the spec's error shape, request parameters, the binary
tensor data and classification extensions, metadata and config. Binary answers are decoded by
tritonclient's own InferResult, not by code from here."""

import json
import struct

import numpy as np
import pytest
from fastapi.testclient import TestClient
from tritonclient.http import InferResult

from service.backend import EngineBackend
from service.engine import Engine
from service.errors import Overloaded
from service.http import build_http_app
from service.load import LoadConfig, LoadTracker
from service.metrics import NullMetrics
from service.oip_outputs import OUTPUTS
from service.settings import Settings
from tests.conftest import tiny_calibrated_bundle

TEXTS = ["good fun movie", "the plot was bad and dull", "love"]
FIXED = {"mode": "fixed", "max_flops_ratio": 0.5}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    bundle = tiny_calibrated_bundle(tmp_path_factory.mktemp("oip"))
    return Engine(bundle, "tiny", LoadTracker(LoadConfig(slo_s=0.25, queue_capacity=32)), NullMetrics())


def _client(engine, submit=None, **settings) -> TestClient:
    s = Settings(model_name="tiny", max_texts=8, max_chars=200, **settings)
    return TestClient(build_http_app(s, EngineBackend(engine, "tiny", submit=submit), NullMetrics()))


@pytest.fixture(scope="module")
def client(engine):
    return _client(engine)


def _infer(texts=TEXTS, **extra) -> dict:
    return {
        "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)}],
        **extra,
    }


def _v1(client, texts=TEXTS, budget=FIXED) -> list[dict]:
    r = client.post("/v1/classify", json={"texts": list(texts), "budget": budget})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def _spec_error(r, status: int, fragment: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and fragment in body["error"], body
    return body["error"]


@pytest.mark.parametrize(
    "body,fragment",
    [
        (_infer(parameters={"colour": "red"}), "unknown parameter 'colour'"),
        (
            _infer(parameters={"priority": 1}),
            "unknown parameter 'priority'; parameters are mode, max_flops_ratio",
        ),
        (_infer(parameters={"max_flops_ratio": 2}), "max_flops_ratio"),
        (_infer(parameters={"mode": "turbo"}), "mode"),
        (_infer(parameters={"max_heads_ratio": 0.5}), "replaced by max_flops_ratio"),
        (_infer(parameters={"max_flops_ratio": 0.1}), "no budget level"),
        (_infer(parameters={"binary_data_output": "yes"}), "binary_data_output must be true or false"),
        (_infer(outputs=[{"name": "logits"}]), "unknown output 'logits'"),
        (_infer(outputs=[{"name": "label"}, {"name": "label"}]), "asked for twice"),
        (
            _infer(outputs=[{"name": "label", "parameters": {"shared_memory_region": "r"}}]),
            "unknown parameter 'shared_memory_region'",
        ),
        (
            _infer(outputs=[{"name": "label", "parameters": {"classification": 2}}]),
            "classification applies to",
        ),
        (
            _infer(outputs=[{"name": "probabilities", "parameters": {"classification": 0}}]),
            "count of classes",
        ),
        (
            _infer(outputs=[{"name": "probabilities", "parameters": {"binary_data": 1}}]),
            "binary_data must be",
        ),
        (_infer(texts=[]), "no texts"),
        (_infer(texts=["a"] * 9), "limit is 8"),
        (_infer(texts=["x" * 201]), "limit is 200"),
        ({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}, "shape"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, "datatype BYTES"),
        ({"inputs": [{"name": "ids", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}, "named 'text'"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]}, "data"),
        ({"outputs": []}, "inputs"),
        (_infer(outputs=[{"name": ["label"]}]), "unknown output ['label']"),
        (_infer(outputs=[{"name": "label", "parameters": [1]}]), "parameters must be an object"),
        (
            {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": [["a"], 5]}]},
            "must be strings",
        ),
    ],
)
def test_bad_requests_are_400s_in_the_spec_shape(client, body, fragment):
    _spec_error(client.post("/v2/models/tiny/infer", json=body), 400, fragment)


def test_every_v2_error_has_the_spec_shape_and_v1_keeps_its_own(engine, client):
    _spec_error(client.get("/v2/models/other"), 404, "unknown model 'other'")
    _spec_error(client.get("/v2/models/tiny/versions/2"), 404, "no version '2'")
    _spec_error(client.post("/v2/models/tiny/versions/7/infer", json=_infer()), 404, "no version '7'")
    _spec_error(client.get("/v2/models/tiny/versions/3/ready"), 404, "no version '3'")
    _spec_error(client.get("/v2/no/such/route"), 404, "Not Found")
    _spec_error(client.get("/v2/models/tiny/infer"), 405, "Method Not Allowed")
    _spec_error(client.post("/v2/models/tiny/infer", content=b"{not json"), 400, "cannot parse")
    _spec_error(client.post("/v2/models/tiny/infer", content=b"x" * 300_000), 413, "bytes")
    _spec_error(
        client.post("/v2/models/tiny/infer", json=_infer(), headers={"content-encoding": "gzip"}),
        400,
        "Content-Encoding",
    )
    keyed = _client(engine, api_key="k3y")
    r = keyed.post("/v2/models/tiny/infer", json=_infer())
    _spec_error(r, 401, "Authorization: Bearer")
    assert r.headers["www-authenticate"] == "Bearer"

    async def full(items, timing):  # the replica's batcher refusing at capacity (tests/test_batcher.py)
        raise Overloaded()

    r = _client(engine, submit=full).post("/v2/models/tiny/infer", json=_infer())
    _spec_error(r, 503, "capacity")
    assert r.headers["retry-after"] == "1"
    # v1 keeps its richer shape, 422 included
    v1 = client.post("/v1/classify", json={"text": ""})
    assert v1.status_code == 422 and set(v1.json()["error"]) == {"code", "type", "message"}
    assert client.post("/v1/classify", content=b"x" * 300_000).json()["error"]["type"] == "payload_too_large"


def test_json_answer_matches_v1_and_carries_per_text_tensors_no_parameters(client):
    r = client.post("/v2/models/tiny/infer", json=_infer(id="a1", parameters=FIXED))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    body = r.json()
    assert "parameters" not in body and body["id"] == "a1" and body["model_version"] == "1"
    out = {o["name"]: o for o in body["outputs"]}
    assert list(out) == list(OUTPUTS)  # no outputs named: all of them, in the documented order
    v1 = _v1(client)
    n = len(TEXTS)
    assert out["label"]["data"] == [x["label"] for x in v1]
    assert out["probabilities"]["shape"] == [n, 2]
    assert out["probabilities"]["data"] == [x["probabilities"][lab] for x in v1 for lab in ("neg", "pos")]
    assert out["passes"]["data"] == [",".join(p["budget"] for p in x["passes"]) for x in v1]
    assert out["escalated"] == {"name": "escalated", "datatype": "BOOL", "shape": [n], "data": [False] * n}
    assert (
        out["reason"]["data"] == [x["reason"] for x in v1] and out["plan"]["data"] == [""] * n
    )  # fixed: no plan
    assert out["flops_ratio"]["data"] == [x["flops_ratio"] for x in v1]
    assert out["neurons_ratio"]["data"] == [x["neurons"]["ratio"] for x in v1]


def test_binary_outputs_as_tritonclient_reads_them(client):
    wanted = [
        {"name": "label"},
        {"name": "probabilities"},
        {"name": "escalated"},
        {"name": "flops_ratio", "parameters": {"binary_data": False}},
    ]
    binary = {**FIXED, "binary_data_output": True}
    r = client.post("/v2/models/tiny/infer", json=_infer(outputs=wanted, parameters=binary))
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream", r.text
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    sizes = [o.get("parameters", {}).get("binary_data_size") for o in head["outputs"]]
    assert sizes[3] is None and "data" in head["outputs"][3] and all(sizes[:3])
    assert sum(sizes[:3]) == len(r.content) - n
    res = InferResult.from_response_body(r.content, header_length=n)
    v1 = _v1(client)
    assert [x.decode() for x in res.as_numpy("label")] == [x["label"] for x in v1]
    probs = res.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (3, 2)
    np.testing.assert_allclose(
        probs, [[x["probabilities"]["neg"], x["probabilities"]["pos"]] for x in v1], rtol=1e-6
    )
    assert res.as_numpy("escalated").tolist() == [False] * 3
    np.testing.assert_allclose(res.as_numpy("flops_ratio"), [x["flops_ratio"] for x in v1], rtol=1e-6)
    # per-output binary_data alone (no request-wide default) also goes binary
    level = [{"name": "level", "parameters": {"binary_data": True}}]
    one = client.post("/v2/models/tiny/infer", json=_infer(outputs=level))
    assert "inference-header-content-length" in one.headers


def test_classification_is_tritons_top_k_strings(client):
    wanted = [{"name": "probabilities", "parameters": {"classification": 1}}]
    r = client.post("/v2/models/tiny/infer", json=_infer(outputs=wanted, parameters=FIXED))
    (out,) = r.json()["outputs"]
    v1 = _v1(client)
    assert out["datatype"] == "BYTES" and out["shape"] == [3, 1]
    for s, x in zip(out["data"], v1):
        score, index, label = s.split(":")
        assert label == x["label"] and ["neg", "pos"][int(index)] == label
        assert score == f"{x['probabilities'][label]:f}"  # C's %f, as Triton's std::to_string prints it
    many = client.post(
        "/v2/models/tiny/infer",
        json=_infer(
            outputs=[{"name": "probabilities", "parameters": {"classification": 5, "binary_data": True}}]
        ),
    )
    n = int(many.headers["inference-header-content-length"])
    top = InferResult.from_response_body(many.content, header_length=n).as_numpy("probabilities")
    assert top.shape == (3, 2)  # k past the label count gives every class, as Triton clamps it
    assert all(float(row[0].split(b":")[0]) >= float(row[1].split(b":")[0]) for row in top)


def _binary_request(raw: bytes, size: int | None = None, n: int = 1) -> tuple[bytes, str]:
    """A request in the binary tensor extension: the JSON header, then `raw` as input 'text'."""
    head = {
        "inputs": [
            {
                "name": "text",
                "shape": [n],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(raw) if size is None else size},
            }
        ],
        "parameters": FIXED,
    }
    js = json.dumps(head).encode()
    return js + raw, str(len(js))


def _bytes_tensor(texts: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


def test_binary_inputs_and_their_refusals(client):
    raw = _bytes_tensor(TEXTS)
    body, n = _binary_request(raw, n=3)
    r = client.post("/v2/models/tiny/infer", content=body, headers={"inference-header-content-length": n})
    assert r.status_code == 200, r.text
    assert next(o for o in r.json()["outputs"] if o["name"] == "label")["data"] == [
        x["label"] for x in _v1(client)
    ]
    refusals = [
        ((body, "abc"), "Inference-Header-Content-Length"),
        ((body, str(len(body) + 1)), "Inference-Header-Content-Length"),
        ((body + b"xx", n), "2 bytes after the header belong to no input"),
        (_binary_request(raw, len(raw) + 1), "does not fit"),
        (_binary_request(b"\x09\x00\x00\x00abc"), "runs past"),
        (_binary_request(b"\x01\x00"), "ends inside"),
        (_binary_request(b"\x02\x00\x00\x00\xff\xfe"), "BYTES element 0 is not valid UTF-8"),
        ((b'{"inputs": 5}', "13"), "inputs"),
        ((b'{"inputs": [{"name": "text", "parameters": [1]}]}', "49"), "inputs.0.shape: Field required"),
    ]
    for (content, header_len), fragment in refusals:
        r = client.post(
            "/v2/models/tiny/infer", content=content, headers={"inference-header-content-length": header_len}
        )
        _spec_error(r, 400, fragment)


def test_metadata_config_and_server_extensions(client, engine):
    from importlib.metadata import version

    server = client.get("/v2").json()
    assert server["extensions"] == ["binary_tensor_data", "classification", "parameters"]
    assert server["version"] == version("dihs-serve") == client.get("/openapi.json").json()["info"]["version"]
    meta = client.get("/v2/models/tiny").json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}] and meta["versions"] == [
        "1"
    ]
    shapes = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert shapes["probabilities"] == ("FP32", [-1, 2]) and shapes["label"] == ("BYTES", [-1])
    assert shapes["escalated"] == ("BOOL", [-1]) and set(shapes) == set(OUTPUTS)
    assert client.get("/v2/models/tiny/versions/1").json() == meta
    config = client.get("/v2/models/tiny/config").json()
    assert config["labels"] == ["neg", "pos"] and config["ladder_flops_ratios"] == engine.ladder
    assert config["dtype"] == engine.dtype == "float32"
    assert config["max_texts"] == 8 and "max_flops_ratio" in config["parameters"]
    assert client.get("/v2/models/tiny/versions/1/config").json() == config
    paths = client.get("/openapi.json").json()["paths"]
    err = paths["/v2/models/{name}/infer"]["post"]["responses"]["400"]["content"]["application/json"][
        "schema"
    ]
    assert err["$ref"].endswith("/V2ErrorResponse")
