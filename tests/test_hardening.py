"""Bad input, access control and fuzzing of the HTTP API (in-process, no Ray)."""

import pytest
from fastapi.testclient import TestClient

from service.backend import EngineBackend
from service.engine import Engine
from service.http import build_http_app
from service.load import LoadConfig, LoadTracker
from service.metrics import NullMetrics
from service.settings import Settings


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from tests.conftest import tiny_calibrated_bundle

    return tiny_calibrated_bundle(tmp_path_factory.mktemp("ckpt"))


def _client(bundle, **settings):
    s = Settings(model_name="tiny", **settings)
    metrics = NullMetrics()
    engine = Engine(bundle, "tiny", LoadTracker(LoadConfig(0.25, 32)), metrics)
    return TestClient(build_http_app(s, EngineBackend(engine, "tiny"), metrics)), metrics


def test_api_key_protects_inference_only(tiny_bundle, caplog):
    client, metrics = _client(tiny_bundle, api_key="s3cret-key")
    body = {"text": "good fun"}
    r = client.post("/v1/classify", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    assert (
        client.post("/v1/classify", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    assert (
        client.post("/v1/classify", json=body, headers={"Authorization": "Bearer s3cret-key"}).status_code
        == 200
    )
    infer = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["good"]}]}
    assert client.post("/v2/models/tiny/infer", json=infer).status_code == 401
    for open_route in ("/v2/health/live", "/v2/health/ready", "/v2/models/tiny", "/openapi.json"):
        assert client.get(open_route).status_code == 200, open_route
    assert "s3cret-key" not in caplog.text
    statuses = [m[2]["status"] for m in metrics.log if m[0] == "dihs_requests"]
    assert statuses.count("client_error") == 3 and statuses.count("ok") == 1


def test_api_key_from_file(tmp_path):
    f = tmp_path / "key"
    f.write_text("from-a-file\n")
    assert Settings(api_key_file=str(f)).api_key.get_secret_value() == "from-a-file"
    assert "api_key" not in Settings(api_key_file=str(f)).shareable()
    with pytest.raises(ValueError, match="does not exist"):
        Settings(api_key_file=str(tmp_path / "missing"))


@pytest.mark.parametrize("text", ["\x00\x01\x02", "\u200b\u200d", " \t\r\n", "\x1b\x07"])
def test_control_characters_only_is_a_422(tiny_bundle, text):
    client, _ = _client(tiny_bundle)
    r = client.post("/v1/classify", json={"text": text})
    assert r.status_code == 422 and "control characters" in r.json()["error"]["message"]


def test_control_characters_inside_words_are_served(tiny_bundle):
    client, _ = _client(tiny_bundle)
    assert client.post("/v1/classify", json={"text": "good\x00 fun\x07 movie"}).status_code == 200


def test_invalid_utf8_and_wrong_content(tiny_bundle):
    client, _ = _client(tiny_bundle)
    r = client.post(
        "/v1/classify",
        content=b'{"text": "\xff\xfe bad bytes"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request"
    assert "UTF-8 JSON" in r.json()["error"]["message"]
    r = client.post(
        "/v1/classify", content=b"text=hello", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 422
    r = client.post(
        "/v2/models/tiny/infer", content=b"\xff\xff", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "cannot parse" in r.json()["error"]  # OIP's error shape


def test_text_past_the_model_length_is_truncated_and_says_so(tiny_bundle):
    client, _ = _client(tiny_bundle)
    r = client.post("/v1/classify", json={"texts": ["good " * 500, "good"]})
    assert r.status_code == 200
    assert [x["truncated"] for x in r.json()["results"]] == [True, False]


def test_chunked_body_over_the_limit_is_refused_before_parsing(tiny_bundle):
    client, _ = _client(tiny_bundle, max_texts=1, max_chars=10)

    def chunks():
        for _ in range(100):
            yield b" " * 1024

    r = client.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"


def _fuzz_operation(op, counts: dict) -> None:
    """Hypothesis-generated requests to one operation of the schema, tallied into `counts`."""
    from hypothesis import HealthCheck, given, settings

    from service.errors import is_v2

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=op.as_strategy())
    def fuzz(case):
        r = case.call()
        counts["requests"] += 1
        if r.status_code >= 500:
            counts["5xx"] += 1
        ct = r.headers.get("content-type") or ""
        ct = ct[0] if isinstance(ct, list) else ct
        if r.status_code >= 400 and ct.startswith("application/json"):
            body = r.json()
            err = body.get("error") if isinstance(body, dict) and set(body) == {"error"} else None
            # v1: {"error": {"code", "type", "message"}}; OIP v2: {"error": "<message>"}
            ok = (
                isinstance(err, str) and err
                if is_v2(op.path)
                else isinstance(err, dict) and err.get("message")
            )
            if not ok:
                counts["bad_shape"] += 1

    fuzz()


def test_fuzzing_from_the_openapi_schema_gives_no_5xx(tiny_bundle):
    """Property-based requests generated from the app's own OpenAPI schema (schemathesis)."""
    import schemathesis

    client, _ = _client(tiny_bundle, max_texts=4, max_chars=300)
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    counts = {"requests": 0, "5xx": 0, "bad_shape": 0}
    for op_result in schema.get_all_operations():
        op = op_result.ok()
        if op.method.upper() not in ("GET", "POST"):
            continue
        _fuzz_operation(op, counts)
    print(f"schemathesis: {counts}")
    assert counts["requests"] >= 200
    assert counts["5xx"] == 0 and counts["bad_shape"] == 0, counts


def test_serve_refuses_a_missing_or_corrupt_bundle_in_one_line(tiny_bundle, tmp_path, capsys):
    from dihs_cli.cli import main
    from dihs_model.bundle import save_bundle

    assert main(["serve", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a DIHS bundle" in err[0]
    path = save_bundle(tiny_bundle, tmp_path / "b")
    w = path / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    assert main(["serve", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checksum" in err[0]
    assert main(["serve", str(path), "--port", "0"]) == 2
    assert "--port" in capsys.readouterr().err
