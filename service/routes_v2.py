"""Open Inference Protocol v2 (KServe / Triton HTTP): health, server and model metadata, infer."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from .api import Api, json_once
from .errors import ApiError
from .oip import pydantic_message, read_v2, v2_texts
from .protocol import RENAMED, Budget, V2InferRequest, V2InferResponse, V2ModelMetadata

OUTPUTS = ("label", "probabilities", "flops_ratio", "heads_ratio", "level")


def v2_router(api: Api) -> APIRouter:
    router = APIRouter()
    info = api.info

    async def ready_or_503() -> None:
        if not await api.backend.ready():
            raise ApiError(503, "the model is not loaded yet", "not_ready")

    @router.get("/v2/health/live")
    async def live():
        return {"live": True}

    @router.get("/v2/health/ready")
    async def ready():
        await ready_or_503()
        return {"ready": True}

    @router.get("/v2")
    async def server_metadata():
        return {"name": "dihs-serve", "version": "0.1.0", "extensions": []}

    @router.get("/v2/models/{name}", response_model=V2ModelMetadata)
    @router.get("/v2/models/{name}/versions/{version}", response_model=V2ModelMetadata, include_in_schema=False)
    async def model_metadata(name: str, version: str = "1"):
        api.known(name)
        n = len(info.labels)
        return V2ModelMetadata(
            name=info.name, versions=["1"], platform="pytorch_dihs",
            inputs=[{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            outputs=[{"name": "label", "datatype": "BYTES", "shape": [-1]},
                     {"name": "probabilities", "datatype": "FP32", "shape": [-1, n]},
                     {"name": "flops_ratio", "datatype": "FP32", "shape": [-1]},
                     {"name": "heads_ratio", "datatype": "FP32", "shape": [-1]},
                     {"name": "level", "datatype": "BYTES", "shape": [-1]}])

    @router.get("/v2/models/{name}/ready")
    @router.get("/v2/models/{name}/versions/{version}/ready", include_in_schema=False)
    async def model_ready(name: str, version: str = "1"):
        api.known(name)
        await ready_or_503()
        return {"name": name, "ready": True}

    guarded = [Depends(api.authorized), Depends(api.counted)]

    @router.post("/v2/models/{name}/infer", response_model=V2InferResponse, response_model_exclude_none=True,
                 dependencies=guarded,
                 openapi_extra={"requestBody": {"content": {"application/json": {
                     "schema": V2InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
    @router.post("/v2/models/{name}/versions/{version}/infer", include_in_schema=False, dependencies=guarded,
                 response_model=V2InferResponse, response_model_exclude_none=True)
    async def infer(name: str, request: Request, version: str = "1"):
        api.known(name)
        req = await read_v2(request)
        texts = v2_texts(req)
        params = dict(req.parameters or {})
        try:
            budget = Budget(**{k: params[k] for k in ("mode", "max_flops_ratio", "min_flops_ratio", *RENAMED)
                               if k in params})
        except ValueError as e:
            raise ApiError(422, f"parameters: {pydantic_message(e)}") from None
        items = api.items(texts, budget)
        wanted = [o.get("name") for o in (req.outputs or [])]
        unknown = set(wanted) - set(OUTPUTS)
        if unknown:
            raise ApiError(422, f"unknown output {sorted(unknown)[0]!r}; outputs are {', '.join(OUTPUTS)}")
        timing: dict = {}
        results = await api.backend.classify(items, timing)
        outputs = [o for o in _outputs(results, info.labels) if not wanted or o["name"] in wanted]
        body = {"model_name": info.name, "model_version": "1", "id": req.id, "outputs": outputs,
                "parameters": {"reasons": [r["reason"] for r in results]}}
        return json_once({k: v for k, v in body.items() if v is not None}, timing)

    return router


def _outputs(results: list[dict], labels: list[str]) -> list[dict]:
    """The response tensors (V2Tensor fields) of a batch of results."""
    n = len(results)
    return [
        {"name": "label", "datatype": "BYTES", "shape": [n], "data": [r["label"] for r in results]},
        {"name": "probabilities", "datatype": "FP32", "shape": [n, len(labels)],
         "data": [r["probabilities"][lab] for r in results for lab in labels]},
        {"name": "flops_ratio", "datatype": "FP32", "shape": [n], "data": [r["flops_ratio"] for r in results]},
        {"name": "heads_ratio", "datatype": "FP32", "shape": [n], "data": [r["heads"]["ratio"] for r in results]},
        {"name": "level", "datatype": "BYTES", "shape": [n], "data": [r["level"] for r in results]},
    ]
