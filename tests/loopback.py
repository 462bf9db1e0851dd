"""The suite's in-memory registries (httpx2-style handlers: request -> response) served over
real HTTP on a loopback port, inside the test's own event loop.

retention's HTTP (httpx2, retention/registry/http.py) is given no other transport: the
in-memory registries of the property tests reach it the way every registry does, through a
socket. Served (by aiohttp) in the test's event loop, what a handler does (set an
asyncio.Event, move a tag between two requests) stays ordered with the client's awaits.
"""

from __future__ import annotations

import inspect
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
from aiohttp import web

from tests.servers import free_port

Handler = Callable[[httpx2.Request], httpx2.Response | Awaitable[httpx2.Response]]

# Set by aiohttp itself from the body it sends (a HEAD keeps the handler's Content-Length).
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


@asynccontextmanager
async def serving(handler: Handler, *, port: int | None = None,
                  tls: tuple[Path, Path] | None = None) -> AsyncIterator[str]:
    """Serve ``handler`` on 127.0.0.1 (``port``, or a free one); yields the base URL.
    ``tls``: (certificate, key) PEM files, to serve HTTPS."""

    async def handle(request: web.Request) -> web.StreamResponse:
        sent = httpx2.Request(request.method, str(request.url),
                              headers=list(request.headers.items()),
                              content=await request.read())
        answer = handler(sent)
        if inspect.isawaitable(answer):
            answer = await answer
        body = await answer.aread()
        response = web.Response(status=answer.status_code, body=body, headers=[
            (k, v) for k, v in answer.headers.multi_items() if k.lower() not in _FRAMING])
        length = answer.headers.get("content-length")
        if request.method == "HEAD" and length is not None:
            # A HEAD answer has no body, but says how long the GET's would be.
            response.headers["Content-Length"] = length
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = port or free_port()
    context = None
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context)
    await site.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
