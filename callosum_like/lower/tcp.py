"""The plain asyncio TCP transport: the stream transport over TCP connections.

Theory of operation: everything but listening and dialing is the stream transport's
(``lower.stream_transport``: endpoints, reconnection, options; ``lower.stream``: framing,
batching, backpressure and slow consumers of one connection). This module binds a
``TCPAddress`` with ``loop.create_server`` (port 0 picks a free port; ``local_address`` tells
which) and connects with ``loop.create_connection``, TLS when the transport has an
``ssl.SSLContext``. It registers ``TCPTransport`` for ``TCPAddress``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

from ..addresses import TCPAddress
from .registry import register_transport
from .stream import StreamProtocol
from .stream_transport import Listener, ProtocolFactory, StreamTransport

__all__ = ["TCPTransport"]

log = logging.getLogger(__name__)


class TCPTransport(StreamTransport[TCPAddress]):
    """Plain asyncio TCP, optionally with TLS.

    Args:
        ssl: An ``ssl.SSLContext``: on a bound peer a server context (set
            ``verify_mode = ssl.CERT_REQUIRED`` and load CA certificates to require client
            certificates); on a connecting peer a client context.
        server_hostname: The name to check the server certificate against, when it differs
            from the host connected to.
        reconnect: Whether a connecting endpoint re-establishes a lost connection.
        reconnect_interval: Seconds before the first reconnection attempt (default 0.05);
            the wait doubles after each failed attempt.
        reconnect_max_interval: The longest wait between attempts, in seconds (default 2).
        max_unsent_size: A bound endpoint drops a remote with more bytes than this sent to it
            and not yet read (default: four of the largest frames, at least 64 MiB).
        slow_remote_timeout: A bound endpoint drops a remote with a backlog (more than
            4 MiB unread) that reads none of it for this many seconds (default 10).
        identity_from_certificate: On a bound peer whose ``ssl`` context requires client
            certificates: a callable taking the remote's ``PeerCertificate`` and returning
            the identity it proves (which wins over the identity its Hello claims), or
            ``None`` to refuse it. Default: the certificate's subject common name.

    Raises:
        TypeError, ValueError: An option has the wrong type or value.
    """

    kind: ClassVar[str] = "TCP"
    log: ClassVar[logging.Logger] = log

    def check_address(self, address: object) -> TCPAddress:
        """See ``StreamTransport.check_address``."""
        if not isinstance(address, TCPAddress):
            raise ValueError(f"the TCP transport needs a TCPAddress, not {address!r}")
        return address

    async def listen(self, address: TCPAddress, factory: ProtocolFactory) -> Listener:
        """See ``StreamTransport.listen``."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, address.host, address.port, ssl=self._ssl)
        sockname = server.sockets[0].getsockname()
        return Listener(server, f"{sockname[0]}:{sockname[1]}")

    async def dial(self, address: TCPAddress, factory: ProtocolFactory) -> StreamProtocol:
        """See ``StreamTransport.dial``."""
        _, stream = await asyncio.get_running_loop().create_connection(
            factory,
            address.host,
            address.port,
            ssl=self._ssl,
            server_hostname=self._server_hostname if self._ssl else None,
        )
        return stream


register_transport(TCPAddress, TCPTransport)
