"""ZAP (ZeroMQ Authentication Protocol, RFC 27) for CURVE sockets: the server, the set-up.

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

ZAP has two halves:

* **Sans-IO** (``lower.zap_protocol``: ``parse_request``, ``screen_request``,
  ``reply_for_result``, ``ZAPReply``, ``split_envelope``): frames in, value objects or frames
  out. ``screen_request`` never raises: a malformed request is answered ``500``, a mechanism
  other than CURVE ``400``.
* **The async server** (``ZAPServer``, here): one ROUTER socket per (context, event loop),
  bound at the ZAP endpoint. A process has one shared context, yet several bound peers may
  each have their own authenticator, so each registration gets a unique internal ZAP domain
  that the peer sets as its socket's ``ZMQ_ZAP_DOMAIN``; requests are routed by that domain.
  A request for an unknown domain is refused (``400``): while the server runs, every CURVE or
  ZAP-domain socket on the context goes through it, and failing closed is the safe default.
  ``configure_curve_server`` and ``configure_curve_client`` set a socket up for CURVE.

Rules the server enforces:

* Each request is answered in its own task (ROUTER, not REP, so a slow authenticator does not
  hold the others up); at most ``MAX_PENDING_REQUESTS`` are decided at once.
* ``check_client`` gets ``CHECK_CLIENT_TIMEOUT`` seconds. Raising, timing out or returning
  something other than an ``AuthResult`` is logged and answered ``500``; it never stops the
  server.
* The server task starts on the first ``register`` and stops on the last ``unregister``,
  which cancels and awaits it, unbinds the endpoint and closes the socket.

Layering: this module is called by ``lower.zeromq`` only; it imports ``auth``, ``errors``,
``lower.zap_protocol`` and ``zmq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import weakref
from typing import Any, ClassVar, Final

import zmq
import zmq.asyncio

from callosum_like.auth import (
    AbstractClientAuthenticator,
    AbstractServerAuthenticator,
    AuthResult,
    Credential,
)
from callosum_like.errors import ProtocolError

from .zap_protocol import (
    ZAPReply,
    ZAPRequest,
    ZAPStatus,
    reply_for_result,
    screen_request,
    split_envelope,
)

__all__ = [
    # limits and constants
    "ZAP_ENDPOINT",
    "CHECK_CLIENT_TIMEOUT",
    "MAX_PENDING_REQUESTS",
    # the async server and socket set-up
    "ZAPServer",
    "configure_curve_server",
    "configure_curve_client",
]

log = logging.getLogger(__name__)

#: Where libzmq looks for the ZAP handler of a context (RFC 27).
ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
#: Seconds ``check_client`` may take. A third of libzmq's default 30 s handshake interval
#: (``ZMQ_HANDSHAKE_IVL``), so the client hears a clear refusal before its handshake expires.
CHECK_CLIENT_TIMEOUT: Final = 10.0
#: Requests decided at once. The network controls how many handshakes arrive; beyond this the
#: server stops reading and the requests wait in libzmq's pipe (each bounded by the
#: handshake interval).
MAX_PENDING_REQUESTS: Final = 64
#: libzmq refuses ZAP domains over 255 bytes; leave room for our ``#<n>`` suffix.
_MAX_DOMAIN_PREFIX: Final = 200


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
