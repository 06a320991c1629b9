"""The user-facing request object and the handler protocols.

Theory of operation: ``Request`` is what a handler receives. It is deliberately a separate
class from the wire ``Call`` message (style rule 9): the wire message carries sequence ids
and flags that are the framework's business, the request carries what the application needs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

__all__ = [
    "Body",
    "Headers",
    "Request",
    "Handler",
    "StreamHandler",
]

#: A msgpack value: None, bool, int, float, str, bytes, list, dict (and tuples, sent as lists).
Body: TypeAlias = Any
#: Per-call metadata (trace ids, tokens), read by the handler as ``request.headers``.
Headers: TypeAlias = Mapping[str, str | bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One incoming call, as a handler sees it.

    Attributes:
        method: The method name the caller invoked.
        body: The decoded body (any msgpack value).
        peer_id: The identity of the calling peer (its authenticated user id under CURVE).
        order_key: The caller's order key, or ``None``.
        headers: The caller's headers; an empty mapping when none were sent.
    """

    method: str
    body: Body
    peer_id: str
    order_key: str | None = None
    headers: Headers = field(default_factory=dict)


class Handler(Protocol):
    """An ``async def`` that answers one request with one msgpack value."""

    def __call__(self, request: Request, /) -> Awaitable[Body]:
        """Answer ``request``; the awaited value is the reply body."""
        ...


class StreamHandler(Protocol):
    """An async generator that answers one request with a stream of msgpack values."""

    def __call__(self, request: Request, /) -> AsyncIterator[Body]:
        """Answer ``request`` with the items it yields, in order."""
        ...
