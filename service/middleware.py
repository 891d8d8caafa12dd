"""ASGI middleware (plain ASGI, no per-request task or body copy): request ids, and refusing
oversized bodies before anything parses them."""

from __future__ import annotations

import json
import logging
import time
import uuid

from .errors import error_body

log = logging.getLogger("dihs.http")


class RequestId:
    """Every answer carries X-Request-ID (the client's, or a new one); errors are logged with it.
    A Server-Timing header that the route set gains `app;dur=`: the time from this middleware
    to the answer's start, i.e. everything the replica spent on the request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        given = next((v for k, v in scope.get("headers", []) if k == b"x-request-id"), None)
        rid = given.decode("latin-1") if given else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                for i, (k, v) in enumerate(headers):
                    if k == b"server-timing":
                        headers[i] = (k, v + f", app;dur={(time.perf_counter() - t0) * 1e3:.3f}".encode())
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
                if message["status"] >= 400:
                    log.info(
                        "request %s %s %s -> %d",
                        rid,
                        scope.get("method"),
                        scope.get("path"),
                        message["status"],
                    )
            await send(message)

        await self.app(scope, receive, send_with_id)


class MaxBodySize:
    """ASGI middleware: refuse bodies over the limit before anything parses them."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, scope["path"])
        seen, exceeded = 0, False

        async def counted():
            nonlocal seen, exceeded
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:  # stop reading; the app sees an empty end of body
                    exceeded = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return msg

        async def guarded(message):
            if not exceeded:
                return await send(message)
            if message["type"] == "http.response.start":  # replace whatever the app answered
                await self._refuse(send, scope["path"])

        await self.app(scope, counted, guarded)

    async def _refuse(self, send, path: str):
        status, body = error_body(
            path,
            413,
            "payload_too_large",
            f"request body over {self.max_bytes} bytes: send fewer or shorter texts",
        )
        body = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
