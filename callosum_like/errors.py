"""The one error module of callosum_like.

Theory of operation: this is a leaf module (it imports nothing of the package), so every
layer can raise these. Classes are organised by who is at fault:

* ``RPCError`` is the root of everything the library raises at run time.
* ``RemoteError`` is the branch for failures that the *remote* peer reported in a reply.
  Each remote error has a wire code (``ErrorCode``); ``error_for_code`` maps a code read
  off the wire back to its class, so the codec never needs an if/elif chain.
* Link-level conditions: ``PeerClosedError`` (you closed it) beside
  ``PeerDisconnectedError`` (it broke), as trio separates ClosedResourceError from
  BrokenResourceError.
* ``ProtocolError`` is internal to the codec: garbage read off the network. The peer never
  lets it escape to a caller; it drops the message, logs and counts it.

Misuse of the API (wrong argument types or values) raises ``TypeError``/``ValueError``,
never an ``RPCError``.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "ErrorCode",
    "RPCError",
    "RemoteError",
    "RPCUserError",
    "MethodNotFoundError",
    "RPCInternalError",
    "OverloadedError",
    "RefusedError",
    "InterceptorError",
    "RPCTimeoutError",
    "RPCCancelledError",
    "PeerDisconnectedError",
    "PeerClosedError",
    "MessageTooLargeError",
    "AuthenticationError",
    "UnknownPeerError",
    "SchemaError",
    "ProtocolError",
    "error_for_code",
]


class ErrorCode(enum.IntEnum):
    """Wire codes of the errors a remote peer reports in an ``Error`` reply."""

    INTERNAL = 1
    METHOD_NOT_FOUND = 2
    MESSAGE_TOO_LARGE = 3
    OVERLOADED = 4
    PEER_DISCONNECTED = 5  # a relay lost (or never had) the peer a call was routed to
    REFUSED = 6  # an interceptor of the callee refused the call before its handler ran


class RPCError(Exception):
    """Root of every run-time error raised by callosum_like."""


class RemoteError(RPCError):
    """The remote peer answered a call with an error.

    Args:
        message: What the remote said about the failure.
    """

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class RPCUserError(RemoteError):
    """The remote handler raised an exception.

    Args:
        name: The qualified class name of the remote exception (``"ValueError"``).
        repr: ``repr()`` of the remote exception.
        traceback: The formatted remote traceback.
    """

    def __init__(self, name: str, repr: str, traceback: str) -> None:  # noqa: A002
        super().__init__(repr)
        self.args = (name, repr, traceback)
        self.name = name
        self.repr = repr
        self.traceback = traceback

    def __str__(self) -> str:
        return f"remote handler raised {self.repr}\n--- remote traceback ---\n{self.traceback}"


class MethodNotFoundError(RemoteError):
    """The remote peer has no handler registered under the called method name."""

    code = ErrorCode.METHOD_NOT_FOUND


class RPCInternalError(RemoteError):
    """The remote framework failed to process the call (undecodable body, unencodable result)."""

    code = ErrorCode.INTERNAL


class OverloadedError(RemoteError):
    """The remote already holds ``max_pending`` requests; this one was refused, not queued.

    Nothing of the call ran, so it is safe to retry later.
    """

    code = ErrorCode.OVERLOADED


class RefusedError(RemoteError):
    """The remote refused the call before its handler ran: one of its interceptors raised it.

    An interceptor raises it (``intercept_request``) to turn a request away, for instance a
    per-method authorization check on ``request.peer_id``; the caller gets it with the
    interceptor's message. Nothing of the call ran.
    """

    code = ErrorCode.REFUSED


class InterceptorError(RPCError):
    """An interceptor of this peer failed on an outgoing call with an unexpected exception.

    The interceptor's exception is the ``__cause__``; it was logged once, at ERROR, to
    ``callosum_like.interceptors``. (An ``RPCError`` an interceptor raises reaches the caller
    as it is: that is a refusal, not a failure.)
    """


class RPCTimeoutError(RPCError, TimeoutError):
    """``invoke(timeout=)`` or ``invoke_timeout`` passed; the remote handler was cancelled.

    It is both an ``RPCError`` and the builtin ``TimeoutError``, so ``except TimeoutError``
    catches it as the contract promises.
    """


class RPCCancelledError(RPCError):
    """The remote peer cancelled the call (its ``execute_timeout`` passed, or it closed)."""


class PeerDisconnectedError(RPCError):
    """The remote peer is gone (heartbeat lost, connection broken, or it closed).

    Calls routed through a relay get it too when the relay loses the peer they were routed
    to, or its own upstream link (the relay reports it with ``ErrorCode.PEER_DISCONNECTED``).
    """

    code = ErrorCode.PEER_DISCONNECTED


class PeerClosedError(RPCError):
    """This peer was closed; calls pending at that moment and calls made after fail with it."""


class MessageTooLargeError(RPCError):
    """A body exceeds ``max_body_size`` (ours, or the remote's as announced in its hello).

    Raised before anything is sent. An oversize message that arrives is dropped and its caller
    gets this error as the reply.
    """

    code = ErrorCode.MESSAGE_TOO_LARGE


class AuthenticationError(RPCError):
    """The security handshake was refused or the keys were wrong (raised on connect)."""


class UnknownPeerError(RPCError):
    """``to=`` names no connected peer, or ``to=None`` is ambiguous on the bound side."""


class SchemaError(RPCError):
    """A call or result does not match the service schema; raised before anything is sent."""


class ProtocolError(Exception):
    """Bytes read off the network that are not a valid message. Internal to the codec."""


_BY_CODE: Final[dict[int, type[RPCError]]] = {
    ErrorCode.INTERNAL: RPCInternalError,
    ErrorCode.METHOD_NOT_FOUND: MethodNotFoundError,
    ErrorCode.MESSAGE_TOO_LARGE: MessageTooLargeError,
    ErrorCode.OVERLOADED: OverloadedError,
    ErrorCode.PEER_DISCONNECTED: PeerDisconnectedError,
    ErrorCode.REFUSED: RefusedError,
}


def error_for_code(code: int, message: str) -> RPCError:
    """Build the exception that a wire error code stands for.

    Args:
        code: The ``ErrorCode`` read off the wire; unknown codes map to ``RPCInternalError``.
        message: The remote's description.

    Returns:
        A new exception instance, ready to be set on the caller's future.
    """
    return _BY_CODE.get(code, RPCInternalError)(message)
