"""The v1 API: classify, explain (JSON or PNG) and the UI page."""

from __future__ import annotations

from importlib.resources import files
from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from .api import Api, json_once
from .errors import ApiError
from .protocol import ClassifyRequest, ClassifyResponse, ExplainRequest, ExplainResponse


def v1_router(api: Api) -> APIRouter:
    router = APIRouter()
    info = api.info

    @router.post("/v1/classify", response_model=ClassifyResponse, summary="Classify one text or a list",
                 dependencies=[Depends(api.authorized), Depends(api.counted)])
    async def classify(req: ClassifyRequest):
        items = api.items(req.all_texts(), req.budget)
        timing: dict = {}
        results = await api.backend.classify(items, timing)
        return json_once({"model": info.name, "results": results}, timing)

    @router.post("/v1/explain", response_model=ExplainResponse, dependencies=[Depends(api.authorized)],
                 summary="Classify one text and explain it (JSON or PNG)",
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

    ui_page = (files("service") / "static" / "ui.html").read_text(encoding="utf-8").replace("{{MODEL}}", info.name)

    @router.get("/ui", include_in_schema=False, response_class=HTMLResponse)
    async def ui():
        """A page to type a text and see its label, budget, head grid and attention maps (no external assets)."""
        return HTMLResponse(ui_page)

    return router


def _explain_png(exp: dict, view: str, score: str, layer: int | None, head: int | None) -> bytes:
    from dihs_model import explain_plots
    from dihs_model.explain import find_head, top_head

    if view == "grid":
        return explain_plots.head_grid_png(exp, score)
    if layer is None:
        layer, head = top_head(exp)
    find_head(exp, layer, head)  # range check first: a clear message for a head that does not exist
    return explain_plots.attention_png(exp, layer, head)
