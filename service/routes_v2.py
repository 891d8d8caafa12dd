"""Open Inference Protocol v2 (KServe / Triton HTTP): health, server and model metadata, the model's
configuration (labels, budget ladder, limits) and infer, with the binary tensor data and
classification extensions. Errors on every /v2 path have the spec's shape (service/errors.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from .api import Api
from .errors import ApiError
from .oip import OUTPUT_PARAMETERS, REQUEST_PARAMETERS, read_call
from .oip_outputs import OUTPUTS, infer_response, metadata, tensors
from .protocol import V2ErrorResponse, V2InferRequest, V2InferResponse, V2ModelMetadata
from .version import package_version

EXTENSIONS = ["binary_tensor_data", "classification", "parameters"]
VERSIONS = ["1"]
ERRORS = {code: {"model": V2ErrorResponse} for code in (400, 401, 404, 413, 503)}


def v2_router(api: Api) -> APIRouter:
    router = APIRouter(responses=ERRORS)
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

    server = {"name": "dihs-serve", "version": package_version(), "extensions": EXTENSIONS}

    @router.get("/v2")
    async def server_metadata():
        return server

    def known(name: str, version: str | None) -> None:
        api.known(name)
        if version is not None and version not in VERSIONS:
            raise ApiError(
                404,
                f"model {name!r} has no version {version!r}; its versions are {', '.join(VERSIONS)}",
                "not_found",
            )

    @router.get("/v2/models/{name}", response_model=V2ModelMetadata)
    @router.get(
        "/v2/models/{name}/versions/{version}", response_model=V2ModelMetadata, include_in_schema=False
    )
    async def model_metadata(name: str, version: str | None = None):
        known(name, version)
        return V2ModelMetadata(
            name=info.name,
            versions=VERSIONS,
            platform="pytorch_dihs",
            inputs=[{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            outputs=metadata(info.labels),
        )

    @router.get("/v2/models/{name}/config")
    @router.get("/v2/models/{name}/versions/{version}/config", include_in_schema=False)
    async def model_config(name: str, version: str | None = None):
        """What the outputs mean and what a request may ask: the labels (the probabilities' columns,
        in order), the budget ladder (FLOPs ratios of the width levels), the dtype served and why
        (`dtype_choice`), the request limits, and which plans auto serves now, with the evidence
        behind each (`auto`)."""
        known(name, version)
        s = api.settings
        return {
            "name": info.name,
            "labels": info.labels,
            "ladder_flops_ratios": info.ladder,
            "dtype": info.dtype,
            "dtype_choice": info.dtype_choice,
            "max_texts": s.max_texts,
            "max_chars": s.max_chars,
            "max_tokens": info.max_length,
            "parameters": list(REQUEST_PARAMETERS),
            "output_parameters": list(OUTPUT_PARAMETERS),
            "outputs": list(OUTPUTS),
            "auto": api.backend.auto_status(),
        }

    @router.get("/v2/models/{name}/ready")
    @router.get("/v2/models/{name}/versions/{version}/ready", include_in_schema=False)
    async def model_ready(name: str, version: str | None = None):
        known(name, version)
        await ready_or_503()
        return {"name": name, "ready": True}

    guarded = [Depends(api.authorized), Depends(api.counted)]

    @router.post(
        "/v2/models/{name}/infer",
        response_model=V2InferResponse,
        response_model_exclude_none=True,
        dependencies=guarded,
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": V2InferRequest.model_json_schema(
                            ref_template="#/components/schemas/{model}"
                        )
                    }
                }
            }
        },
    )
    @router.post(
        "/v2/models/{name}/versions/{version}/infer",
        include_in_schema=False,
        dependencies=guarded,
        response_model=V2InferResponse,
        response_model_exclude_none=True,
    )
    async def infer(name: str, request: Request, version: str | None = None):
        known(name, version)
        call = await read_call(request)
        items = api.items(call.texts, call.budget)
        timing: dict = {}
        results = await api.backend.classify(items, timing)
        head = {"model_name": info.name, "model_version": VERSIONS[0], **({"id": call.id} if call.id else {})}
        return infer_response(head, tensors(results, info.labels, call.outputs), timing)

    return router
