"""The bound side of the QUIC transport: one UDP socket, many connections, bad input bounded.

Theory of operation: ``QUICServer`` is both the bound ``Connection`` (``lower.quic``'s
``QUICEndpoint``) and the asyncio datagram protocol of its socket. Each datagram is routed by
its destination connection id to its ``QUICLink``; the ids come from aioquic (a link reports
each id it issues or retires). What is not routed is judged here:

* a datagram that does not parse as QUIC, or a short-header one for no connection we know:
  dropped and counted (``dropped``), logged at most a few times a second (``DropLog``);
  a late packet of a connection we closed (its ids are remembered, ``CLOSED_CIDS``) is
  ignored without counting;
* an Initial smaller than ``MIN_INITIAL_SIZE``, or of a QUIC version we do not speak:
  dropped and counted;
* a full-size Initial without a token, with ``retry``: answered with a stateless Retry
  carrying a token bound to the client's address (aioquic's ``QuicRetryTokenHandler``); one
  whose token does not validate: dropped and counted. Only then is a connection created;
* beyond ``max_handshakes`` handshakes in progress: dropped and counted (the client's QUIC
  retries it, as for a lost packet). A handshake not complete within ``HANDSHAKE_TIMEOUT`` is
  aborted.

Once a link's handshake is complete, ``identify`` decides whether it is admitted, and under
which identity (``lower.quic.server_identity``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final, cast

import aioquic.buffer
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_retry,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler

from .quic import CID_LENGTH, HANDSHAKE_TIMEOUT, MIN_INITIAL_SIZE, QUICEndpoint, server_identity
from .quic_connection import ServerConnection
from .quic_link import QUICLink

if TYPE_CHECKING:
    from aioquic.quic.configuration import QuicConfiguration

    from ..addresses import QUICAddress
    from .certificates import IdentityHook

__all__ = ["QUICServer"]

log = logging.getLogger(__name__)

#: Connection ids of closed connections remembered (at most this many, for this many
#: seconds: a few times any loss-recovery period), so that their late packets (an ACK, a
#: CONNECTION_CLOSE in flight) are ignored rather than counted as garbage.
CLOSED_CIDS: Final = 4096
CLOSED_CID_SECONDS: Final = 2.0
#: The length of the connection ids we hand out in a Retry.
RETRY_CID_LENGTH: Final = CID_LENGTH


class QUICServer(QUICEndpoint, asyncio.DatagramProtocol):
    """A bound QUIC endpoint; see the module doc.

    Args:
        configuration: The server's aioquic configuration (certificate loaded).
        max_frame_size: The largest frame accepted.
        cafile: CA certificates that must sign each client's certificate, or ``None``.
        identity_hook: Names a client by its certificate.
        retry: Whether new clients prove their address with a Retry first.
        max_handshakes: Handshakes in progress at once.
        max_unsent_size: Unacknowledged bytes past which a remote is dropped.
        receive_window: Bytes a remote may send beyond what the Peer has taken.
    """

    def __init__(
        self,
        configuration: QuicConfiguration,
        *,
        max_frame_size: int,
        cafile: str | None,
        identity_hook: IdentityHook,
        retry: bool,
        max_handshakes: int,
        max_unsent_size: int,
        receive_window: int,
    ) -> None:
        super().__init__(bound=True, max_frame_size=max_frame_size)
        self._receive_window = receive_window
        self._config = configuration
        self._cafile = cafile
        self._hook = identity_hook
        self._retry = QuicRetryTokenHandler() if retry else None
        self._max_handshakes = max_handshakes
        self._max_unsent_size = max_unsent_size
        self._routes: dict[bytes, QUICLink] = {}
        #: Ids of recently closed connections, and until when they are remembered.
        self._closed: OrderedDict[bytes, float] = OrderedDict()
        self._purger: asyncio.TimerHandle | None = None
        self._handshaking: dict[QUICLink, asyncio.TimerHandle] = {}
        self._known: set[QUICLink] = set()
        self._numbers = itertools.count(1)
        self._socket: asyncio.DatagramTransport | None = None

    @property
    def handshakes(self) -> int:
        """Handshakes in progress (connections that hold state and are not yet admitted)."""
        return len(self._handshaking)

    async def start(self, address: QUICAddress) -> None:
        """Bind the UDP socket."""
        loop = asyncio.get_running_loop()
        sock, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(address.host, address.port)
        )
        self._socket = sock
        name = sock.get_extra_info("sockname")
        self._address = f"{name[0]}:{name[1]}"

    # -- datagrams --------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Route one datagram to its connection, or judge it (see the module doc)."""
        try:
            header = pull_quic_header(
                aioquic.buffer.Buffer(data=data),  # type: ignore[attr-defined]
                host_cid_length=CID_LENGTH,
            )
        except ValueError:
            self._drop(f"a datagram from {addr[0]} that is not QUIC")
            return
        link = self._routes.get(header.destination_cid)
        if link is None:
            if header.destination_cid in self._closed:
                return  # a late packet of a connection we closed: not garbage
            link = self._new(data, addr, header)
            if link is None:
                return
        link.datagram_received(data, addr)

    def _new(self, data: bytes, addr: Any, header: Any) -> QUICLink | None:
        if header.packet_type != QuicPacketType.INITIAL:
            self._drop(f"a QUIC packet from {addr[0]} for no connection")
            return None
        if len(data) < MIN_INITIAL_SIZE or header.version not in self._config.supported_versions:
            self._drop(f"an Initial from {addr[0]} too small, or of another QUIC version")
            return None
        if self.closing:
            return None
        if len(self._handshaking) >= self._max_handshakes:
            self._drop(f"an Initial from {addr[0]}: {self._max_handshakes} handshakes under way")
            return None
        original, retry_cid = header.destination_cid, None
        if self._retry is not None:
            if not header.token:
                self._send_retry(addr, header)
                return None
            try:
                original = self._retry.validate_token(
                    address=addr,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=asyncio.get_running_loop().time(),
                )
            except ValueError:
                self._drop(f"an Initial from {addr[0]} with an invalid retry token")
                return None
            retry_cid = header.destination_cid
        return self._start_link(header, original, retry_cid)

    def _send_retry(self, addr: Any, header: Any) -> None:
        assert self._retry is not None
        assert self._socket is not None
        source_cid = os.urandom(RETRY_CID_LENGTH)
        token = self._retry.create_token(
            address=addr,
            original_destination_connection_id=header.destination_cid,
            retry_source_connection_id=source_cid,
            now=asyncio.get_running_loop().time(),
        )
        self._socket.sendto(
            encode_quic_retry(
                version=header.version,
                source_cid=source_cid,
                destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                retry_token=token,
            ),
            addr,
        )

    def _start_link(self, header: Any, original: bytes, retry_cid: bytes | None) -> QUICLink:
        quic = ServerConnection(
            request_certificate=self._cafile is not None,
            configuration=self._config,
            original_destination_connection_id=original,
            retry_source_connection_id=retry_cid,
            receive_window=self._receive_window,
        )
        link = QUICLink(
            quic,
            owner=self,
            key=next(self._numbers).to_bytes(8, "big"),
            waits=False,
            max_unsent_size=self._max_unsent_size,
            on_connection_id=self._route,
        )
        link.connection_made(cast(asyncio.DatagramTransport, self._socket))
        self._routes[header.destination_cid] = link
        self._routes[quic.host_cid] = link
        self._known.add(link)
        link.closed.add_done_callback(lambda _: self.forget(link))
        loop = asyncio.get_running_loop()
        self._handshaking[link] = loop.call_later(HANDSHAKE_TIMEOUT, self._too_slow, link)
        return link

    def _route(self, cid: bytes, link: QUICLink | None) -> None:
        if link is None:
            self._routes.pop(cid, None)
        else:
            self._routes[cid] = link

    def _too_slow(self, link: QUICLink) -> None:
        if self._handshaking.pop(link, None) is not None:
            self._drop("a QUIC handshake that did not complete in time")
            self.forget(link)
            link.abort()

    def _drop(self, why: str) -> None:
        self.dropped += 1
        self.drop_log.dropped(why)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error for a datagram we sent: QUIC's timers handle the loss."""
        log.debug("QUIC socket error: %s", exc)

    # -- links ------------------------------------------------------------------------------

    def identify(self, link: QUICLink) -> tuple[bool, str | None]:
        """A handshake completed: admit the client (under its certificate's identity) or not."""
        timer = self._handshaking.pop(link, None)
        if timer is not None:
            timer.cancel()
        certificate, chain = link.peer_certificate()
        ok, user_id = server_identity(link, self._cafile, self._hook, certificate, chain)
        if ok and not self.closing:  # (closing: aclose shuts it with the others)
            self.links[link.key] = link
        return ok, user_id

    def link_lost(self, link: QUICLink, reason: str, auth_failed: bool) -> None:
        """A connection terminated: forget it, and report it if it was admitted."""
        self.forget(link)
        super().link_lost(link, reason, auth_failed=False)

    def forget(self, link: QUICLink) -> None:
        """Stop routing datagrams to ``link``."""
        timer = self._handshaking.pop(link, None)
        if timer is not None:
            timer.cancel()
        self._known.discard(link)
        loop = asyncio.get_running_loop()
        until = loop.time() + CLOSED_CID_SECONDS
        for cid in [c for c, value in self._routes.items() if value is link]:
            del self._routes[cid]
            self._closed[cid] = until
        while len(self._closed) > CLOSED_CIDS:
            self._closed.popitem(last=False)
        if self._closed and self._purger is None and not self.closing:
            self._purger = loop.call_later(CLOSED_CID_SECONDS, self._purge)

    def _purge(self) -> None:
        """Forget the ids of connections closed ``CLOSED_CID_SECONDS`` ago or more."""
        self._purger = None
        now = asyncio.get_running_loop().time()
        closed = self._closed
        while closed and next(iter(closed.values())) <= now:
            closed.popitem(last=False)
        if closed and not self.closing:
            self._purger = asyncio.get_running_loop().call_later(CLOSED_CID_SECONDS, self._purge)

    async def aclose(self) -> None:
        """See ``Connection.aclose``."""
        if self.closing:
            return
        self.closing = True
        try:
            await self.close_links(list(self._known))
        finally:
            if self._purger is not None:
                self._purger.cancel()
                self._purger = None
            self._closed.clear()
            if self._socket is not None:
                self._socket.close()
                with contextlib.suppress(Exception):
                    await asyncio.sleep(0)  # the socket closes in the next loop step
