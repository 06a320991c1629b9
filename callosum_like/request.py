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
    "make_request",
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


_new = object.__new__
# The slots' own setters: a frozen dataclass's ``__init__`` goes through
# ``object.__setattr__`` for every field, which looks the field up on the class each time.
_set_method = Request.__dict__["method"].__set__
_set_body = Request.__dict__["body"].__set__
_set_peer_id = Request.__dict__["peer_id"].__set__
_set_order_key = Request.__dict__["order_key"].__set__
_set_headers = Request.__dict__["headers"].__set__


def make_request(
    method: str, body: Body, peer_id: str, order_key: str | None, headers: Headers
) -> Request:
    """``Request(method=..., body=..., ...)``, every field given, at less than half the cost.

    The serving side builds one per call; the ``Request`` is the same (frozen, equal and
    hashing as one built the usual way).
    """
    request = _new(Request)
    _set_method(request, method)
    _set_body(request, body)
    _set_peer_id(request, peer_id)
    _set_order_key(request, order_key)
    _set_headers(request, headers)
    return request
