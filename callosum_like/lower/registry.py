"""Which transport serves which address type: the one registry of transports.

Theory of operation: every transport module registers a factory for its own address type
when it is imported (``register_transport(TCPAddress, TCPTransport)`` at the end of
``lower/tcp.py``), and ``lower/__init__.py`` imports the built-in transport modules, so that
importing anything from ``callosum_like.lower`` makes the built-ins known. The Peer and the
relay ask ``transport_for(address)`` for the default transport of an address and never name
a concrete transport; a new transport needs a new module and its registration, and no edit
anywhere else (its address type, if new, goes to ``addresses.py``, or is accepted there
through the registration itself: see ``addresses.accept_address_type``).

Rules: one factory per address type. Registering the same factory again is a no-op (a module
imported twice); registering another one for a type already served raises ``ValueError``,
so that two transports cannot silently fight over an address type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from ..addresses import accept_address_type
from .base import Transport

__all__ = ["TransportFactory", "register_transport", "transport_for"]

#: Makes a transport with its default options: typically the transport class itself.
TransportFactory: TypeAlias = Callable[[], Transport]

_FACTORIES: dict[type, TransportFactory] = {}


def register_transport(address_type: type, factory: TransportFactory) -> None:
    """Make ``factory()`` the default transport for addresses of ``address_type``.

    A transport module calls it once, at import, for its own address type. The address type
    is then also accepted by ``Peer(bind=...)``/``Peer(connect=...)``.

    Args:
        address_type: The class of the addresses the transport serves.
        factory: A callable with no arguments returning a new ``Transport`` (the class).

    Raises:
        TypeError: ``address_type`` is not a class, or ``factory`` is not callable.
        ValueError: Another factory is registered for ``address_type`` already.
    """
    if not isinstance(address_type, type):
        raise TypeError(f"address_type must be a class, not {address_type!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable, not {factory!r}")
    known = _FACTORIES.get(address_type)
    if known is not None and known is not factory:
        raise ValueError(
            f"{address_type.__name__} addresses are served by {known!r} already, not by {factory!r}"
        )
    _FACTORIES[address_type] = factory
    accept_address_type(address_type)


def transport_for(address: object) -> Transport:
    """A new transport, with its default options, for ``address``.

    The factory registered for the address's class (or the nearest base class) makes it.

    Args:
        address: An address object (``TCPAddress``, ``UnixAddress``, ``ZeroMQAddress``, or a
            registered third-party type).

    Returns:
        A new ``Transport``.

    Raises:
        TypeError: No transport is registered for the address's type (the error names it).
    """
    for cls in type(address).__mro__:
        factory = _FACTORIES.get(cls)
        if factory is not None:
            return factory()
    raise TypeError(f"no transport is registered for {type(address).__name__} addresses")
