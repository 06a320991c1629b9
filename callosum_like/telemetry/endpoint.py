"""A small read-only HTTP/1.1 endpoint on asyncio: the server of ``/metrics`` and the console.

Theory of operation: ``HTTPEndpoint`` serves a fixed table of paths, each a function that
renders the page (status, content type, bytes) when asked. It answers ``GET`` and ``HEAD``
only, one request per connection (``Connection: close``), and is read-only by design: no
request changes anything. What a client may send is bounded: the request head at most
``MAX_HEAD_SIZE`` bytes, read within ``READ_TIMEOUT`` seconds, else the connection is
answered with an error and closed. It binds 127.0.0.1 by default. Bound to a loopback
address it also checks the ``Host`` header (a loopback name or address, any port), so that
a web page cannot read it through DNS rebinding; anything else that may reach it should be
put behind a proxy that authenticates (docs/observability.md).

Only the modules of ``telemetry`` import this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

__all__ = ["HTTPEndpoint", "Page", "MAX_HEAD_SIZE", "READ_TIMEOUT"]

log = logging.getLogger(__name__)

#: Bytes of request line and headers we read before answering 431: a GET needs little.
MAX_HEAD_SIZE: Final = 8192
#: Seconds a client gets to send its request head; a slow one is cut off.
READ_TIMEOUT: Final = 10.0
#: Names a browser on this host uses for a loopback endpoint.
_LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


@dataclass(frozen=True, slots=True)
class Page:
    """What one path answers."""

    body: bytes
    content_type: str
    status: int = 200


class HTTPEndpoint:
    """Serves ``routes`` over HTTP at ``host``:``port`` (0: a free port) once started.

    Args:
        routes: Each path (``/metrics``) and the function that renders it.
        host: Address to bind; loopback by default.
        port: Port to bind; 0 picks a free one (read it from ``port`` after ``start``).
        headers: Extra response headers for every answer.

    Raises:
        TypeError, ValueError: ``port`` is not an int in 0..65535.
    """

    def __init__(
        self,
        routes: Mapping[str, Callable[[], Page]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(port, int) or isinstance(port, bool):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        if not isinstance(host, str) or not host:
            raise TypeError("host must be a non-empty str")
        self._routes = dict(routes)
        self._host = host
        self._port = port
        self._headers = dict(headers or {})
        self._server: asyncio.Server | None = None
        self._check_host = _is_loopback(host)

    @property
    def port(self) -> int:
        """The port bound (the real one for port 0).

        Raises:
            RuntimeError: Not started.
        """
        if self._server is None:
            raise RuntimeError("the endpoint is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """``http://host:port/``, to open in a browser (raises as ``port``)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/"

    async def start(self) -> Self:
        """Bind and start serving; returns ``self``.

        Raises:
            OSError: The address cannot be bound.
            RuntimeError: Already started.
        """
        if self._server is not None:
            raise RuntimeError("the endpoint is already started")
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=MAX_HEAD_SIZE
        )
        return self

    async def aclose(self) -> None:
        """Stop serving and close every connection. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(AttributeError):  # Python 3.12.1+: close the clients too
                server.close_clients()  # type: ignore[attr-defined]
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        if self._server is None:  # ``async with await x.serve()`` is started already
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            page, method = self._answer(head)
        except asyncio.LimitOverrunError:
            page, method = _error(431), "GET"
        except (TimeoutError, asyncio.IncompleteReadError):
            page, method = _error(408), "GET"
        except Exception:
            log.exception("rendering a page failed")
            page, method = _error(500), "GET"
        try:
            writer.write(self._response(page, include_body=method != "HEAD"))
            await writer.drain()
        except ConnectionError:
            pass  # the client left
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[Page, str]:
        if len(head) > MAX_HEAD_SIZE:
            return _error(431), "GET"
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _error(400), "GET"
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return _error(405), "GET"
        if self._check_host and not _loopback_host(lines[1:]):
            return _error(403), method
        render = self._routes.get(target.split("?", 1)[0])
        return (render() if render is not None else _error(404)), method

    def _response(self, page: Page, *, include_body: bool) -> bytes:
        headers = {
            "Content-Type": page.content_type,
            "Content-Length": str(len(page.body)),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Connection": "close",
            **self._headers,
        }
        status = f"HTTP/1.1 {page.status} {_REASONS.get(page.status, 'Error')}\r\n"
        text = status + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        return (text + "\r\n").encode("latin-1") + (page.body if include_body else b"")


def _error(status: int) -> Page:
    return Page(f"{status} {_REASONS[status]}\n".encode(), "text/plain; charset=utf-8", status)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_host(header_lines: list[str]) -> bool:
    """Whether the ``Host`` header names this machine's loopback (any port)."""
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "host":
            host = value.strip()
            if host.startswith("["):  # [::1]:port
                host = host[: host.find("]") + 1]
            else:
                host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
            return host.lower() in _LOOPBACK_NAMES
    return False
