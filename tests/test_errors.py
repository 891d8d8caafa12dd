"""service.errors: which paths answer in the OIP v2 error shape, the v1 shape, and the answers to the
service's own exceptions and to unexpected ones (a logged 500 naming the request id)."""

import json
import logging

import pytest

from service.errors import OVERLOADED, ApiError, Overloaded, error_answer, error_body, error_response, is_v2


def _json(response) -> dict:
    return json.loads(response.body)


@pytest.mark.parametrize(
    "path, v2",
    [
        ("/v2", True),
        ("/v2/", True),
        ("/v2/models/dihs/infer", True),
        ("/v2x", False),
        ("/v20/models", False),
        ("/v1/classify", False),
        ("/v1/v2/models", False),
        ("", False),
    ],
)
def test_only_the_v2_tree_is_v2(path, v2):
    assert is_v2(path) is v2


def test_v1_errors_carry_code_type_and_message():
    assert error_body("/v1/classify", 422, "invalid_request", "fix it") == (
        422,
        {"error": {"code": 422, "type": "invalid_request", "message": "fix it"}},
    )


@pytest.mark.parametrize("code, status", [(422, 400), (400, 400), (404, 404), (503, 503), (500, 500)])
def test_v2_errors_are_one_message_and_a_422_becomes_a_400(code, status):
    assert error_body("/v2/models/m/infer", code, "whatever", "fix it") == (status, {"error": "fix it"})


def test_error_response_sets_status_headers_and_body():
    r = error_response(429, "slow down", "rate", {"Retry-After": "3"}, path="/v1/explain")
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert _json(r) == {"error": {"code": 429, "type": "rate", "message": "slow down"}}


def test_an_api_error_is_answered_in_its_own_code_type_and_headers():
    exc = ApiError(401, "needs a key", "unauthorized", {"WWW-Authenticate": "Bearer"})
    assert str(exc) == "needs a key" and exc.type == "unauthorized"
    r = error_answer(exc, "/v1/classify")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert _json(r)["error"] == {"code": 401, "type": "unauthorized", "message": "needs a key"}
    v2 = error_answer(ApiError(422, "bad tensor"), "/v2/models/m/infer")
    assert v2.status_code == 400 and _json(v2) == {"error": "bad tensor"}
    assert ApiError(400, "x").type == "invalid_request" and ApiError(400, "x").headers is None


@pytest.mark.parametrize("path", ["/v1/classify", "/v2/models/m/infer"])
def test_overloaded_is_a_503_with_retry_after(path):
    r = error_answer(Overloaded(), path)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    body = _json(r)
    assert (body["error"] if is_v2(path) else body["error"]["message"]) == OVERLOADED


def test_an_unexpected_exception_is_a_logged_500_naming_the_request_id(caplog):
    with caplog.at_level(logging.ERROR, logger="dihs.http"):
        r = error_answer(RuntimeError("secret detail"), "/v1/classify", request_id="req-7")
    assert r.status_code == 500
    err = _json(r)["error"]
    assert err["type"] == "internal" and "req-7" in err["message"]
    assert "secret detail" not in err["message"]  # internals stay in the log
    (record,) = [rec for rec in caplog.records if rec.name == "dihs.http"]
    assert record.getMessage() == "request req-7 failed" and record.exc_info[1].args == ("secret detail",)
    v2 = error_answer(KeyError("k"), "/v2/models/m/infer", request_id="req-8")
    assert v2.status_code == 500 and "req-8" in _json(v2)["error"]
