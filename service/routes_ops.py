"""Operations: the liveness probe that load balancers and KubeRay call (never counted, never guarded)."""

from __future__ import annotations

from fastapi import APIRouter

from .api import Api


def ops_router(api: Api) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz():
        return {"ok": True}

    return router
