"""The stream transport over Unix domain sockets: same framing as TCP, TLS optional.

Theory of operation: everything but listening and dialing is the stream transport's
(``lower.stream_transport``), so a Unix socket behaves as a TCP connection does: both
directions, backpressure, slow consumers, reconnection of the connected side. This module
binds a ``UnixAddress`` with ``loop.create_unix_server`` and connects with
``loop.create_unix_connection``. It registers ``UnixTransport`` for ``UnixAddress``.

The socket file: binding a path where a socket file is left by a process that is gone (a
crash, a SIGKILL) removes it first: a connection attempt to it is refused, so nobody serves
it. A path another endpoint still serves is not taken over: ``bind`` raises
``OSError(EADDRINUSE)``. Another kind of file at the path is left alone (the bind fails with
the OS's error). Closing the bound endpoint removes the socket file, unless it is no longer
the one we bound (another endpoint bound the path since).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
from typing import ClassVar

from ..addresses import UnixAddress
from .registry import register_transport
from .stream import StreamProtocol
from .stream_transport import Listener, ProtocolFactory, StreamTransport

__all__ = ["UnixTransport"]

log = logging.getLogger(__name__)


class UnixTransport(StreamTransport[UnixAddress]):
    """The stream transport over a Unix domain socket, optionally with TLS.

    It takes the options of ``TCPTransport`` (``reconnect``, ``reconnect_interval``,
    ``reconnect_max_interval``, ``max_unsent_size``, ``slow_remote_timeout``,
    ``identity_from_certificate``), which mean the same here; only these two differ:

    Args:
        ssl: An ``ssl.SSLContext``: on a bound peer a server context, on a connecting peer a
            client context.
        server_hostname: With ``ssl``, on a connecting peer: the name the server's
            certificate is checked against (a socket path is no host name). Required there
            unless the context's ``check_hostname`` is off.

    Raises:
        TypeError, ValueError: An option has the wrong type or value.
    """

    kind: ClassVar[str] = "Unix"
    log: ClassVar[logging.Logger] = log

    def check_address(self, address: object) -> UnixAddress:
        """See ``StreamTransport.check_address``."""
        if not isinstance(address, UnixAddress):
            raise ValueError(f"the Unix socket transport needs a UnixAddress, not {address!r}")
        return address

    async def listen(self, address: UnixAddress, factory: ProtocolFactory) -> Listener:
        """See ``StreamTransport.listen``.

        Raises:
            OSError: The path is served by another endpoint (``EADDRINUSE``), or cannot be
                bound.
        """
        path = address.path
        remove_stale_socket(path)
        server = await asyncio.get_running_loop().create_unix_server(factory, path, ssl=self._ssl)
        bound = os.stat(path)
        ours = (bound.st_dev, bound.st_ino)

        def release() -> None:
            try:
                now = os.stat(path)
            except OSError:
                return  # removed already
            if (now.st_dev, now.st_ino) == ours:
                os.unlink(path)

        return Listener(server, path, release)

    async def dial(self, address: UnixAddress, factory: ProtocolFactory) -> StreamProtocol:
        """See ``StreamTransport.dial``.

        Raises:
            ValueError: TLS is on, the context checks host names, and no
                ``server_hostname`` was given.
        """
        hostname = self._server_hostname
        if self._ssl is not None and hostname is None:
            if self._ssl.check_hostname:
                raise ValueError(
                    "server_hostname is required for TLS over a Unix socket: the name in "
                    "the server's certificate"
                )
            hostname = ""
        _, stream = await asyncio.get_running_loop().create_unix_connection(
            factory,
            address.path,
            ssl=self._ssl,
            server_hostname=hostname if self._ssl else None,
        )
        return stream


def remove_stale_socket(path: str) -> None:
    """Remove the socket file at ``path`` if nobody serves it any more.

    Raises:
        OSError: ``EADDRINUSE``: an endpoint accepts connections at ``path``.
    """
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return  # not a socket: the bind reports what it is
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        refused = probe.connect_ex(path) in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()
    if not refused:
        raise OSError(errno.EADDRINUSE, f"another endpoint serves the Unix socket {path}")
    log.info("removing the stale Unix socket file %s", path)
    os.unlink(path)


register_transport(UnixAddress, UnixTransport)
