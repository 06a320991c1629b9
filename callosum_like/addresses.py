"""Transport addresses: the one place where users' address types are declared.

Theory of operation: the Peer accepts a plain ``str`` (a ZeroMQ endpoint), a
``ZeroMQAddress``, a ``TCPAddress``, a ``UnixAddress`` or a ``QUICAddress``. ``parse_address``
normalises these and rejects anything else with a ``TypeError``/``ValueError`` naming the
argument, so that the transports below only ever see validated address objects. Which
transport serves an address type is not decided here: each transport module registers itself
for its address type (``lower.registry``). A third-party transport's own address type is
accepted once a transport is registered for it: the registry tells this module through
``accept_address_type``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final, TypeAlias, cast, get_args

__all__ = [
    "ZeroMQAddress",
    "TCPAddress",
    "UnixAddress",
    "QUICAddress",
    "Address",
    "AddressLike",
    "parse_address",
    "accept_address_type",
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


Address: TypeAlias = ZeroMQAddress | TCPAddress | UnixAddress | QUICAddress
AddressLike: TypeAlias = str | ZeroMQAddress | TCPAddress | UnixAddress | QUICAddress

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
