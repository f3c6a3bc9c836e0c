"""A request-body size limit enforced while the body is read, for every route of an app.

Checking ``Content-Length`` alone is not enough: a chunked request has none, and FastAPI then
reads the whole body into memory before any route code (or authentication) runs, so anyone
could make a node hold hundreds of megabytes with one unauthenticated POST. This ASGI
middleware counts the bytes as ``receive()`` yields them and answers 413 as soon as the count
passes the limit; the rest of the body is never stored (uvicorn discards what nobody reads).
It sits outside routing and authentication, so the limit holds before any other work.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from geofleet.domain.errors import PayloadTooLarge
from geofleet.http_errors import error_response


class BodyTooLarge(Exception):
    """Raised into the app from ``receive()`` once the limit is passed (the 413 is already sent)."""


class BodyLimit:
    """Answers 413 ``{"code", "message"}`` for a body over ``limit`` bytes, declared or streamed.

    Once the limit is passed, the app's own reads fail (``BodyTooLarge``) and whatever it
    answers is dropped: the 413 is the only answer the client gets."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and not (declared.isascii() and declared.isdigit() and int(declared) <= self.limit):
            await self._refuse(scope, send)  # refused before the app (and its authentication) sees it
            return
        received = 0
        refused = False
        started = False

        async def counted() -> Message:
            nonlocal received, refused
            if refused:
                raise BodyTooLarge()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    if not started:
                        await self._refuse(scope, send)
                    raise BodyTooLarge()
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out instead of whatever the app answers now
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, scope: Scope, send: Send) -> None:
        error = PayloadTooLarge(f"request body over {self.limit} bytes: send a smaller body")
        await error_response(error)(scope, _nothing, send)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


def _header(scope: Scope, name: bytes) -> str | None:
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None
