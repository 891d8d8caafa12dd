"""The service's own exceptions and its error answers: v1's richer shape, and the Open Inference
Protocol's `{"error": "<message>"}` on every /v2 path."""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse

from .protocol import ErrorResponse, V2ErrorResponse

log = logging.getLogger("dihs.http")
OVERLOADED = "the service is at capacity: retry after the Retry-After delay"


class ApiError(Exception):
    def __init__(self, code: int, message: str, type_: str = "invalid_request", headers: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.type, self.headers = code, message, type_, headers


class Overloaded(Exception):
    """The model replicas' queues are full: answer 503 with Retry-After at once."""


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_body(path: str, code: int, type_: str, message: str) -> tuple[int, dict]:
    """The status and body of an error answer on `path`. OIP v2 has no 422: a request it cannot
    serve as sent is a 400 there, as Triton and KServe answer it."""
    if is_v2(path):
        return (400 if code == 422 else code), V2ErrorResponse(error=message).model_dump()
    return code, ErrorResponse(error={"code": code, "type": type_, "message": message}).model_dump()


def error_response(
    code: int, message: str, type_: str, headers: dict | None = None, path: str = ""
) -> JSONResponse:
    status, body = error_body(path, code, type_, message)
    return JSONResponse(body, status_code=status, headers=headers)


def error_answer(exc: Exception, path: str, request_id: str = "-") -> JSONResponse:
    """The answer to an exception a request raised after it was validated: the service's own errors
    in their shape, anything else a logged 500 that names the request id."""
    if isinstance(exc, ApiError):
        return error_response(exc.code, exc.message, exc.type, exc.headers, path)
    if isinstance(exc, Overloaded):
        return error_response(503, OVERLOADED, "overloaded", {"Retry-After": "1"}, path)
    log.error("request %s failed", request_id, exc_info=exc)
    return error_response(
        500, f"internal error (request id {request_id}); the request was not served", "internal", path=path
    )
