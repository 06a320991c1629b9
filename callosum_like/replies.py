"""What a reply to one of our calls comes to: the value ``invoke`` returns, or its error.

Theory of operation: the receive loop only resolves a call's future with the reply
*message*; the caller's own task turns it into the handler's value or the error to raise
(``outcome``), so that no body is unpacked on the loop. ``call_outcome`` names how a call
ended, for the RPC log. Only ``calls`` uses this module.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Final

from .errors import (
    ProtocolError,
    RPCCancelledError,
    RPCInternalError,
    RPCUserError,
    error_for_code,
)
from .request import Body
from .wire import messages as m
from .wire.codec import unpack_body

__all__ = ["outcome", "call_outcome"]


def outcome(reply: m.Message) -> Body:
    """Turn a reply message into the value ``invoke`` returns or the error it raises."""
    if type(reply) is m.Result:
        try:
            return unpack_body(reply.body)
        except ProtocolError as exc:
            raise RPCInternalError(f"undecodable result: {exc}") from None
    if type(reply) is m.Failure:
        raise RPCUserError(reply.name, reply.repr, reply.traceback)
    if type(reply) is m.Error:
        raise error_for_code(reply.code, reply.message)
    if type(reply) is m.Cancelled:
        raise RPCCancelledError(reply.reason or "the remote cancelled the call")
    raise AssertionError(f"not a reply: {reply!r}")


def call_outcome(future: asyncio.Future[m.Message]) -> str:
    """For the RPC log, from ``Caller.call``'s ``finally``: how the call ended."""
    if future.done() and not future.cancelled():
        error = future.exception()
        if error is not None:
            return type(error).__name__
        reply = future.result()
        if type(reply) is m.Error:
            return type(error_for_code(reply.code, "")).__name__
        return _REPLY_OUTCOMES.get(type(reply), "RPCInternalError")
    error = sys.exc_info()[1]  # the exception leaving ``call``: timeout, cancellation
    return "ok" if error is None else type(error).__name__


#: What the caller of ``invoke`` gets for each kind of reply; errors by their code.
_REPLY_OUTCOMES: Final[dict[type, str]] = {
    m.Result: "ok",
    m.Failure: "RPCUserError",
    m.Cancelled: "RPCCancelledError",
}
