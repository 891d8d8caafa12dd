"""The HTTP API as a FastAPI app over a Backend: thin routes, state injected at build time.

The same app runs inside the Ray Serve ingress (backend: deployment handles) and in unit tests
(backend: an Engine in-process), so every route is tested without Ray.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from dataclasses import dataclass
from importlib.resources import files
from typing import Literal, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from dihs_model.policy import limits_error

from .batching import Item
from .errors import ApiError, Overloaded, ReplicaFailed, error_response
from .middleware import MaxBodySize
from .oip import pydantic_message, read_v2, v2_texts
from .protocol import (Budget, ClassifyRequest, ClassifyResponse, ErrorResponse, ExplainRequest, ExplainResponse,
                       V2InferRequest, V2InferResponse, V2ModelMetadata, V2Tensor)
from .settings import Settings

log = logging.getLogger("dihs.http")
ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 413, 422, 503)}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    labels: list[str]
    ladder: list[float]
    total_heads: int
    max_length: int


class Backend(Protocol):
    info: ModelInfo

    async def classify(self, items: list[Item]) -> list[dict]: ...

    async def explain(self, item: Item, attention: bool = True) -> dict: ...

    async def ready(self) -> bool: ...


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        msg = e.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def build_http_app(settings: Settings, backend: Backend, metrics) -> FastAPI:
    info = backend.info
    app = FastAPI(title="DIHS Serve", version="0.1.0", responses=ERRORS,
                  description="Transformer classification with per-request attention-head budgets (DIHS).")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _count(request, error_response(422, _validation_message(exc), "invalid_request"))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _count(request, error_response(exc.code, exc.message, exc.type, exc.headers))

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded):
        return _count(request, error_response(503, "the service is at capacity: retry after the Retry-After delay",
                                      "overloaded", {"Retry-After": "1"}))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        if exc.status_code == 400:  # FastAPI could not even decode the body
            return _count(request, error_response(400, "the request body is not valid UTF-8 JSON: send a JSON object",
                                          "invalid_request"))
        return error_response(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "http_error")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        rid = request.headers.get("x-request-id", "-")
        log.exception("request %s failed", rid)
        return _count(request, error_response(500, f"internal error (request id {rid}); the request was not served", "internal"))

    def _count(request: Request, response: JSONResponse) -> JSONResponse:
        """Count inference requests by outcome (health and metadata routes are not counted)."""
        if request.url.path.endswith(("/classify", "/infer")):
            c = response.status_code
            status = "rejected" if c == 503 else "client_error" if c < 500 else "server_error"
            metrics.record("dihs_requests", 1, status=status)
        return response

    def _items(texts: list[str], budget: Budget) -> list[Item]:
        if not texts:
            raise ApiError(422, "no texts given: send at least one")
        if len(texts) > settings.max_texts:
            raise ApiError(422, f"{len(texts)} texts in one request; the limit is {settings.max_texts}: split the request")
        for i, t in enumerate(texts):
            if not any(ch.isprintable() and not ch.isspace() for ch in t):
                raise ApiError(422, f"text {i} is empty or has only whitespace/control characters: send some words")
            if len(t) > settings.max_chars:
                raise ApiError(422, f"text {i} has {len(t)} characters; the limit is {settings.max_chars}")
        err = limits_error(info.ladder, budget.min_heads_ratio, budget.max_heads_ratio)
        if err:
            raise ApiError(422, f"budget: {err}")
        return [Item(t, budget.mode, budget.min_heads_ratio, budget.max_heads_ratio) for t in texts]

    @app.post("/v1/classify", response_model=ClassifyResponse, summary="Classify one text or a list")
    async def classify(req: ClassifyRequest, request: Request) -> ClassifyResponse:
        results = await backend.classify(_items(req.all_texts(), req.budget))
        metrics.record("dihs_requests", 1, status="ok")
        return ClassifyResponse(model=info.name, results=results)

    @app.post("/v1/explain", response_model=ExplainResponse, summary="Classify one text and explain it (JSON or PNG)",
              responses={200: {"content": {"image/png": {}}, "description": "JSON, or a PNG with format=png"}})
    async def explain(req: ExplainRequest,
                      fmt: Literal["json", "png"] = Query("json", alias="format", description="json or png"),
                      view: Literal["grid", "attention"] = Query("grid", description="png: the layers x heads grid, "
                                                                 "or one head's attention map"),
                      score: Literal["input", "michel", "fisher", "attention"] = Query(
                          "input", description="grid colour: this input's importance or a global scorer"),
                      layer: int | None = Query(None, ge=0, description="attention view: layer (default: the "
                                                "layer of the head that mattered most for this input)"),
                      head: int | None = Query(None, ge=0, description="attention view: original head id")):
        item = _items([req.text], req.budget)[0]
        if (layer is None) != (head is None):
            raise ApiError(422, "give both layer and head, or neither (the most important head that ran)")
        png = fmt == "png"
        exp = await backend.explain(item, req.attention if not png else view == "attention")
        if not png:
            return ExplainResponse(model=info.name, **exp)
        try:
            image = await run_in_threadpool(_explain_png, exp, view, score, layer, head)
        except ValueError as e:
            raise ApiError(422, str(e)) from None
        return Response(image, media_type="image/png")

    ui_page = (files("service") / "static" / "ui.html").read_text(encoding="utf-8").replace("{{MODEL}}", info.name)

    @app.get("/ui", include_in_schema=False, response_class=HTMLResponse)
    async def ui():
        """A page to type a text and see its label, budget, head grid and attention maps (no external assets)."""
        return HTMLResponse(ui_page)

    # --- Open Inference Protocol v2 ---

    def _known(name: str) -> None:
        if name != info.name:
            raise ApiError(404, f"unknown model {name!r}; this server serves {info.name!r}", "not_found")

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if not await backend.ready():
            raise ApiError(503, "the model is not loaded yet", "not_ready")
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata():
        return {"name": "dihs-serve", "version": "0.1.0", "extensions": []}

    @app.get("/v2/models/{name}", response_model=V2ModelMetadata)
    @app.get("/v2/models/{name}/versions/{version}", response_model=V2ModelMetadata, include_in_schema=False)
    async def model_metadata(name: str, version: str = "1"):
        _known(name)
        n = len(info.labels)
        return V2ModelMetadata(
            name=info.name, versions=["1"], platform="pytorch_dihs",
            inputs=[{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            outputs=[{"name": "label", "datatype": "BYTES", "shape": [-1]},
                     {"name": "probabilities", "datatype": "FP32", "shape": [-1, n]},
                     {"name": "heads_ratio", "datatype": "FP32", "shape": [-1]},
                     {"name": "level", "datatype": "BYTES", "shape": [-1]}])

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready", include_in_schema=False)
    async def model_ready(name: str, version: str = "1"):
        _known(name)
        if not await backend.ready():
            raise ApiError(503, "the model is not loaded yet", "not_ready")
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer", response_model=V2InferResponse, response_model_exclude_none=True,
              openapi_extra={"requestBody": {"content": {"application/json": {
                  "schema": V2InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
    @app.post("/v2/models/{name}/versions/{version}/infer", include_in_schema=False,
              response_model=V2InferResponse, response_model_exclude_none=True)
    async def infer(name: str, request: Request, version: str = "1"):
        _known(name)
        req = await read_v2(request)
        texts = v2_texts(req)
        params = dict(req.parameters or {})
        try:
            budget = Budget(**{k: params[k] for k in ("mode", "max_heads_ratio", "min_heads_ratio") if k in params})
        except ValueError as e:
            raise ApiError(422, f"parameters: {pydantic_message(e)}") from None
        results = await backend.classify(_items(texts, budget))
        n = len(results)
        outputs = [
            V2Tensor(name="label", datatype="BYTES", shape=[n], data=[r["label"] for r in results]),
            V2Tensor(name="probabilities", datatype="FP32", shape=[n, len(info.labels)],
                     data=[r["probabilities"][lab] for r in results for lab in info.labels]),
            V2Tensor(name="heads_ratio", datatype="FP32", shape=[n], data=[r["heads"]["ratio"] for r in results]),
            V2Tensor(name="level", datatype="BYTES", shape=[n], data=[r["level"] for r in results]),
        ]
        wanted = [o.get("name") for o in (req.outputs or [])]
        if wanted:
            unknown = set(wanted) - {o.name for o in outputs}
            if unknown:
                raise ApiError(422, f"unknown output {sorted(unknown)[0]!r}; outputs are label, probabilities, heads_ratio, level")
            outputs = [o for o in outputs if o.name in wanted]
        metrics.record("dihs_requests", 1, status="ok")
        return V2InferResponse(model_name=info.name, model_version="1", id=req.id, outputs=outputs,
                               parameters={"reasons": [r["reason"] for r in results]})

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return {"ok": True}

    @app.exception_handler(ReplicaFailed)
    async def _replica_failed(request: Request, exc: ReplicaFailed):
        return _count(request, error_response(503, "a model replica failed while serving this request; it is being "
                                      "replaced: retry", "replica_failed", {"Retry-After": "1"}))

    key = settings.api_key.get_secret_value().encode() if settings.api_key else None

    @app.middleware("http")
    async def _request_id(request: Request, call_next):
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        if key is not None and _protected(request.url.path):
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
                log.info("request %s %s %s -> 401 (missing or wrong API key)", rid, request.method, request.url.path)
                return _count(request, error_response(401, "this route needs `Authorization: Bearer <API key>`",
                                              "unauthorized", {"WWW-Authenticate": "Bearer", "X-Request-ID": rid}))
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        if response.status_code >= 400:
            log.info("request %s %s %s -> %d", rid, request.method, request.url.path, response.status_code)
        return response

    # a UTF-8 character is at most 4 bytes; JSON escaping and the rest fit in the slack
    app.add_middleware(MaxBodySize, max_bytes=settings.max_texts * settings.max_chars * 4 + 65536)
    return app


def _protected(path: str) -> bool:
    """Inference and explain routes; health, metadata, docs and the UI page stay open."""
    return path.startswith("/v1/") or (path.startswith("/v2/models/") and path.endswith("/infer"))


def _explain_png(exp: dict, view: str, score: str, layer: int | None, head: int | None) -> bytes:
    from dihs_model import explain_plots
    from dihs_model.explain import find_head, top_head

    if view == "grid":
        return explain_plots.head_grid_png(exp, score)
    if layer is None:
        layer, head = top_head(exp)
    find_head(exp, layer, head)  # range check first: a clear message for a head that does not exist
    return explain_plots.attention_png(exp, layer, head)
