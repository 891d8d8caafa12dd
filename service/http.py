"""The HTTP API as a FastAPI app over a Backend: the v1, v2 (OIP) and ops routers, one set of error
handlers, and two ASGI middlewares (request id, body size). State is injected at build time.

The same app runs inside each Ray Serve model replica (backend: the replica's own engine and
batcher) and in unit tests (backend: an Engine called in-process), so every route is tested
without Ray.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from dihs_model.validation import validation_message

from .api import Api, Backend
from .errors import ApiError, Overloaded, error_answer, error_response
from .middleware import MaxBodySize, RequestId
from .protocol import ErrorResponse
from .routes_ops import ops_router
from .routes_v1 import ClassifyFastPath, v1_router
from .routes_v2 import v2_router
from .settings import Settings
from .version import package_version

ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 413, 422, 503)}


def build_http_app(settings: Settings, backend: Backend, metrics) -> FastAPI:
    api = Api(settings, backend, metrics)
    app = FastAPI(
        title="DIHS Serve",
        version=package_version(),
        responses=ERRORS,
        description="Transformer classification with per-request attention-head budgets (DIHS).",
    )
    for router in (v1_router(api), v2_router(api), ops_router(api)):
        app.include_router(router)

    def counted(request: Request, response: JSONResponse) -> JSONResponse:
        """An error answer on a counted route (see Api.counted) is counted by its outcome."""
        if api.counts(request):
            api.count_outcome(response.status_code)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return counted(
            request, error_response(422, validation_message(exc), "invalid_request", path=request.url.path)
        )

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        if exc.status_code == 400:  # FastAPI could not even decode the body
            return counted(
                request,
                error_response(
                    400,
                    "the request body is not valid UTF-8 JSON: send a JSON object",
                    "invalid_request",
                    path=request.url.path,
                ),
            )
        return error_response(
            exc.status_code,
            str(exc.detail),
            "not_found" if exc.status_code == 404 else "http_error",
            exc.headers,
            request.url.path,
        )

    async def _answer(request: Request, exc: Exception):
        return counted(
            request, error_answer(exc, request.url.path, getattr(request.state, "request_id", "-"))
        )

    for kind in (ApiError, Overloaded, Exception):
        app.add_exception_handler(kind, _answer)

    # the last added runs first: the request id is on every answer, the 413 included, and the classify
    # fast path sees only bodies within the limit
    # (a UTF-8 character is at most 4 bytes; JSON escaping and the rest fit in the slack)
    app.add_middleware(ClassifyFastPath, api=api)
    app.add_middleware(MaxBodySize, max_bytes=settings.max_texts * settings.max_chars * 4 + 65536)
    app.add_middleware(RequestId)
    return app
