"""The QUIC transport: TLS 1.3 always, a stream per lane, connection migration.

Theory of operation: ``QUICTransport`` binds a UDP socket and serves any number of QUIC
connections on it (``_QUICServer``), or connects one (``_QUICClient``). Each connection is a
``QUICLink`` (``lower.quic_link``: streams, lanes, barriers, flow, closing); this module owns
the sockets, the routing of datagrams to connections, the handshakes and reconnection.

Bound side: datagrams are routed by their destination connection id. A datagram that is not
QUIC, or belongs to no connection, is dropped and counted (``dropped``, logged once per
burst). A new connection starts only from an Initial of full size (1200 bytes, so that we
never answer more bytes than we received); with ``retry`` (the default) its first Initial is
answered with a stateless Retry, so that state is only kept for a client that proved it
receives at its address (a flood from spoofed sources costs one small reply each, no state).
At most ``max_handshakes`` handshakes are in progress at once (more Initials are dropped and
counted), and each must complete within ``HANDSHAKE_TIMEOUT``.

Identity: with a ``cafile``, the bound side asks each client for a certificate and verifies
it against that CA once the handshake is done; the identity hook (``lower.certificates``)
names the remote (``Connected.user_id``), or refuses it. A refused client gets nothing: its
connection is closed before any of its messages are delivered, and its side reports
``AuthFailed``.

Connected side: one UDP socket per connection, bound to the wildcard address, so that when
the host's address changes the kernel sends from the new one and QUIC migrates the
connection (the server validates the new path); nothing here reconnects for that. A
connection that ends otherwise (idle timeout, the server's close) is reported
``Disconnected`` and re-established with backoff, as the TCP transport does.

Heartbeats: QUIC's ``idle_timeout`` closes a connection that hears nothing for that long; the
Peer's own pings keep a live link busy, so set ``idle_timeout`` above the Peer's
``heartbeat_timeout`` (the default, 30 s, suits the Peer's defaults). It is not derived from
them: ``Transport.bind``/``connect`` do not carry the Peer's heartbeat settings
(docs/quic.md, "Heartbeats and the idle timeout").

Memory: a Peer that stops reading holds at most ``receive_window`` bytes of unread messages
per connection (``lower.quic_connection.ReceiveCredit``), beside one unfinished message per
stream.

aioquic is optional: ``QUICTransport()`` raises ``ImportError`` naming the ``quic`` extra
when it is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import random
import socket
import ssl
from typing import TYPE_CHECKING, Any, Final

from ..addresses import QUICAddress
from ..errors import PeerClosedError, PeerDisconnectedError
from ..stats import DropLog
from .base import (
    CONNECTED_KEY,
    AuthFailed,
    Connection,
    Disconnected,
    EventQueue,
    Frame,
    Received,
    Transport,
    TransportEvent,
    check_reconnect_intervals,
)
from .certificates import IdentityHook, check_identity_hook, identify
from .registry import register_transport

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aioquic.quic.configuration import QuicConfiguration

    from ..addresses import Address
    from ..auth import AbstractClientAuthenticator, AbstractServerAuthenticator
    from .quic_link import QUICLink

__all__ = ["QUICTransport", "ALPN", "HANDSHAKE_TIMEOUT", "DEFAULT_MAX_HANDSHAKES"]

log = logging.getLogger(__name__)

#: The ALPN protocol both sides announce: a QUIC server of another protocol refuses us.
ALPN: Final = "callosum-like/1"
#: Seconds a handshake may take (a client that stops half-way holds state until then).
HANDSHAKE_TIMEOUT: Final = 10.0
#: Handshakes in progress at once on a bound endpoint; more new connections are dropped.
DEFAULT_MAX_HANDSHAKES: Final = 256
#: Seconds of silence after which QUIC closes a connection (see the module doc).
DEFAULT_IDLE_TIMEOUT: Final = 30.0
DEFAULT_RECONNECT_INTERVAL: Final = 0.05
DEFAULT_RECONNECT_MAX_INTERVAL: Final = 2.0
#: The least default ``max_unsent_size`` (as TCP's): four of the largest frames, or this.
MIN_UNSENT_SIZE: Final = 64 * 1024 * 1024
#: The largest UDP payload we send by default: within a 1500-byte MTU with room for a
#: tunnel's headers (aioquic's own default, 1200, is the minimum every path must carry).
DEFAULT_MAX_DATAGRAM_SIZE: Final = 1350
#: The smallest datagram that may open a connection (RFC 9000 section 14.1).
MIN_INITIAL_SIZE: Final = 1200
#: Connection ids we issue are this long (aioquic's default).
CID_LENGTH: Final = 8
#: The smallest ``receive_window``.
MIN_RECEIVE_WINDOW: Final = 64 * 1024
#: Bytes a remote may send beyond what the Peer has taken (``receive_window``'s default).
DEFAULT_RECEIVE_WINDOW: Final = 8 * 1024 * 1024


def _need_aioquic() -> None:
    if importlib.util.find_spec("aioquic") is None:
        raise ImportError("the QUIC transport needs aioquic: pip install 'callosum_like[quic]'")


class QUICTransport(Transport):
    """QUIC (RFC 9000) over UDP, on aioquic: TLS 1.3, independent streams, migration.

    Args:
        certfile: A PEM certificate (chain). Required to bind; on a connecting peer, a
            client certificate (with ``keyfile``) proving its identity to a bound peer that
            has a ``cafile``.
        keyfile: The PEM private key of ``certfile``.
        cafile: PEM CA certificates. A connecting peer verifies the server's certificate
            against them (default: the system's trust store); a bound peer with a
            ``cafile`` requires each client to present a certificate they signed, and
            names the client by it (see ``identity_from_certificate``).
        server_hostname: The name to check the server's certificate against, when it
            differs from the host connected to.
        identity_from_certificate: On a bound peer with a ``cafile``: a callable taking the
            client's ``PeerCertificate`` and returning its identity (which wins over the
            identity its Hello claims), or ``None`` to refuse it. Default: the subject CN.
        reconnect: Whether a connecting peer re-establishes a lost connection.
        reconnect_interval: Seconds before the first reconnection attempt (default 0.05);
            the wait doubles after each failed attempt.
        reconnect_max_interval: The longest wait between attempts, in seconds (default 2).
        idle_timeout: Seconds of silence after which QUIC closes a connection (default 30).
        retry: Whether a bound peer validates a new client's address with a Retry first.
        max_handshakes: Handshakes a bound peer runs at once (default 256).
        max_unsent_size: A bound peer drops a remote with more unacknowledged bytes than
            this (default: four of the largest frames, at least 64 MiB).
        max_datagram_size: The largest UDP payload sent (default 1350, which fits the
            usual 1500-byte paths with room for tunnels; 1200 fits every QUIC path; larger
            values move bulk faster where the path allows).
        receive_window: Bytes a remote may send beyond what this Peer has taken from the
            connection (default 8 MiB, at least 64 KiB): QUIC's connection-level flow
            control grants credit only as the Peer consumes, so a Peer that stops reading
            holds at most this much of received messages per connection (plus, as on
            every transport, one unfinished message per stream, bounded by
            ``max_body_size``). Raise it for bulk over paths whose bandwidth-delay
            product is larger.

    Raises:
        ImportError: aioquic is not installed.
        TypeError, ValueError: An option has the wrong type or value (``keyfile`` without
            ``certfile``, a file that does not exist).
    """

    def __init__(
        self,
        *,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        cafile: str | os.PathLike[str] | None = None,
        server_hostname: str | None = None,
        identity_from_certificate: IdentityHook | None = None,
        reconnect: bool = True,
        reconnect_interval: float = DEFAULT_RECONNECT_INTERVAL,
        reconnect_max_interval: float = DEFAULT_RECONNECT_MAX_INTERVAL,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        retry: bool = True,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        max_unsent_size: int | None = None,
        max_datagram_size: int = DEFAULT_MAX_DATAGRAM_SIZE,
        receive_window: int = DEFAULT_RECEIVE_WINDOW,
    ) -> None:
        _need_aioquic()
        self._certfile = _check_file(certfile, "certfile")
        self._keyfile = _check_file(keyfile, "keyfile")
        self._cafile = _check_file(cafile, "cafile")
        if (self._certfile is None) != (self._keyfile is None):
            raise ValueError("certfile and keyfile go together: give both or neither")
        if server_hostname is not None and not isinstance(server_hostname, str):
            raise TypeError("server_hostname must be a str or None")
        self._server_hostname = server_hostname
        self._identity_hook = check_identity_hook(identity_from_certificate)
        self._reconnect = bool(reconnect)
        self._intervals = check_reconnect_intervals(reconnect_interval, reconnect_max_interval)
        self._idle_timeout = _positive(idle_timeout, "idle_timeout")
        self._retry = bool(retry)
        if not isinstance(max_handshakes, int) or isinstance(max_handshakes, bool):
            raise TypeError("max_handshakes must be an int")
        if max_handshakes < 1:
            raise ValueError(f"max_handshakes must be positive, got {max_handshakes}")
        self._max_handshakes = max_handshakes
        if max_unsent_size is not None and (
            not isinstance(max_unsent_size, int) or isinstance(max_unsent_size, bool)
        ):
            raise TypeError("max_unsent_size must be an int or None")
        self._max_unsent_size = max_unsent_size
        if not isinstance(max_datagram_size, int) or isinstance(max_datagram_size, bool):
            raise TypeError("max_datagram_size must be an int")
        if not MIN_INITIAL_SIZE <= max_datagram_size <= 65527:
            raise ValueError(f"max_datagram_size must be in 1200..65527, got {max_datagram_size}")
        self._max_datagram_size = max_datagram_size
        if not isinstance(receive_window, int) or isinstance(receive_window, bool):
            raise TypeError("receive_window must be an int")
        if receive_window < MIN_RECEIVE_WINDOW:
            raise ValueError(
                f"receive_window must be at least {MIN_RECEIVE_WINDOW}, got {receive_window}"
            )
        self.receive_window = receive_window

    def _configuration(self, *, client: bool, max_frame_size: int) -> QuicConfiguration:
        from aioquic.quic.configuration import QuicConfiguration

        # a stream must take a whole message: the Peer cannot consume half of one; the
        # connection's credit follows the Peer's consumption (quic_link.ReceiveCredit)
        stream_window = max(4 * 1024 * 1024, 2 * max_frame_size)
        config = QuicConfiguration(
            is_client=client,
            alpn_protocols=[ALPN],
            idle_timeout=self._idle_timeout,
            max_data=self.receive_window,
            max_stream_data=stream_window,
            connection_id_length=CID_LENGTH,
            server_name=self._server_hostname,
            max_datagram_size=self._max_datagram_size,
        )
        if self._certfile is not None:
            config.load_cert_chain(self._certfile, self._keyfile)
        if client and self._cafile is not None:
            config.load_verify_locations(cafile=self._cafile)
        return config

    @staticmethod
    def _checked(address: object, authenticator: object) -> QUICAddress:
        if not isinstance(address, QUICAddress):
            raise ValueError(f"the QUIC transport needs a QUICAddress, not {address!r}")
        if authenticator is not None:
            raise ValueError(
                "authenticator is CURVE, which only the ZeroMQ transport speaks; QUIC "
                "authenticates with certificates: QUICTransport(certfile=..., cafile=...)"
            )
        return address

    async def bind(
        self,
        address: Address,
        *,
        max_frame_size: int,
        authenticator: AbstractServerAuthenticator | None = None,
    ) -> Connection:
        """See ``Transport.bind``.

        Raises:
            ValueError: No ``certfile``/``keyfile`` (a QUIC server needs a certificate).
            OSError: The address cannot be bound.
        """
        addr = self._checked(address, authenticator)
        if self._certfile is None:
            raise ValueError(
                "a bound QUICTransport needs certfile= and keyfile= (TLS is always on)"
            )
        from .quic_server import QUICServer

        config = self._configuration(client=False, max_frame_size=max_frame_size)
        server = QUICServer(
            config,
            max_frame_size=max_frame_size,
            cafile=self._cafile,
            identity_hook=self._identity_hook,
            retry=self._retry,
            max_handshakes=self._max_handshakes,
            max_unsent_size=self._max_unsent_size or max(MIN_UNSENT_SIZE, 4 * max_frame_size),
            receive_window=self.receive_window,
        )
        await server.start(addr)
        return server

    async def connect(
        self,
        address: Address,
        *,
        max_frame_size: int,
        authenticator: AbstractClientAuthenticator | None = None,
    ) -> Connection:
        """See ``Transport.connect``.

        Raises:
            PeerDisconnectedError: The first connection cannot be made.
            ssl.SSLCertVerificationError: The server's certificate failed verification.
        """
        addr = self._checked(address, authenticator)
        client = _QUICClient(self, addr, max_frame_size)
        await client.start()
        return client


def _check_file(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{name} must be a file path, not {type(value).__name__}")
    path = os.fspath(value)
    if not os.path.isfile(path):
        raise ValueError(f"{name}: no such file {path!r}")
    return str(path)


def _positive(value: object, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return float(value)


class QUICEndpoint(Connection):
    """What both QUIC endpoints share: their links by key, events, and the four verbs."""

    def __init__(self, *, bound: bool, max_frame_size: int) -> None:
        self.bound = bound
        self.max_frame_size = max_frame_size
        self.events = EventQueue()
        self.drop_log = DropLog(log)
        self.dropped = 0
        self.links: dict[bytes, QUICLink] = {}
        self.closing = False
        self._address = ""

    @property
    def local_address(self) -> str:
        """See ``Connection.local_address``."""
        return self._address

    def identify(self, link: QUICLink) -> tuple[bool, str | None]:
        """A connected endpoint proves nothing about its server beyond TLS: admitted."""
        self.links[link.key] = link
        return True, None

    def link_lost(self, link: QUICLink, reason: str, auth_failed: bool) -> None:
        """A link terminated: report it (its refused credentials first), unless forgotten."""
        if auth_failed:
            self.events.offer(AuthFailed(f"the QUIC server refused us: {reason}"))
        if self.links.get(link.key) is link:
            del self.links[link.key]
            self.events.offer(Disconnected(link.key, reason, slow=link.slow))

    async def receive(self) -> TransportEvent:
        """See ``Connection.receive``: what is taken is credit for its link's remote again."""
        event = await self.events.get()
        if isinstance(event, Received):
            link = self.links.get(event.peer)
            if link is not None:
                link.taken(event)
        return event

    async def send(self, frames: Sequence[Frame], *, to: bytes | None = None) -> None:
        """See ``Connection.send``."""
        if self.closing:
            raise PeerClosedError("connection closed")
        link = self.links.get(to if self.bound else CONNECTED_KEY)  # type: ignore[arg-type]
        if link is None:
            raise PeerDisconnectedError(f"no connected remote with key {to!r}")
        if link.queue(frames):
            await link.drain()

    async def disconnect(self, peer: bytes) -> None:
        """See ``Connection.disconnect``."""
        link = self.links.pop(peer, None)
        if link is not None:  # what we sent it (a Goodbye) still reaches it, then it closes
            link.shut_soon()

    def forget(self, link: QUICLink) -> None:
        """Stop routing anything to ``link`` (a client closes its socket)."""

    async def close_links(self, links: list[QUICLink]) -> None:
        """Shut ``links`` (their last messages delivered), then close the event queue.

        Cancellation: the links are aborted at once, and still forgotten.
        """
        try:
            await asyncio.shield(asyncio.gather(*(link.shut() for link in links)))
        except asyncio.CancelledError:
            for link in links:
                link.abort()
        finally:
            for link in links:
                self.forget(link)
            self.links.clear()
            self.events.close()


class _QUICClient(QUICEndpoint):
    """The connected side: one connection at a time, on its own UDP socket, reconnected."""

    def __init__(self, transport: QUICTransport, address: QUICAddress, max_frame_size: int):
        super().__init__(bound=False, max_frame_size=max_frame_size)
        self._transport = transport
        self._target = address
        self._address = str(address)
        self._life: asyncio.Task[None] | None = None
        self._sockets: dict[QUICLink, asyncio.DatagramTransport] = {}
        self.reconnects = transport._reconnect  # noqa: SLF001 - our own transport's option

    async def _open(self) -> QUICLink:
        from .quic_connection import CreditedConnection
        from .quic_link import QUICLink

        loop = asyncio.get_running_loop()
        host, port = self._target.host, self._target.port
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, *_, remote = infos[0]
        config = self._transport._configuration(  # noqa: SLF001 - our own transport
            client=True, max_frame_size=self.max_frame_size
        )
        if config.server_name is None:
            config.server_name = host
        quic = CreditedConnection(
            configuration=config,
            receive_window=self._transport.receive_window,
        )
        link = QUICLink(quic, owner=self, key=CONNECTED_KEY, waits=True, max_unsent_size=0)
        wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
        sock, _ = await loop.create_datagram_endpoint(lambda: link, local_addr=(wildcard, 0))
        self._sockets[link] = sock
        try:
            link.connect(remote)
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await link.wait_connected()
        except (ConnectionError, TimeoutError) as exc:
            link.abort()
            self._close_socket(link)
            why = link.ended or f"no answer within {HANDSHAKE_TIMEOUT} s"
            if link.tls_failed:
                raise ssl.SSLCertVerificationError(
                    f"QUIC handshake with {self._address}: {why}"
                ) from exc
            raise OSError(f"QUIC handshake with {self._address} failed: {why}") from exc
        except BaseException:
            link.abort()
            self._close_socket(link)
            raise
        return link

    def forget(self, link: QUICLink) -> None:
        """Close ``link``'s socket."""
        self._close_socket(link)

    async def disconnect(self, peer: bytes) -> None:
        """See ``Connection.disconnect``: the remote is silent or said Goodbye; reconnect now."""
        link = self.links.pop(peer, None)
        if link is not None:
            link.abort()

    def _close_socket(self, link: QUICLink) -> None:
        sock = self._sockets.pop(link, None)
        if sock is not None:
            sock.close()

    async def start(self) -> None:
        """Make the first connection; fail fast if it cannot be made."""
        try:
            link = await self._open()
        except ssl.SSLError:
            raise
        except OSError as exc:
            raise PeerDisconnectedError(f"cannot connect to {self._address}: {exc}") from exc
        self._life = asyncio.create_task(self._live(link))

    async def _live(self, link: QUICLink) -> None:
        while True:
            await link.closed
            self._close_socket(link)
            if self.closing or not self.reconnects:
                return
            link = await self._reconnect()

    async def _reconnect(self) -> QUICLink:
        delay, max_delay = self._transport._intervals  # noqa: SLF001 - our own transport
        attempts = 0
        log.info("QUIC connection to %s lost; reconnecting", self._address)
        while True:
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            attempts += 1
            try:
                link = await self._open()
            except OSError as exc:  # ssl.SSLError is an OSError
                log.debug("reconnection attempt %d to %s failed: %s", attempts, self._address, exc)
                delay = min(delay * 2, max_delay)
                continue
            log.info("reconnected to %s after %d attempt(s)", self._address, attempts)
            return link

    async def aclose(self) -> None:
        """See ``Connection.aclose``."""
        if self.closing:
            return
        self.closing = True
        life, self._life = self._life, None
        if life is not None:
            life.cancel()
        try:
            await self.close_links(list(self._sockets))
        finally:
            if life is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(life, return_exceptions=True)


def server_identity(
    link: QUICLink, cafile: str | None, hook: IdentityHook, certificate: Any, chain: list[Any]
) -> tuple[bool, str | None]:
    """Whether a bound endpoint admits ``link``'s client, and the identity it proves."""
    if cafile is None:
        return True, None
    if certificate is None:
        log.warning("refused a QUIC client without a certificate (a cafile is set)")
        return False, None
    from aioquic import tls
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        tls.verify_certificate(certificate=certificate, chain=chain, cafile=cafile)
    except tls.Alert as exc:
        log.warning("refused a QUIC client: its certificate does not verify (%s)", exc)
        return False, None
    identity = identify(hook, certificate.public_bytes(Encoding.DER))
    if identity is None:
        log.warning("refused a QUIC client: its certificate proves no identity")
        return False, None
    return True, identity


register_transport(QUICAddress, QUICTransport)
