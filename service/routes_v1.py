"""The v1 API: classify, explain (JSON or PNG) and the UI page; and the classify fast path, the same
route in plain ASGI for the requests that need nothing else of FastAPI."""

from __future__ import annotations

from importlib.resources import files
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from .api import Api, json_once
from .errors import ApiError, error_answer
from .protocol import ClassifyRequest, ClassifyResponse, ExplainRequest, ExplainResponse


def v1_router(api: Api) -> APIRouter:
    router = APIRouter()
    info = api.info

    @router.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        summary="Classify one text or a list",
        dependencies=[Depends(api.authorized), Depends(api.counted)],
    )
    async def classify_route(req: ClassifyRequest):
        return await classify(api, req)

    @router.post(
        "/v1/explain",
        response_model=ExplainResponse,
        dependencies=[Depends(api.authorized)],
        summary="Classify one text and explain it (JSON or PNG)",
        responses={200: {"content": {"image/png": {}}, "description": "JSON, or a PNG with format=png"}},
    )
    async def explain(
        req: ExplainRequest,
        fmt: Literal["json", "png"] = Query("json", alias="format", description="json or png"),
        view: Literal["grid", "attention"] = Query(
            "grid", description="png: the layers x heads grid, or one head's attention map"
        ),
        score: Literal["input", "michel", "fisher", "attention"] = Query(
            "input", description="grid colour: this input's importance or a global scorer"
        ),
        layer: int | None = Query(
            None,
            ge=0,
            description="attention view: layer (default: the "
            "layer of the head that mattered most for this input)",
        ),
        head: int | None = Query(None, ge=0, description="attention view: original head id"),
    ):
        item = api.items([req.text], req.budget)[0]
        if (layer is None) != (head is None):
            raise ApiError(422, "give both layer and head, or neither (the most important head that ran)")
        png = fmt == "png"
        exp = await api.backend.explain(item, req.attention if not png else view == "attention")
        if not png:
            return ExplainResponse(model=info.name, **exp)
        try:
            image = await run_in_threadpool(_explain_png, exp, view, score, layer, head)
        except ValueError as e:
            raise ApiError(422, str(e)) from None
        return Response(image, media_type="image/png")

    ui_page = (
        (files("service") / "static" / "ui.html").read_text(encoding="utf-8").replace("{{MODEL}}", info.name)
    )

    @router.get("/ui", include_in_schema=False, response_class=HTMLResponse)
    async def ui():
        """A page to type a text and see its label, budget, head grid and attention maps (no external
        assets)."""
        return HTMLResponse(ui_page)

    return router


async def classify(api: Api, req: ClassifyRequest) -> Response:
    """POST /v1/classify of a validated request, on either path."""
    items = api.items(req.all_texts(), req.budget)
    timing: dict = {}
    results = await api.backend.classify(items, timing)
    return json_once({"model": api.info.name, "results": results}, timing)


class ClassifyFastPath:
    """ASGI middleware: an authorized POST /v1/classify with a JSON body the request model accepts goes
    straight to `classify`, past FastAPI's exception middlewares, router and dependency solving (a
    fifth of a one-text request's event-loop time in a profile). Any other request, a refused one
    included, goes on to the FastAPI app with its body replayed, so every refusal is still the route's
    own answer; an error after validation gets the app's error answer, counted the same way."""

    def __init__(self, app, api: Api):
        self.app, self.api = app, api

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/classify" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        body = await request.body()
        req = self._accepted(request, body)
        if req is None:
            return await self.app(scope, _replay(body, receive), send)
        try:
            response = await classify(self.api, req)
            self.api.metrics.record("dihs_requests", 1, status="ok")
        except Exception as exc:  # noqa: BLE001 - every error is answered, as the app's handlers answer it
            response = error_answer(exc, scope["path"], scope.get("state", {}).get("request_id", "-"))
            self.api.count_outcome(response.status_code)
        await response(scope, receive, send)

    def _accepted(self, request: Request, body: bytes) -> ClassifyRequest | None:
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if kind != "application/json" or not self.api.key_ok(request):
            return None
        try:
            return ClassifyRequest.model_validate_json(body)
        except ValidationError:
            return None


def _replay(body: bytes, receive):
    """A receive that gives the already-read body once, then what the client sends next (a disconnect)."""
    given = False

    async def again():
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


def _explain_png(exp: dict, view: str, score: str, layer: int | None, head: int | None) -> bytes:
    from dihs_model import explain_plots
    from dihs_model.explain import find_head, top_head

    if view == "grid":
        return explain_plots.head_grid_png(exp, score)
    if layer is None:
        layer, head = top_head(exp)
    find_head(exp, layer, head)  # range check first: a clear message for a head that does not exist
    return explain_plots.attention_png(exp, layer, head)
