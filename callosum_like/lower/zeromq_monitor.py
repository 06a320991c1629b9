"""One reader for the socket monitors of all the connecting ZeroMQ sockets of a context.

Theory of operation:

* libzmq reports a socket's connection events (TCP/IPC connected, handshake succeeded or
  failed, disconnected) only through a *monitor*: ``zmq_socket_monitor`` makes a PAIR socket
  inside the monitored socket and binds it at an ``inproc://`` endpoint of our choosing, and
  whoever connects there reads the events. A PAIR takes one peer, so reading each monitor
  with a PAIR of our own cost a context socket and a descriptor (its mailbox's eventfd) per
  connecting peer, on top of the monitor's own.
* A ROUTER takes any number of peers, and names the pipe of each connection it makes with
  ``ZMQ_CONNECT_ROUTING_ID``. ``MonitorHub`` is one ROUTER per (context, event loop) that
  connects to every monitor's endpoint under a key of its own: each event arrives as
  ``[key, event, endpoint]`` and goes to the callback registered for that key. The hub
  starts with its first ``watch`` and closes its socket with its last ``unwatch``.
* What a connecting peer costs then: its socket and the monitor libzmq makes for it (two of
  the context's sockets, one mailbox eventfd each) and its TCP/IPC connection: three
  descriptors. libzmq's stable API has no cheaper way to hear that a connecting socket's
  connection dropped: ``ZMQ_ROUTER_NOTIFY`` and ``ZMQ_HICCUP_MSG`` are draft options that
  released builds of libzmq and pyzmq refuse, and ``ZMQ_IMMEDIATE`` (whose pipes come and go
  with the connection) discards what the remote sent last.
* Order: the monitor is set up before the socket connects, so no event of its first
  connection is missed; the hub reads its events on the loop like the sockets' own drivers.
  Connecting the hub to a new monitor makes libzmq process the hub socket's commands, which
  can take the edge of its ``FD`` that would have woken the driver for events already
  there: the driver is told to look again (``SocketDriver.recheck``) after each.

Layering: used by ``lower.zeromq`` only; it imports ``lower.zeromq_driver`` and ``zmq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, Final

import zmq
import zmq.asyncio

from .zeromq_driver import SocketDriver

__all__ = ["MonitorHub", "MonitorCallback"]

log = logging.getLogger(__name__)

#: Called with each event of a watched socket: the two frames libzmq sends
#: (``parse_monitor_message`` reads them). Returns nothing; events are never paused.
MonitorCallback = Callable[[list[bytes]], None]

_ENDPOINT_PREFIX: Final = "inproc://callosum-like-monitor-"


class MonitorHub:
    """The reader of every monitor of one context's sockets on one event loop.

    Get it with ``for_context``, never by calling the class. It owns one ROUTER socket and
    its driver, alive exactly while at least one socket is watched.
    """

    _instances: ClassVar[
        weakref.WeakKeyDictionary[
            zmq.Context[Any], weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MonitorHub]
        ]
    ] = weakref.WeakKeyDictionary()
    _keys: ClassVar[itertools.count[int]] = itertools.count(1)

    def __init__(self, context: zmq.Context[Any]) -> None:
        # A weak reference: an idle hub must not keep its context alive (the registry's keys
        # are weak). While the hub's socket is open, the socket holds the context.
        self._context_ref = weakref.ref(context)
        self._callbacks: dict[bytes, MonitorCallback] = {}
        self._driver: SocketDriver | None = None
        self._sock: zmq.Socket[Any] | None = None

    @classmethod
    def for_context(cls, context: zmq.Context[Any]) -> MonitorHub:
        """The hub of ``context`` for the running event loop (the same one for the same pair).

        Raises:
            RuntimeError: No event loop is running.
        """
        loop = asyncio.get_running_loop()
        per_loop = cls._instances.setdefault(context, weakref.WeakKeyDictionary())
        hub = per_loop.get(loop)
        if hub is None:
            hub = per_loop[loop] = cls(context)
        return hub

    def __len__(self) -> int:
        """Sockets watched now."""
        return len(self._callbacks)

    @property
    def running(self) -> bool:
        """Whether the hub's socket is open (exactly while it watches a socket)."""
        return self._sock is not None

    def watch(self, sock: zmq.Socket[Any], events: int, callback: MonitorCallback) -> bytes:
        """Monitor ``sock`` for ``events`` and hand each one to ``callback``; return its key.

        Call it before ``sock`` connects, so that no event of its first connection is lost.

        Raises:
            zmq.ZMQError: The context has no room for the monitor's socket (``EMFILE``).
        """
        key = b"m%d" % next(self._keys)  # never reused: libzmq asserts on a routing id in use
        endpoint = _ENDPOINT_PREFIX + key.decode()
        hub = self._socket()
        sock.monitor(endpoint, events)
        try:
            hub.setsockopt(zmq.CONNECT_ROUTING_ID, key)
            hub.connect(endpoint)
            assert self._driver is not None
            self._driver.recheck()  # the connect may have taken the edge of an event's wake-up
        except BaseException:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            self._close_if_idle()
            raise
        self._callbacks[key] = callback
        return key

    def unwatch(self, sock: zmq.Socket[Any], key: bytes) -> None:
        """Stop monitoring ``sock`` (watched under ``key``); idempotent. Closes an idle hub."""
        if self._callbacks.pop(key, None) is None:
            return
        if self._sock is not None and self._driver is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disconnect(_ENDPOINT_PREFIX + key.decode())
            self._driver.recheck()
        with contextlib.suppress(zmq.ZMQError):
            sock.disable_monitor()  # closes the monitor's socket inside libzmq
        self._close_if_idle()

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is None:
            context = self._context_ref()
            if context is None:  # pragma: no cover - a watched socket holds its context
                raise RuntimeError("the context is gone")
            sock: zmq.Socket[Any] = zmq.Socket(context, zmq.ROUTER)
            try:
                sock.setsockopt(zmq.LINGER, 0)
                self._driver = SocketDriver(sock, self._on_event, routed=True)
            except BaseException:
                sock.close(linger=0)
                raise
            self._sock = sock
        return self._sock

    def _close_if_idle(self) -> None:
        if self._callbacks or self._driver is None:
            return
        driver, self._driver, self._sock = self._driver, None, None
        driver.close()

    def _on_event(self, parts: list[Any]) -> bool:
        if len(parts) != 3:
            return True  # not a monitor event: nothing else connects to this socket
        callback = self._callbacks.get(parts[0])
        if callback is not None:  # else an event that was on its way when it was unwatched
            try:
                callback(parts[1:])
            except Exception:
                log.exception("a monitor event's callback failed")
        return True  # a handful of events per connection: never worth pausing for
