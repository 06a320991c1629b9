"""Transport addresses: the one place where users' address types are declared.

Theory of operation: the Peer accepts a plain ``str`` (a ZeroMQ endpoint), a
``ZeroMQAddress``, a ``TCPAddress``, a ``UnixAddress``, a ``QUICAddress`` or a
``NATSAddress``. ``parse_address`` normalises these and rejects anything else with a
``TypeError``/``ValueError`` naming the argument, so that the transports below only ever see
validated address objects. Which transport serves an address type is not decided here: each
transport module registers itself for its address type (``lower.registry``). A third-party
transport's own address type is accepted once a transport is registered for it: the registry
tells this module through ``accept_address_type``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias, cast, get_args

__all__ = [
    "ZeroMQAddress",
    "TCPAddress",
    "UnixAddress",
    "NATSAddress",
    "QUICAddress",
    "Address",
    "AddressLike",
    "parse_address",
    "accept_address_type",
    "is_nats_token",
]

_ZMQ_SCHEMES: Final = ("tcp://", "ipc://", "inproc://")


@dataclass(frozen=True, slots=True)
class ZeroMQAddress:
    """A ZeroMQ endpoint such as ``"tcp://127.0.0.1:5020"``, ``"ipc:///tmp/x"`` or ``"inproc://x"``.

    A ``tcp://`` endpoint bound with port ``0`` (or ``*``) picks a free port; the bound
    ``Peer.address`` tells which.

    Args:
        uri: The endpoint.

    Raises:
        ValueError: The scheme is not one of ``tcp://``, ``ipc://``, ``inproc://``.
    """

    uri: str

    def __post_init__(self) -> None:
        if not isinstance(self.uri, str):
            raise TypeError(f"uri must be a str, not {type(self.uri).__name__}")
        if not self.uri.startswith(_ZMQ_SCHEMES) or self.uri.endswith("//"):
            raise ValueError(
                f"uri must be a tcp://, ipc:// or inproc:// endpoint, got {self.uri!r}"
            )

    def __str__(self) -> str:
        return self.uri


@dataclass(frozen=True, slots=True)
class _HostPort:
    """A host and port, checked; the base of ``TCPAddress`` and ``QUICAddress``."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise TypeError(f"host must be a non-empty str, got {self.host!r}")
        if not isinstance(self.port, int) or isinstance(self.port, bool):
            raise TypeError(f"port must be an int, not {type(self.port).__name__}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TCPAddress(_HostPort):
    """A host and port for the plain asyncio TCP transport. Port ``0`` binds a free port.

    Args:
        host: A host name or IP address.
        port: A port number from 0 to 65535.

    Raises:
        TypeError: ``host`` is not a str or ``port`` not an int.
        ValueError: ``port`` is out of range.
    """


@dataclass(frozen=True, slots=True)
class QUICAddress(_HostPort):
    """A host and UDP port for the QUIC transport (``QUICTransport``). Port ``0`` binds a free port.

    Args:
        host: A host name or IP address.
        port: A port number from 0 to 65535.

    Raises:
        TypeError: ``host`` is not a str or ``port`` not an int.
        ValueError: ``port`` is out of range.
    """


@dataclass(frozen=True, slots=True, init=False)
class UnixAddress:
    """A Unix domain socket's path, for the stream transport (the TCP framing, TLS optional).

    Binding removes a stale socket file left at ``path`` by a process that is gone, and
    closing removes the file it bound; binding a path another live endpoint serves fails.

    Args:
        path: A file system path (``str`` or ``os.PathLike``).

    Raises:
        TypeError: ``path`` is not a str or path-like.
        ValueError: ``path`` is empty or holds a NUL character.
    """

    path: str

    def __init__(self, path: str | os.PathLike[str]) -> None:
        value = os.fspath(path) if isinstance(path, os.PathLike) else path
        if not isinstance(value, str):
            raise TypeError(f"path must be a str or path-like, not {type(path).__name__}")
        if not value or "\0" in value:
            raise ValueError(f"path must be a non-empty file path without NUL, got {value!r}")
        object.__setattr__(self, "path", value)

    def __str__(self) -> str:
        return self.path


_NATS_SCHEMES: Final = ("nats://", "tls://")
#: A NATS subject token of ours: no wildcards, separators or whitespace (NATS allows more,
#: but these survive every shell, config file and URL the subject is written into).
_NATS_TOKEN: Final = re.compile(r"[A-Za-z0-9_\-]+")


@dataclass(frozen=True, slots=True, init=False)
class NATSAddress:
    """A subject on a NATS system, reached through any of its servers (``NATSTransport``).

    ``Peer(bind=NATSAddress(servers, "manager"))`` serves on subject ``manager``;
    ``Peer(connect=...)`` with the same subject reaches it, through any server of the
    cluster (docs/nats.md has the subject layout below it).

    Args:
        servers: A server URL (``nats://host:port`` or ``tls://host:port``), or a non-empty
            sequence of them; the client picks one and fails over to the others.
        subject: The service's subject: tokens of letters, digits, ``_`` and ``-`` joined
            by dots, without wildcards (``"manager"``, ``"fleet.eu.manager"``).

    Raises:
        TypeError: ``servers`` is not a str or a sequence of str, or ``subject`` not a str.
        ValueError: A URL has another scheme, no servers are given, or the subject is not
            a valid subject.
    """

    servers: tuple[str, ...]
    subject: str

    def __init__(self, servers: str | Sequence[str], subject: str) -> None:
        urls = (servers,) if isinstance(servers, str) else servers
        if not isinstance(urls, Sequence) or not all(isinstance(u, str) for u in urls):
            raise TypeError(f"servers must be a URL or a sequence of URLs, got {servers!r}")
        if not urls:
            raise ValueError("servers must name at least one NATS server")
        for url in urls:
            if not url.startswith(_NATS_SCHEMES) or url.endswith("//") or " " in url:
                raise ValueError(f"servers: {url!r} is not a nats:// or tls:// URL")
        if not isinstance(subject, str):
            raise TypeError(f"subject must be a str, not {type(subject).__name__}")
        if not all(_NATS_TOKEN.fullmatch(token) for token in subject.split(".")):
            raise ValueError(
                f"subject must be dot-separated tokens of letters, digits, '_' and '-' "
                f"(no wildcards), got {subject!r}"
            )
        object.__setattr__(self, "servers", tuple(urls))
        object.__setattr__(self, "subject", subject)

    def __str__(self) -> str:
        return f"{','.join(self.servers)}/{self.subject}"

    @classmethod
    def from_url(cls, url: str) -> NATSAddress:
        """The address a NATS connection's ``local_address`` names (``nats://h:p/subject``).

        Raises:
            ValueError: ``url`` has no ``/subject`` after the server(s).
        """
        head, sep, subject = url.rpartition("/")
        if not sep or head.endswith("/") or not subject:
            raise ValueError(f"not a NATS address URL (servers/subject): {url!r}")
        return cls(head.split(","), subject)


def is_nats_token(value: str) -> bool:
    """Whether ``value`` is one subject token as ``NATSAddress`` accepts them."""
    return _NATS_TOKEN.fullmatch(value) is not None


Address: TypeAlias = ZeroMQAddress | TCPAddress | UnixAddress | QUICAddress | NATSAddress
AddressLike: TypeAlias = str | ZeroMQAddress | TCPAddress | UnixAddress | QUICAddress | NATSAddress

#: The address types ``parse_address`` passes through: ours, and those a transport was
#: registered for (``accept_address_type``).
_ACCEPTED: list[type] = list(get_args(Address))


def accept_address_type(address_type: type) -> None:
    """Make ``parse_address`` accept instances of ``address_type`` as they are.

    Called by ``lower.registry.register_transport``, so that a third-party transport's
    address type is accepted once its transport is registered. Idempotent.
    """
    if address_type not in _ACCEPTED:
        _ACCEPTED.append(address_type)


def parse_address(value: object, *, argument: str) -> Address:
    """Normalise a user-supplied address.

    Args:
        value: A ZeroMQ endpoint string, a ``ZeroMQAddress``, ``TCPAddress`` or
            ``UnixAddress``, or an address of a type a transport was registered for.
        argument: The argument name to mention in errors (``"bind"`` or ``"connect"``).

    Returns:
        The address object. A registered third-party address is returned as it is (typed
        ``Address`` for the callers; only its own transport looks into it).

    Raises:
        TypeError: ``value`` is of another type.
        ValueError: ``value`` is a malformed endpoint string.
    """
    if isinstance(value, str):
        try:
            return ZeroMQAddress(value)
        except ValueError as exc:
            raise ValueError(f"{argument}: {exc}") from None
    if isinstance(value, tuple(_ACCEPTED)):
        return cast(Address, value)
    names = ", ".join(t.__name__ for t in _ACCEPTED)
    raise TypeError(f"{argument} must be a str or one of {names}, not {type(value).__name__}")
