"""The service's own exceptions and the one error response shape."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from .protocol import ErrorResponse


class ApiError(Exception):
    def __init__(self, code: int, message: str, type_: str = "invalid_request", headers: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.type, self.headers = code, message, type_, headers


class Overloaded(Exception):
    """The model replicas' queues are full: answer 503 with Retry-After at once."""


def error_response(code: int, message: str, type_: str, headers: dict | None = None) -> JSONResponse:
    body = ErrorResponse(error={"code": code, "type": type_, "message": message})
    return JSONResponse(body.model_dump(), status_code=code, headers=headers)
