"""The daemon's HTTP endpoints (/metrics, /healthz, /readyz): a small HTTP/1.1 server on the
daemon's own event loop, made to withstand clients that connect and say nothing.

Why not http.server: its ThreadingHTTPServer gives each connection a thread that waits for
the request for ever (issue 30: 300 idle connections, 300 threads, one still open after
11 s), and a thread pool with a cap would only move the problem: idle connections fill the
pool and the kubelet's probe waits behind them. Here a connection is a coroutine on the
loop the daemon already runs, so a flood costs no thread, and two limits bound the rest:

- one deadline per connection: its whole exchange (request head in, answer out) must be
  done ``timeout`` seconds after it connected; a client trickling a byte at a time
  (slowloris) gets no reprieve, and nothing is ever waited on past it;
- at most ``max_connections`` open at once: a new connection beyond that drops the oldest
  one still waiting for its request (a client that has sent its request is not dropped),
  so idle sockets cannot lock out a client that asks at once, as probes and Prometheus do.

The answers themselves take microseconds (flags, and the Prometheus exposition of a few
hundred series), so answering on the loop delays nothing; it also means /healthz answers
only while the daemon's loop runs, which is what it reports. One request per connection
(``Connection: close``), as http.server did: probes and scrapers reconnect anyway.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from http import HTTPStatus

# path -> (status, content type, body)
Route = Callable[[str], tuple[int, str, bytes]]

MAX_HEAD_BYTES = 8192  # a request line and headers longer than this are not a probe's


class EndpointServer:
    def __init__(self, route: Route, *, timeout: float, max_connections: int):
        self._route = route
        self._timeout = timeout
        self._max = max_connections
        # Open connections, oldest first; True while the request has not arrived.
        self._open: dict[asyncio.StreamWriter, bool] = {}
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; return the port (the one chosen when ``port`` is 0). Raises OSError."""
        self._server = await asyncio.start_server(self._connection, host, port,
                                                  limit=MAX_HEAD_BYTES)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= self._max:
            oldest = next((w for w, waiting in self._open.items() if waiting), None)
            if oldest is None:  # every one is being answered: they end within the timeout
                writer.transport.abort()
                return
            oldest.transport.abort()  # its coroutine sees the end of the stream and returns
            self._open.pop(oldest, None)
        self._open[writer] = True
        # drain() returns only once the kernel has the whole answer, so closing never waits
        # on a client that does not read.
        writer.transport.set_write_buffer_limits(high=0)
        try:
            async with asyncio.timeout(self._timeout):
                head = await _read_head(reader)
                if head is None:
                    return
                self._open[writer] = False
                writer.write(self._answer(head))
                await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):  # ValueError: a head too long
            pass
        finally:
            self._open.pop(writer, None)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # an answer the client did not take in time
            else:
                writer.close()

    def _answer(self, head: list[bytes]) -> bytes:
        parts = head[0].decode("latin-1").split()
        headers = ""
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        elif parts[0] not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain", b"method not allowed\n"
            headers = "Allow: GET, HEAD\r\n"
        else:
            status, ctype, body = self._route(parts[1].split("?", 1)[0])
        text = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{headers}"
                "Connection: close\r\n\r\n")
        return text.encode("latin-1") + (b"" if parts[:1] == ["HEAD"] else body)


async def _read_head(reader: asyncio.StreamReader) -> list[bytes] | None:
    """The request line and headers, or None when the client ended before the blank line."""
    lines: list[bytes] = []
    size = 0
    while True:
        line = await reader.readline()  # ValueError past MAX_HEAD_BYTES
        size += len(line)
        if not line.endswith(b"\n") or size > MAX_HEAD_BYTES:
            return None
        if line.strip() == b"":
            if lines:
                return lines
            continue  # an empty line before the request line is allowed (RFC 9112, 2.2)
        lines.append(line)


def bind_error(exc: OSError) -> str:
    """What keeps ``listen`` from being bound, as a user reads it: "address already in use".

    Not ``str(exc)``: asyncio wraps the system's message in its own ("error while attempting
    to bind on address ..."), uvloop in another."""
    if isinstance(exc, socket.gaierror):
        text = exc.strerror or str(exc)  # "Name or service not known"
    elif exc.errno:
        text = os.strerror(exc.errno)
    else:
        text = str(exc)
    return text[:1].lower() + text[1:]
