"""Transport addresses and the rule that maps a user's address to a transport.

Theory of operation: the Peer accepts a plain ``str`` (a ZeroMQ endpoint), a
``ZeroMQAddress`` or a ``TCPAddress``. ``parse_address`` normalises these and rejects
anything else with a ``TypeError``/``ValueError`` naming the argument, so that the transports
below only ever see validated address objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = [
    "ZeroMQAddress",
    "TCPAddress",
    "Address",
    "AddressLike",
    "parse_address",
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
class TCPAddress:
    """A host and port for the plain asyncio TCP transport. Port ``0`` binds a free port.

    Args:
        host: A host name or IP address.
        port: A port number from 0 to 65535.

    Raises:
        TypeError: ``host`` is not a str or ``port`` not an int.
        ValueError: ``port`` is out of range.
    """

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


Address: TypeAlias = ZeroMQAddress | TCPAddress
AddressLike: TypeAlias = str | ZeroMQAddress | TCPAddress


def parse_address(value: object, *, argument: str) -> Address:
    """Normalise a user-supplied address.

    Args:
        value: A ZeroMQ endpoint string, a ``ZeroMQAddress`` or a ``TCPAddress``.
        argument: The argument name to mention in errors (``"bind"`` or ``"connect"``).

    Returns:
        The address object.

    Raises:
        TypeError: ``value`` is of another type.
        ValueError: ``value`` is a malformed endpoint string.
    """
    if isinstance(value, ZeroMQAddress | TCPAddress):
        return value
    if isinstance(value, str):
        try:
            return ZeroMQAddress(value)
        except ValueError as exc:
            raise ValueError(f"{argument}: {exc}") from None
    raise TypeError(
        f"{argument} must be a str, ZeroMQAddress or TCPAddress, not {type(value).__name__}"
    )
