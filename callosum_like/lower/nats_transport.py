"""The NATS transport: a Peer's messages on subjects of a NATS system (docs/nats.md).

Theory of operation: ``NATSTransport`` holds options only. ``bind``/``connect`` each open one
NATS client (nats-py) to the address's servers and hand it to a connection of
``lower.nats_connection``, which owns it from then on; the subject and payload layouts are
``lower.nats_envelope``'s.

* nats-py is optional: this module imports it only when a connection is made, so that
  ``import callosum_like`` works without it; ``NATSTransport()`` raises ``ImportError`` with
  the extra to install when it is missing.
* Identity: the connecting side's keys start with its identity token
  (``NATSTransport(identity=...)``, else a random one). With ``trust_subjects=True`` the
  bound side reports that token as the remote's proven identity (``Connected.user_id``), which
  the Peer puts above the identity a Hello claims. That is only sound when the server's
  permissions let each NATS user publish only on its own token
  (``lower.nats_permissions.authorization_block``); without them an identity is a claim, as
  over ZeroMQ without CURVE.
* Reconnection: nats-py reconnects to the servers by itself (forever, waiting
  ``reconnect_max_interval`` between rounds) and re-subscribes; the connections report the
  links lost meanwhile and the connecting side knocks again.
* Large messages: a message above the server's ``max_payload`` is split by the transport
  itself into pieces of ``max_payload`` (``lower.nats_envelope``), so any ``chunk_size`` and
  ``max_body_size`` of the Peer work with any server; the pieces of one message are
  reassembled up to ``max_frame_size`` and no further.
* Memory: each subscription holds at most ``max_pending_messages`` messages and
  ``max_pending_size`` bytes that we have not taken yet; nats-py drops beyond them (a slow
  consumer, counted in ``dropped``), and nats-py's outgoing buffer holds at most
  ``PENDING_SIZE`` bytes while the server connection is down (a send beyond it fails with
  ``PeerDisconnectedError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import ssl
from typing import TYPE_CHECKING, Any, Final

from ..addresses import Address, NATSAddress, is_nats_token
from ..errors import AuthenticationError
from .base import Connection, Transport, check_reconnect_intervals
from .nats_connection import BoundNATS, ConnectingNATS, NATSConnection
from .nats_envelope import Subjects
from .registry import register_transport

if TYPE_CHECKING:
    from nats.aio.client import Client

    from ..auth import AbstractClientAuthenticator, AbstractServerAuthenticator

__all__ = [
    "NATSTransport",
    "DEFAULT_MAX_PENDING_MESSAGES",
    "DEFAULT_MAX_PENDING_SIZE",
    "PENDING_SIZE",
    "DEFAULT_CONNECT_TIMEOUT",
]

#: Messages a subscription may hold that we have not taken yet (nats-py's default is
#: 512 Ki): enough for a burst from many remotes, few enough to find a slow consumer.
DEFAULT_MAX_PENDING_MESSAGES: Final = 65_536
#: Bytes a subscription may hold that we have not taken yet (nats-py's default is 128 MiB):
#: a few Peer transfer windows of large chunks.
DEFAULT_MAX_PENDING_SIZE: Final = 64 * 2**20
#: Bytes nats-py buffers for the server while it writes, and while it reconnects.
PENDING_SIZE: Final = 8 * 2**20
#: Seconds to reach one of the servers when a connection is made.
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
#: As for the other transports: the first retry soon, then doubling up to two seconds.
DEFAULT_RECONNECT_INTERVAL: Final = 0.05
DEFAULT_RECONNECT_MAX_INTERVAL: Final = 2.0

_INSTALL_HINT: Final = "the NATS transport needs nats-py: pip install 'callosum-like[nats]'"


def _require_nats() -> None:
    try:
        import nats  # noqa: F401
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc


class NATSTransport(Transport):
    """Peers on subjects of a NATS system, through any of its servers (docs/nats.md).

    Args:
        identity: The connecting side's identity token (letters, digits, ``_``, ``-``): the
            token of the subjects it publishes on, which the server's permissions can confine
            a NATS user to. Give the Peer's ``identity``. By default a random token.
        trust_subjects: On the bound side, report each remote's identity token as its
            proven identity (``request.peer_id``, ``to=``). Only sound when the server's
            permissions confine each user to its token (``nats_permissions``).
        user: User name for the servers (with ``password``).
        password: Password for ``user``.
        token: An authentication token for the servers.
        nkey_seed: Path of an NKey seed file (needs the ``nkeys`` package).
        credentials: Path of a ``.creds`` file (JWT and NKey seed; needs ``nkeys``).
        tls: An ``ssl.SSLContext`` for the servers (``tls://`` URLs, or servers that require
            TLS); it verifies the servers' certificates as it is configured to.
        tls_hostname: The name to verify the servers' certificates against, when not the
            URL's host.
        name: The NATS connection name the servers show (monitoring).
        connect_timeout: Seconds to reach a server when a connection is made.
        reconnect_interval: Seconds before the first knock is repeated; doubles each time.
        reconnect_max_interval: The longest wait between knocks, and between nats-py's
            rounds of reconnection attempts.
        max_pending_messages: Messages a subscription holds that were not taken yet.
        max_pending_size: Bytes a subscription holds that were not taken yet.
        randomize_servers: Try the address's servers in a random order (spreading clients
            over a cluster), or in the order given (a preferred server first).

    Raises:
        ImportError: nats-py is not installed.
        TypeError, ValueError: An option has the wrong type or value (the error names it).
    """

    def __init__(
        self,
        *,
        identity: str | None = None,
        trust_subjects: bool = False,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        nkey_seed: str | os.PathLike[str] | None = None,
        credentials: str | os.PathLike[str] | None = None,
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        name: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        reconnect_interval: float = DEFAULT_RECONNECT_INTERVAL,
        reconnect_max_interval: float = DEFAULT_RECONNECT_MAX_INTERVAL,
        max_pending_messages: int = DEFAULT_MAX_PENDING_MESSAGES,
        max_pending_size: int = DEFAULT_MAX_PENDING_SIZE,
        randomize_servers: bool = True,
    ) -> None:
        _require_nats()
        if identity is not None and (not isinstance(identity, str) or not is_nats_token(identity)):
            raise ValueError(
                f"identity must be one subject token (letters, digits, '_', '-'), got {identity!r}"
            )
        for flag, given in (
            ("trust_subjects", trust_subjects),
            ("randomize_servers", randomize_servers),
        ):
            if not isinstance(given, bool):
                raise TypeError(f"{flag} must be a bool")
        for option, value in (
            ("user", user),
            ("password", password),
            ("token", token),
            ("tls_hostname", tls_hostname),
            ("name", name),
        ):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{option} must be a str, not {type(value).__name__}")
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        if tls is not None and not isinstance(tls, ssl.SSLContext):
            raise TypeError(f"tls must be an ssl.SSLContext, not {type(tls).__name__}")
        self._intervals = check_reconnect_intervals(reconnect_interval, reconnect_max_interval)
        self._connect_timeout = _positive("connect_timeout", connect_timeout, float)
        self._pending = (
            int(_positive("max_pending_messages", max_pending_messages, int)),
            int(_positive("max_pending_size", max_pending_size, int)),
        )
        self._identity = identity
        self._trusted = trust_subjects
        self._options: dict[str, Any] = {
            "user": user,
            "password": password,
            "token": token,
            "nkeys_seed": None if nkey_seed is None else os.fspath(nkey_seed),
            "user_credentials": None if credentials is None else os.fspath(credentials),
            "tls": tls,
            "tls_hostname": tls_hostname,
            "name": name,
            "dont_randomize": not randomize_servers,
        }

    async def bind(
        self,
        address: Address,
        *,
        max_frame_size: int,
        authenticator: AbstractServerAuthenticator | None = None,
    ) -> Connection:
        """See ``Transport.bind``: serve on ``address.subject``.

        Raises:
            OSError: No server of ``address`` could be reached within ``connect_timeout``.
            AuthenticationError: The servers refused our credentials.
            ValueError: ``address`` is not a ``NATSAddress``, or an authenticator was given
                (NATS authenticates with the servers' own credentials: see the options).
        """
        nats_address = _check(address, authenticator)
        subjects = Subjects(nats_address.subject)
        connection: BoundNATS | None = None

        def make(client: Client) -> NATSConnection:
            nonlocal connection
            connection = BoundNATS(
                client, subjects, str(nats_address), max_frame_size, trusted=self._trusted
            )
            return connection

        await self._open(nats_address, make, inbox_prefix=None)
        assert connection is not None
        await self._started(connection, connection.start(*self._pending))
        return connection

    async def connect(
        self,
        address: Address,
        *,
        max_frame_size: int,
        authenticator: AbstractClientAuthenticator | None = None,
    ) -> Connection:
        """See ``Transport.connect``: reach whoever serves ``address.subject``.

        ``Connected`` is reported once the bound side answered (before this returns if it
        is there already); until then the transport keeps asking.

        Raises:
            OSError: No server of ``address`` could be reached within ``connect_timeout``.
            AuthenticationError: The servers refused our credentials.
            ValueError: As for ``bind``.
        """
        nats_address = _check(address, authenticator)
        subjects = Subjects(nats_address.subject)
        identity = self._identity or f"anon-{secrets.token_hex(6)}"
        connection: ConnectingNATS | None = None

        def make(client: Client) -> NATSConnection:
            nonlocal connection
            connection = ConnectingNATS(
                client,
                subjects,
                str(nats_address),
                max_frame_size,
                identity=identity,
                instance=secrets.token_hex(6),
                intervals=self._intervals,
            )
            return connection

        await self._open(nats_address, make, inbox_prefix=subjects.inbox_prefix(identity))
        assert connection is not None
        await self._started(connection, connection.start(*self._pending))
        return connection

    async def _open(self, address: NATSAddress, make: Any, *, inbox_prefix: str | None) -> None:
        """A nats-py client connected to ``address``'s servers, handed to ``make(client)``."""
        from nats.aio.client import Client
        from nats.errors import Error as NATSError

        client = Client()
        connection: NATSConnection = make(client)
        errors: list[BaseException] = []

        async def on_error(error: Exception) -> None:
            if not client.is_connected and not client.is_reconnecting:
                errors.append(error)  # still connecting: ours to report
            else:
                await connection.on_error(error)

        async def on_disconnected() -> None:
            await connection.on_disconnected()

        async def on_reconnected() -> None:
            await connection.on_reconnected()

        options = {k: v for k, v in self._options.items() if v is not None}
        if inbox_prefix is not None:
            options["inbox_prefix"] = inbox_prefix
        connecting = asyncio.ensure_future(
            client.connect(
                list(address.servers),
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                connect_timeout=max(1, round(self._connect_timeout)),
                reconnect_time_wait=self._intervals[1],  # type: ignore[arg-type]
                max_reconnect_attempts=-1,
                pending_size=PENDING_SIZE,
                **options,
            )
        )
        try:
            await _connected(connecting, errors, self._connect_timeout)
        except BaseException as exc:
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            await client.close()
            if isinstance(exc, TimeoutError | OSError | NATSError):
                raise _connect_error(address, errors or [exc]) from None
            raise

    @staticmethod
    async def _started(connection: NATSConnection, start: Any) -> None:
        try:
            await start
        except BaseException:
            await connection.aclose()
            raise


def _is_refusal(error: BaseException) -> bool:
    """Whether nats-py's ``error`` says that the server refused our credentials."""
    from nats.errors import AuthorizationError

    return isinstance(error, AuthorizationError) or "authorization violation" in str(error).lower()


async def _connected(
    connecting: asyncio.Future[None], errors: list[BaseException], timeout: float
) -> None:
    """Wait for nats-py's ``connect``: done, refused (at once), or out of time."""
    async with asyncio.timeout(timeout):
        while not connecting.done():
            if any(map(_is_refusal, errors)):
                raise errors[-1]  # nats-py would try forever: the credentials are wrong
            await asyncio.wait([connecting], timeout=0.05)
    connecting.result()


def _connect_error(address: NATSAddress, errors: list[BaseException]) -> Exception:
    refused = [e for e in errors if _is_refusal(e)]
    last = (refused or errors)[-1]
    text = str(last) or type(last).__name__
    if refused:
        return AuthenticationError(f"the NATS servers {address.servers} refused us: {text}")
    return OSError(f"no NATS server of {list(address.servers)} could be reached: {text}")


def _check(address: Address, authenticator: object) -> NATSAddress:
    if not isinstance(address, NATSAddress):
        raise ValueError(f"the NATS transport needs a NATSAddress, not {address!r}")
    if authenticator is not None:
        raise ValueError(
            "the NATS transport takes no authenticator: give NATSTransport the servers' "
            "credentials (user/password, token, nkey_seed, credentials) and tls"
        )
    return address


def _positive(name: str, value: object, kind: type) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if kind is int and not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return float(value)


register_transport(NATSAddress, NATSTransport)
