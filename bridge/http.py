"""A small read-only HTTP/1.1 server on the bridge's event loop, for the metrics endpoint and the dashboard.

GET (and HEAD) only, one request per connection, bounded request heads, a deadline on every read. Handlers run on
the event loop, so they read the runtime's state directly and consistently; they must be quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from bridge.metrics import Metrics

__all__ = ["Handler", "HttpServer", "Request", "Response"]

log = logging.getLogger("bridge.http")

MAX_HEAD = 8192
READ_TIMEOUT = 10.0
_REASONS = {200: "OK", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 500: "Internal Server Error"}


@dataclass(slots=True)
class Request:
    """One parsed GET request."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass(slots=True)
class Response:
    """What a handler returns."""

    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response | Awaitable[Response]]


class HttpServer:
    """``async with HttpServer(host, port, routes, token=...)``: serves until the block ends.

    ``routes`` maps exact paths, or prefixes ending in ``/``, to handlers. With ``token``, every route but
    ``public`` ones needs ``Authorization: Bearer <token>`` or ``?token=<token>``.
    """

    def __init__(self, host: str, port: int, routes: dict[str, Handler], *, token: str | None = None,
                 public: frozenset[str] = frozenset(), metrics: Metrics | None = None) -> None:
        self.host = host
        self.port = port
        self.routes = routes
        self.token = token
        self.public = public
        self._server: asyncio.Server | None = None
        self.metrics = metrics if metrics is not None else Metrics()  # counts http_requests

    async def __aenter__(self) -> HttpServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD)
        sock = self._server.sockets[0].getsockname()
        self.port = int(sock[1])  # the real one when asked for port 0
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            request = _parse(head)
            response = await self._dispatch(request) if request is not None else Response(b"bad request\n", status=400)
            self.metrics.http_requests += 1
            head_only = request is not None and request.method == "HEAD"
            writer.write(_encode(response, head_only))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception:
            log.exception("HTTP request failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _dispatch(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(b"read-only: GET and HEAD only\n", status=405, headers={"Allow": "GET, HEAD"})
        handler = self.routes.get(request.path)
        if handler is None:
            prefix = request.path[: request.path.rfind("/") + 1]
            handler = self.routes.get(prefix) if prefix != request.path else None
        if handler is None:
            return Response(b"not found\n", status=404)
        if self.token is not None and request.path not in self.public and not self._authorized(request):
            return Response(b"a token is required: Authorization: Bearer <token>, or ?token=<token>\n", status=401,
                            headers={"WWW-Authenticate": "Bearer"})
        result = handler(request)
        if not isinstance(result, Response):
            result = await result
        return result

    def _authorized(self, request: Request) -> bool:
        assert self.token is not None
        given = request.query.get("token", "")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), self.token.encode())


def _parse(head: bytes) -> Request | None:
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1."):
        return None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    parts = urlsplit(target)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return Request(method, unquote(parts.path), query, headers)


def _encode(response: Response, head_only: bool) -> bytes:
    reason = _REASONS.get(response.status, "OK")
    lines = [f"HTTP/1.1 {response.status} {reason}", f"Content-Type: {response.content_type}",
             f"Content-Length: {len(response.body)}", "Connection: close", "Cache-Control: no-store",
             "X-Content-Type-Options: nosniff"]
    lines += [f"{k}: {v}" for k, v in response.headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body
