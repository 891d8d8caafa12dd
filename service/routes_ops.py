"""Operations: liveness and readiness probes for load balancers and KubeRay (never counted, never guarded).

/healthz answers while the process runs; /readyz (like /v2/health/ready) is a 503 while the replica
drains, so a balancer stops sending it requests before it stops."""

from __future__ import annotations

from fastapi import APIRouter

from .api import Api
from .errors import ApiError


def ops_router(api: Api) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz():
        return {"ok": True}

    @router.get("/readyz")
    async def readyz():
        if not await api.backend.ready():
            raise ApiError(503, "not ready: the replica is shutting down", "not_ready", {"Retry-After": "1"})
        return {"ready": True}

    return router
