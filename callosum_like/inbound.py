"""One call being served, and the small rules that turn its outcome into a reply.

Theory of operation: the dispatcher (``dispatch``) keeps an ``Inbound`` for every call it
holds, from arrival to its reply: the calling link and origin, the registration it runs,
its ordering and its place in the books (ticket, job, task, credit, streamed body). This
module holds that record and the pure functions around it: the reply a handler's result
becomes (``reply_to``), the name of the outcome a caller sees (``outcome_name``), when an
execute timeout fires (``expire``). It does no I/O; only ``dispatch`` (and ``relay``, for
``outcome_name``) use it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import aiojobs

from .errors import ErrorCode, error_for_code
from .ordering import Ordering
from .request import Handler
from .streams import CreditWindow, StreamInbox
from .wire import messages as m
from .wire.codec import pack_body

__all__ = [
    "Inbound",
    "Registration",
    "Reply",
    "UnencodableItem",
    "earliest",
    "error_name",
    "expire",
    "is_stream_handler",
    "outcome_name",
    "reply_to",
]

Reply = m.Result | m.Failure | m.Error | m.Cancelled | m.StreamEnd


@dataclass(frozen=True, slots=True)
class Registration:
    """A registered handler and the ordering that overrides the peer's default, if any."""

    handler: Handler
    ordering: Ordering | None
    stream: bool = False


@dataclass(eq=False, slots=True)
class Inbound:
    """One call being served: from arrival to its reply."""

    link: Hashable
    call: m.Call
    peer_id: str
    registration: Registration
    ordering: Ordering
    ticket: int = -1
    job: aiojobs.Job[None] | None = None
    answered: bool = False
    silent: bool = False  # its link is gone: do the bookkeeping, send nothing
    credit: CreditWindow | None = None  # stream calls only
    upload: StreamInbox | None = None  # calls with a streamed body only
    started: float | None = None  # for the RPC log, when it is on
    behind_key: bool = False  # SERIALIZED, queued behind the running request of its key
    task: asyncio.Task[Any] | None = None  # while its handler runs: the task to cancel
    expired: bool = False  # its execute timeout cancelled it

    @property
    def order_key(self) -> Hashable:
        """Its ordering's key, scoped per calling peer.

        That is the link, and behind a relay the caller's route on it.
        """
        return (self.link, self.call.origin, self.call.order_key)


def reply_to(call: m.Call, result: Any) -> Reply:
    """The reply to ``call`` whose handler returned ``result`` (a stream's: its end)."""
    if call.stream:
        return m.StreamEnd(id=call.id)
    try:
        return m.Result(id=call.id, body=pack_body(result))
    except TypeError as exc:
        return m.Error(id=call.id, code=ErrorCode.INTERNAL, message=f"result: {exc}")


def error_name(code: int) -> str:
    """The name of the error class a caller gets for the wire ``code``."""
    return type(error_for_code(code, "")).__name__


def outcome_name(reply: Reply) -> str:
    """``"ok"`` or the name of the error class the caller gets for ``reply``."""
    kind = type(reply)
    if kind is m.Result or kind is m.StreamEnd:
        return "ok"
    if kind is m.Failure:
        return "RPCUserError"
    if kind is m.Cancelled:
        return "RPCCancelledError"
    return error_name(reply.code)  # type: ignore[union-attr]


class UnencodableItem(Exception):
    """A stream handler yielded something msgpack cannot carry."""


def expire(inbound: Inbound) -> None:
    """The execute timeout of ``inbound`` passed: cancel its handler if it still runs."""
    if inbound.task is not None:
        inbound.expired = True
        inbound.task.cancel()


def earliest(a: float | None, b: float | None) -> float | None:
    """The smaller of two optional timeouts (``None`` is no limit)."""
    if a is None:
        return b
    return a if b is None else min(a, b)


def is_stream_handler(handler: Callable[..., object]) -> bool:
    """Whether ``handler`` is an async generator function (a stream handler)."""
    return inspect.isasyncgenfunction(handler)
