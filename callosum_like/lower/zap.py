"""ZAP (ZeroMQ Authentication Protocol, RFC 27) for CURVE sockets.

Theory of operation
-------------------
When a CURVE server socket completes a handshake, libzmq asks whoever is bound at
``inproc://zeromq.zap.01`` *on the same context* whether the client may connect. It sends a
request (version ``1.0``, request id, ZAP domain, address, routing id, mechanism, and for
CURVE one frame holding the client's raw 32-byte public key) and waits for a reply (version,
request id, status code, status text, user id, metadata). On ``200`` the connection opens and
every message from it carries the user id as the frame property ``User-Id``; on any other
code the client receives a CURVE ERROR and its monitor reports
``EVENT_HANDSHAKE_FAILED_AUTH`` with that code.

The module has two halves:

* **Sans-IO** (``parse_request``, ``screen_request``, ``reply_for_result``, ``ZAPReply``,
  ``split_envelope``): frames in, value objects or frames out. ``screen_request`` never
  raises: a malformed request is answered ``500``, a mechanism other than CURVE ``400``.
* **The async server** (``ZAPServer``): one ROUTER socket per (context, event loop), bound at
  the ZAP endpoint. A process has one shared context, yet several bound peers may each have
  their own authenticator, so each registration gets a unique internal ZAP domain that the
  peer sets as its socket's ``ZMQ_ZAP_DOMAIN``; requests are routed by that domain. A request
  for an unknown domain is refused (``400``): while the server runs, every CURVE or
  ZAP-domain socket on the context goes through it, and failing closed is the safe default.

Rules the server enforces:

* Each request is answered in its own task (ROUTER, not REP, so a slow authenticator does not
  hold the others up); at most ``MAX_PENDING_REQUESTS`` are decided at once.
* ``check_client`` gets ``CHECK_CLIENT_TIMEOUT`` seconds. Raising, timing out or returning
  something other than an ``AuthResult`` is logged and answered ``500``; it never stops the
  server.
* The server task starts on the first ``register`` and stops on the last ``unregister``,
  which cancels and awaits it, unbinds the endpoint and closes the socket.

Layering: this module is called by ``lower.zeromq`` only; it imports ``auth``, ``errors`` and
``zmq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import zmq
import zmq.asyncio
from zmq.utils import z85

from callosum_like.auth import (
    AbstractClientAuthenticator,
    AbstractServerAuthenticator,
    AuthResult,
    Credential,
)
from callosum_like.errors import ProtocolError

__all__ = [
    # limits and constants
    "ZAP_ENDPOINT",
    "ZAP_VERSION",
    "CHECK_CLIENT_TIMEOUT",
    "MAX_PENDING_REQUESTS",
    # sans-IO
    "ZAPStatus",
    "ZAPRequest",
    "ZAPReply",
    "parse_request",
    "screen_request",
    "reply_for_result",
    "split_envelope",
    "encode_metadata",
    # the async server and socket set-up
    "ZAPServer",
    "configure_curve_server",
    "configure_curve_client",
]

log = logging.getLogger(__name__)

#: Where libzmq looks for the ZAP handler of a context (RFC 27).
ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
#: The only ZAP version there is.
ZAP_VERSION: Final = b"1.0"
#: Seconds ``check_client`` may take. A third of libzmq's default 30 s handshake interval
#: (``ZMQ_HANDSHAKE_IVL``), so the client hears a clear refusal before its handshake expires.
CHECK_CLIENT_TIMEOUT: Final = 10.0
#: Requests decided at once. The network controls how many handshakes arrive; beyond this the
#: server stops reading and the requests wait in libzmq's pipe (each bounded by the
#: handshake interval).
MAX_PENDING_REQUESTS: Final = 64
#: The raw Curve25519 public key in the credentials frame of a CURVE request.
CURVE_KEY_SIZE: Final = 32
#: libzmq refuses ZAP domains over 255 bytes; leave room for our ``#<n>`` suffix.
_MAX_DOMAIN_PREFIX: Final = 200
#: Status texts are informative only; keep one bounded even if an error message is not.
_MAX_STATUS_TEXT: Final = 200


class ZAPStatus(enum.Enum):
    """ZAP status codes (RFC 27)."""

    SUCCESS = b"200"
    TEMPORARY_ERROR = b"300"
    FAILURE = b"400"
    INTERNAL_ERROR = b"500"


@dataclass(frozen=True, slots=True, kw_only=True)
class ZAPRequest:
    """A well-formed ZAP request, without its routing envelope.

    Attributes:
        request_id: Opaque; echoed in the reply.
        domain: The ZAP domain of the socket that handshook (our internal routing key).
        address: The client's address, such as ``"127.0.0.1"``.
        routing_id: The routing id the client announced (often empty).
        mechanism: ``"NULL"``, ``"PLAIN"``, ``"CURVE"`` or ``"GSSAPI"``.
        credentials: The mechanism's credential frames.
    """

    request_id: bytes
    domain: str
    address: str
    routing_id: bytes
    mechanism: str
    credentials: tuple[bytes, ...]

    @property
    def curve_public_key(self) -> bytes:
        """The client's public key in Z85, for a request that ``screen_request`` passed."""
        return z85.encode(self.credentials[0])

    def reply(self, status: ZAPStatus, text: str, user_id: str = "") -> ZAPReply:
        """Build the reply to this request.

        Args:
            status: The status code.
            text: A short human-readable reason.
            user_id: On success, the authenticated user id.

        Returns:
            The reply value object.
        """
        return ZAPReply(request_id=self.request_id, status=status, text=text, user_id=user_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class ZAPReply:
    """A ZAP reply, ready to be turned into frames.

    Attributes:
        request_id: The id of the request answered.
        status: The status code.
        text: A short human-readable reason (truncated to 200 characters on the wire).
        user_id: The authenticated user id; libzmq puts it on each message as ``User-Id``.
        metadata: Extra connection properties (ZMTP metadata); names should start with
            ``X-``.
    """

    request_id: bytes
    status: ZAPStatus
    text: str
    user_id: str = ""
    metadata: Mapping[str, bytes] = field(default_factory=dict)

    def to_frames(self) -> list[bytes]:
        """Encode the reply as the six ZAP reply frames (no routing envelope).

        Returns:
            ``[version, request_id, status, text, user_id, metadata]``.

        Raises:
            ValueError: A metadata name is empty or over 255 bytes.
        """
        return [
            ZAP_VERSION,
            self.request_id,
            self.status.value,
            self.text[:_MAX_STATUS_TEXT].encode("utf-8", errors="replace"),
            self.user_id.encode("utf-8"),
            encode_metadata(self.metadata),
        ]


def encode_metadata(metadata: Mapping[str, bytes]) -> bytes:
    """Encode connection properties in the ZMTP 3.0 metadata format.

    Each property is a 1-byte name length, the name, a 4-byte big-endian value length and
    the value.

    Args:
        metadata: Property names to values.

    Returns:
        The encoded properties (empty for no properties).

    Raises:
        ValueError: A name is empty or longer than 255 bytes once encoded.
    """
    parts: list[bytes] = []
    for name, value in metadata.items():
        raw_name = name.encode("ascii")
        if not 0 < len(raw_name) < 256:
            raise ValueError(f"metadata name {name!r} must be 1 to 255 bytes")
        parts += [bytes([len(raw_name)]), raw_name, len(value).to_bytes(4, "big"), value]
    return b"".join(parts)


def _text_frame(frame: bytes, what: str) -> str:
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"ZAP {what} is not UTF-8") from None


def parse_request(frames: Sequence[bytes]) -> ZAPRequest:
    """Parse the frames of one ZAP request (without its routing envelope).

    Args:
        frames: ``[version, request_id, domain, address, routing_id, mechanism, *credentials]``.

    Returns:
        The request.

    Raises:
        ProtocolError: The frames are not a ZAP 1.0 request.
    """
    if len(frames) < 6:
        raise ProtocolError(f"ZAP request has {len(frames)} frames, at least 6 expected")
    if not all(isinstance(frame, bytes) for frame in frames):
        raise ProtocolError("ZAP request frames must be bytes")
    version, request_id, domain, address, routing_id, mechanism, *credentials = frames
    if version != ZAP_VERSION:
        raise ProtocolError(f"ZAP version {version[:16]!r} is not supported")
    return ZAPRequest(
        request_id=request_id,
        domain=_text_frame(domain, "domain"),
        address=_text_frame(address, "address"),
        routing_id=routing_id,
        mechanism=_text_frame(mechanism, "mechanism"),
        credentials=tuple(credentials),
    )


def screen_request(frames: Sequence[bytes]) -> ZAPRequest | ZAPReply:
    """Sort a request into "ask the authenticator" or "answer right away". Never raises.

    Args:
        frames: The request frames, without the routing envelope.

    Returns:
        The ``ZAPRequest`` when it is a well-formed CURVE request that an authenticator must
        decide; otherwise the ``ZAPReply`` to send: ``500`` for a malformed request, ``400``
        for a mechanism other than CURVE.
    """
    try:
        request = parse_request(frames)
    except ProtocolError as exc:
        request_id = frames[1] if len(frames) > 1 and isinstance(frames[1], bytes) else b""
        text = f"malformed ZAP request: {exc}"
        return ZAPReply(request_id=request_id, status=ZAPStatus.INTERNAL_ERROR, text=text)
    if request.mechanism != "CURVE":
        text = f"mechanism {request.mechanism[:20]!r} is not accepted, only CURVE"
        return request.reply(ZAPStatus.FAILURE, text)
    if len(request.credentials) != 1 or len(request.credentials[0]) != CURVE_KEY_SIZE:
        return request.reply(ZAPStatus.INTERNAL_ERROR, "malformed CURVE credentials")
    return request


def reply_for_result(request: ZAPRequest, result: AuthResult) -> ZAPReply:
    """Turn an authenticator's verdict into the reply.

    Args:
        request: A request that ``screen_request`` passed.
        result: The verdict of ``check_client``.

    Returns:
        ``200`` with the user id (the client's Z85 public key when the verdict has none), or
        ``400``.
    """
    if not result.success:
        return request.reply(ZAPStatus.FAILURE, "client key not allowed")
    user_id = result.user_id or request.curve_public_key.decode("ascii")
    return request.reply(ZAPStatus.SUCCESS, "OK", user_id)


def split_envelope(frames: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split what a ROUTER received into the routing envelope and the request.

    Args:
        frames: Routing ids, an empty delimiter frame, then the request.

    Returns:
        ``(envelope, request)``; the envelope includes the delimiter, ready to prefix a reply.

    Raises:
        ProtocolError: There is no empty delimiter frame.
    """
    try:
        delimiter = list(frames).index(b"")
    except ValueError:
        raise ProtocolError("ZAP message has no envelope delimiter") from None
    return list(frames[: delimiter + 1]), list(frames[delimiter + 1 :])


# --- the async server ----------------------------------------------------------------------


def _asyncio_context(context: zmq.Context[zmq.asyncio.Socket]) -> zmq.asyncio.Context:
    if not isinstance(context, zmq.asyncio.Context):
        raise TypeError(f"context must be a zmq.asyncio.Context, not {type(context).__name__}")
    return context


class ZAPServer:
    """The ZAP handler of one context on one event loop, routing requests by ZAP domain.

    Get it with ``for_context``, never by calling the class. It owns one ROUTER socket bound at
    ``ZAP_ENDPOINT`` and one task, both alive exactly while at least one authenticator is
    registered.
    """

    _instances: ClassVar[
        weakref.WeakKeyDictionary[
            zmq.asyncio.Context, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ZAPServer]
        ]
    ] = weakref.WeakKeyDictionary()
    _domain_numbers: ClassVar[itertools.count[int]] = itertools.count(1)

    def __init__(self, context: zmq.asyncio.Context) -> None:
        # A weak reference: an idle server must not keep its context alive. While running,
        # the socket holds the context.
        self._context_ref = weakref.ref(context)
        self._routes: dict[str, tuple[AbstractServerAuthenticator, str]] = {}
        self._socket: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def for_context(cls, context: zmq.Context[zmq.asyncio.Socket]) -> ZAPServer:
        """Return the ZAP server of ``context`` for the running event loop.

        Args:
            context: The asyncio ZeroMQ context the CURVE sockets belong to.

        Returns:
            The same server for the same (context, loop) pair.

        Raises:
            TypeError: ``context`` is not a ``zmq.asyncio.Context``.
            RuntimeError: No event loop is running.
        """
        context = _asyncio_context(context)
        loop = asyncio.get_running_loop()
        per_loop = cls._instances.setdefault(context, weakref.WeakKeyDictionary())
        server = per_loop.get(loop)
        if server is None:
            server = per_loop[loop] = cls(context)
        return server

    @property
    def running(self) -> bool:
        """Whether the socket is bound and the task is serving."""
        return self._task is not None and not self._task.done()

    async def register(self, authenticator: AbstractServerAuthenticator, domain: str) -> str:
        """Route requests for a new ZAP domain to ``authenticator``; start serving if idle.

        The endpoint is bound before this returns, so a socket configured afterwards is never
        handshaken without us.

        Args:
            authenticator: Decides on clients of the socket that uses the returned domain.
            domain: The authenticator's own domain, passed on in ``Credential.domain``.

        Returns:
            The unique ZAP domain to set as the socket's ``ZMQ_ZAP_DOMAIN``.

        Raises:
            TypeError: ``authenticator`` is not an ``AbstractServerAuthenticator``.
            RuntimeError: Another handler (another event loop, or ``zmq.auth``) is bound at
                the ZAP endpoint of this context.
        """
        if not isinstance(authenticator, AbstractServerAuthenticator):
            raise TypeError("authenticator must be an auth.AbstractServerAuthenticator")
        async with self._lock:
            if self._task is not None and self._task.done():
                await self._stop()  # the loop ended on a fatal socket error; start afresh
            if self._task is None:
                self._start()
            prefix = domain.encode("utf-8")[:_MAX_DOMAIN_PREFIX].decode("utf-8", "ignore")
            zap_domain = f"{prefix}#{next(self._domain_numbers)}"
            self._routes[zap_domain] = (authenticator, domain)
        log.debug("ZAP domain %s registered", zap_domain)
        return zap_domain

    async def unregister(self, zap_domain: str) -> None:
        """Forget ``zap_domain``; stop serving when it was the last one.

        Unknown domains are ignored, so calling it twice is harmless. Stopping cancels and
        awaits the server task; if this call is cancelled meanwhile, the socket is still
        closed.

        Args:
            zap_domain: A domain returned by ``register``.
        """
        async with self._lock:
            if self._routes.pop(zap_domain, None) is None:
                return
            log.debug("ZAP domain %s unregistered", zap_domain)
            if not self._routes:
                await self._stop()

    def _start(self) -> None:
        context = self._context_ref()
        if context is None:  # pragma: no cover - the caller's socket keeps it alive
            raise RuntimeError("the ZeroMQ context of this ZAP server is gone")
        socket = context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            socket.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            socket.close()
            raise RuntimeError(
                f"cannot bind the ZAP handler at {ZAP_ENDPOINT} ({exc}): another handler owns "
                "it on this context (another event loop, or zmq.auth)"
            ) from exc
        self._socket = socket
        self._task = asyncio.create_task(self._serve(socket), name="callosum_like ZAP server")

    async def _stop(self) -> None:
        task, socket = self._task, self._socket
        self._task = self._socket = None
        try:
            if task is not None:
                task.cancel()
                await asyncio.wait({task})
                if not task.cancelled() and task.exception() is not None:
                    log.error("the ZAP server task failed", exc_info=task.exception())
        finally:
            if socket is not None:
                # Unbinding an inproc endpoint is synchronous, so the next start can bind at
                # once; close() alone releases it later, from libzmq's reaper thread.
                with contextlib.suppress(zmq.ZMQError):
                    socket.unbind(ZAP_ENDPOINT)
                socket.close(linger=0)

    async def _serve(self, socket: zmq.asyncio.Socket) -> None:
        pending = asyncio.Semaphore(MAX_PENDING_REQUESTS)
        async with asyncio.TaskGroup() as group:
            while True:
                try:
                    frames = await socket.recv_multipart()
                except zmq.ZMQError:
                    log.exception("the ZAP server cannot read its socket; it stops serving")
                    return
                await pending.acquire()
                group.create_task(self._answer(socket, frames, pending))

    async def _answer(
        self, socket: zmq.asyncio.Socket, frames: list[bytes], pending: asyncio.Semaphore
    ) -> None:
        try:
            reply = await self._reply_frames(frames)
            if reply is not None:
                await socket.send_multipart(reply)
        except zmq.ZMQError as exc:
            log.warning("cannot send a ZAP reply: %s", exc)
        except Exception:
            # A bad request costs that request (the client's handshake times out), never the
            # server: an exception here would end the task group and every pending answer.
            log.exception("the ZAP server failed to answer a request")
        finally:
            pending.release()

    async def _reply_frames(self, frames: list[bytes]) -> list[bytes] | None:
        try:
            envelope, body = split_envelope(frames)
        except ProtocolError as exc:
            log.warning("dropping a ZAP message: %s", exc)
            return None
        decision = screen_request(body)
        if isinstance(decision, ZAPRequest):
            reply = await self._decide(decision)
        else:
            reply = decision
            log.warning("ZAP request refused: %s %s", reply.status.value.decode(), reply.text)
        return [*envelope, *reply.to_frames()]

    async def _decide(self, request: ZAPRequest) -> ZAPReply:
        route = self._routes.get(request.domain)
        if route is None:
            log.warning("ZAP request for unknown domain %r refused", request.domain)
            return request.reply(ZAPStatus.FAILURE, "unknown ZAP domain")
        authenticator, domain = route
        credential = Credential(domain, request.curve_public_key)
        result = await _ask(authenticator, credential)
        if result is None:
            return request.reply(ZAPStatus.INTERNAL_ERROR, "authenticator failed")
        reply = reply_for_result(request, result)
        log.info(
            "CURVE client %s from %s: %s %s",
            credential.public_key.decode("ascii"),
            request.address,
            reply.text,
            reply.user_id,
        )
        return reply


async def _ask(
    authenticator: AbstractServerAuthenticator, credential: Credential
) -> AuthResult | None:
    """Await ``check_client`` with a timeout; ``None`` (logged) when it did not answer."""
    key = credential.public_key.decode("ascii")
    try:
        async with asyncio.timeout(CHECK_CLIENT_TIMEOUT):
            result = await authenticator.check_client(credential)
    except TimeoutError:
        log.error("check_client took over %s s for %s; refusing", CHECK_CLIENT_TIMEOUT, key)
        return None
    except Exception:
        log.exception("check_client raised for %s; refusing", key)
        return None
    if not isinstance(result, AuthResult):
        log.error("check_client returned %r, not an AuthResult; refusing", type(result))
        return None
    return result


# --- socket set-up -------------------------------------------------------------------------


def _set_key(socket: zmq.Socket[Any], option: int, key: bytes, name: str) -> None:
    try:
        socket.setsockopt(option, key)
    except zmq.ZMQError as exc:
        raise ValueError(f"{name} is not a valid CURVE key: {exc}") from exc


async def configure_curve_server(
    socket: zmq.Socket[Any], authenticator: AbstractServerAuthenticator
) -> str:
    """Make ``socket`` a CURVE server whose clients ``authenticator`` admits.

    Call it before ``bind``. It registers the authenticator with the context's ``ZAPServer``;
    the caller must ``unregister`` the returned domain after closing the socket.

    Args:
        socket: An unbound socket of a ``zmq.asyncio.Context``.
        authenticator: Supplies the server identity and decides on clients.

    Returns:
        The ZAP domain set on the socket, to pass to ``ZAPServer.unregister`` later.

    Raises:
        TypeError: ``authenticator`` has the wrong type, or the socket is not asyncio.
        ValueError: The server identity holds an invalid key.
        RuntimeError: See ``ZAPServer.register``.
    """
    if not isinstance(authenticator, AbstractServerAuthenticator):
        raise TypeError("authenticator must be an auth.AbstractServerAuthenticator")
    identity = await authenticator.server_identity()
    socket.setsockopt(zmq.CURVE_SERVER, 1)
    _set_key(socket, zmq.CURVE_SECRETKEY, identity.private_key, "server secret key")
    server = ZAPServer.for_context(socket.context)
    zap_domain = await server.register(authenticator, identity.domain)
    try:
        socket.setsockopt(zmq.ZAP_DOMAIN, zap_domain.encode("utf-8"))
    except BaseException:
        await server.unregister(zap_domain)
        raise
    return zap_domain


async def configure_curve_client(
    socket: zmq.Socket[Any], authenticator: AbstractClientAuthenticator
) -> None:
    """Make ``socket`` a CURVE client with the keys ``authenticator`` supplies.

    Call it before ``connect``.

    Args:
        socket: An unconnected socket.
        authenticator: Supplies the server's public key and the client's keys.

    Raises:
        TypeError: ``authenticator`` has the wrong type.
        ValueError: A key is invalid.
    """
    if not isinstance(authenticator, AbstractClientAuthenticator):
        raise TypeError("authenticator must be an auth.AbstractClientAuthenticator")
    server_key = await authenticator.server_public_key()
    identity = await authenticator.client_identity()
    public_key = await authenticator.client_public_key()
    _set_key(socket, zmq.CURVE_SERVERKEY, server_key, "server public key")
    _set_key(socket, zmq.CURVE_PUBLICKEY, public_key, "client public key")
    _set_key(socket, zmq.CURVE_SECRETKEY, identity.private_key, "client secret key")
