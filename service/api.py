"""What every router shares: the served model, request checks, and the two route dependencies
(API-key auth and request counting). Routers import this module; nothing here imports a router.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request
from fastapi.responses import Response

from dihs_model.policy import limits_error

from .backend import ModelInfo
from .errors import ApiError
from .protocol import Budget
from .routing import Item
from .settings import Settings

log = logging.getLogger("dihs.http")


class Backend(Protocol):
    info: ModelInfo

    async def classify(self, items: list[Item], timing: dict | None = None) -> list[dict]: ...

    async def explain(self, item: Item, attention: bool = True) -> dict: ...

    async def ready(self) -> bool: ...

    def auto_status(self) -> dict: ...


@dataclass(frozen=True, eq=False)
class Api:
    settings: Settings
    backend: Backend
    metrics: object

    @property
    def info(self) -> ModelInfo:
        return self.backend.info

    # --- route dependencies ---

    async def counted(self, request: Request):
        """Route dependency: this route's requests count in dihs_requests by outcome. A request that
        ends in an error is counted by the error handler (`counts(request)` tells it to)."""
        yield
        self.metrics.record("dihs_requests", 1, status="ok")

    def count_outcome(self, status_code: int) -> None:
        """dihs_requests of an error answer, by what went wrong."""
        c = status_code
        self.metrics.record(
            "dihs_requests",
            1,
            status="rejected" if c == 503 else "client_error" if c < 500 else "server_error",
        )

    def counts(self, request: Request) -> bool:
        """Does the route this request matched declare the `counted` dependency?"""
        route = request.scope.get("route")
        return any(getattr(d, "dependency", None) == self.counted for d in getattr(route, "dependencies", ()))

    async def authorized(self, request: Request) -> None:
        """Route dependency: with an API key set, the route needs `Authorization: Bearer <key>`.
        (async: FastAPI would run a plain function in a worker thread, one thread hop per request)"""
        if not self.key_ok(request):
            log.info("request %s %s -> 401 (missing or wrong API key)", request.method, request.url.path)
            raise ApiError(
                401,
                "this route needs `Authorization: Bearer <API key>`",
                "unauthorized",
                {"WWW-Authenticate": "Bearer"},
            )

    def key_ok(self, request: Request) -> bool:
        """No API key is set, or the request carries it as `Authorization: Bearer <key>`."""
        key = self.settings.api_key
        if key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), key.get_secret_value().encode()
        )

    # --- request checks ---

    def items(self, texts: list[str], budget: Budget) -> list[Item]:
        s = self.settings
        if not texts:
            raise ApiError(422, "no texts given: send at least one")
        if len(texts) > s.max_texts:
            raise ApiError(
                422, f"{len(texts)} texts in one request; the limit is {s.max_texts}: split the request"
            )
        for i, t in enumerate(texts):
            try:  # JSON's \u escapes can carry half a surrogate pair, which no tokenizer takes
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ApiError(
                    422,
                    f"text {i} has an unpaired surrogate U+{ord(t[e.start]):04X} at character "
                    f"{e.start}: send valid Unicode (escape a character outside the BMP as a "
                    "surrogate pair, or send UTF-8)",
                ) from None
            if not any(ch.isprintable() and not ch.isspace() for ch in t):
                raise ApiError(
                    422, f"text {i} is empty or has only whitespace/control characters: send some words"
                )
            if len(t) > s.max_chars:
                raise ApiError(422, f"text {i} has {len(t)} characters; the limit is {s.max_chars}")
        err = limits_error(self.info.ladder, budget.min_flops_ratio, budget.max_flops_ratio)
        if err:
            raise ApiError(422, f"budget: {err}")
        return [Item(t, budget.mode, budget.min_flops_ratio, budget.max_flops_ratio) for t in texts]

    def known(self, name: str) -> None:
        if name != self.info.name:
            raise ApiError(404, f"unknown model {name!r}; this server serves {self.info.name!r}", "not_found")


def json_once(body: dict, timing: dict | None = None) -> Response:
    """The response body encoded once, from plain dicts (no model re-validation on the way out).
    `timing` becomes a Server-Timing header (ms per phase), serialization included."""
    t0 = time.perf_counter()
    raw = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    headers = None
    if timing is not None:
        timing["serialize"] = time.perf_counter() - t0
        headers = {"Server-Timing": ", ".join(f"{k};dur={v * 1e3:.3f}" for k, v in timing.items())}
    return Response(raw, media_type="application/json", headers=headers)
