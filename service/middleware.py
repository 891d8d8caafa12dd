"""ASGI middleware: refuse oversized bodies before anything parses them."""

from __future__ import annotations

import json


class MaxBodySize:
    """ASGI middleware: refuse bodies over the limit before anything parses them."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
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
                await self._refuse(send)

        await self.app(scope, counted, guarded)

    async def _refuse(self, send):
        body = json.dumps({"error": {"code": 413, "type": "payload_too_large",
                                     "message": f"request body over {self.max_bytes} bytes: send fewer or shorter texts"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
