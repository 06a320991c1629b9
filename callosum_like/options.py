"""A Peer's options, validated once, and the argument checks behind them.

Theory of operation: ``Peer.__init__`` hands its keyword arguments to ``PeerOptions.build``,
which checks each (a ``TypeError`` or ``ValueError`` naming the argument, as the contract asks),
fills in the defaults and makes the transport (by default the one registered for the
address's type, ``lower.transport_for``: no concrete transport is named here); the Peer and
its rooms then read the frozen result and never check again. The ``check_*`` functions are
the same checks for the other entry points that take seconds or counts (``invoke``'s
``timeout``, the relay's options).

Nothing here does I/O; only ``peer`` and ``relay`` import it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .addresses import Address, AddressLike, parse_address
from .interceptors import Interceptor, check_interceptors
from .lower import transport_for
from .lower.base import Transport
from .ordering import Ordering

if TYPE_CHECKING:
    from .auth import AbstractClientAuthenticator, AbstractServerAuthenticator

__all__ = [
    "PeerOptions",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_UNACKED_BYTES",
    "check_count",
    "check_timeout",
    "check_positive",
    "check_call_args",
]

#: Seconds ``__aenter__`` of a connecting peer waits for the bound side's Welcome.
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
#: Requests a peer holds (running plus waiting) before it refuses new ones as overloaded.
DEFAULT_MAX_PENDING: Final = 10_000
#: Bytes of sent messages a resumable link keeps until the remote acknowledges them (at
#: least twice ``max_body_size``): acknowledgements come every 64 messages or 1 MiB, so a
#: live link keeps little; a suspended one keeps what was sent while it waits.
DEFAULT_MAX_UNACKED_BYTES: Final = 256 * 2**20


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerOptions:
    """What a Peer was asked to be, checked (see ``Peer`` for each option's meaning)."""

    bound: bool
    address: Address
    transport: Transport
    authenticator: AbstractServerAuthenticator | AbstractClientAuthenticator | None
    identity: str
    ordering: Ordering
    max_concurrency: int
    max_pending: int
    invoke_timeout: float | None
    execute_timeout: float | None
    compress: bool
    max_body_size: int
    chunk_size: int
    heartbeat_interval: float
    heartbeat_timeout: float
    connect_timeout: float | None
    resume_timeout: float = 0.0
    max_unacked_bytes: int = 0
    interceptors: tuple[Interceptor, ...] = ()

    @classmethod
    def build(
        cls,
        *,
        bind: AddressLike | None,
        connect: AddressLike | None,
        transport: Transport | type[Transport] | None,
        authenticator: Any,
        identity: str | None,
        ordering: Ordering,
        max_concurrency: int,
        max_pending: int,
        invoke_timeout: float | None,
        execute_timeout: float | None,
        compress: bool,
        max_body_size: int,
        chunk_size: int,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        connect_timeout: float | None,
        resume_timeout: float = 0.0,
        max_unacked_bytes: int | None = None,
        interceptors: Iterable[Interceptor] | None = None,
    ) -> PeerOptions:
        """Check the arguments of ``Peer`` and return them as options.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: An argument has a wrong value (both or neither of ``bind`` and
                ``connect``, a negative timeout, ...).
        """
        if (bind is None) == (connect is None):
            raise ValueError("exactly one of bind and connect must be given")
        bound = bind is not None
        address = parse_address(bind if bound else connect, argument="bind" if bound else "connect")
        made = _make_transport(transport, address)
        authenticator = _check_authenticator(authenticator, bound=bound)
        if identity is not None and (not isinstance(identity, str) or not identity):
            raise TypeError("identity must be a non-empty str")
        if not isinstance(ordering, Ordering):
            raise TypeError(f"ordering must be an Ordering, not {type(ordering).__name__}")
        for name, count in (
            ("max_concurrency", max_concurrency),
            ("max_pending", max_pending),
            ("max_body_size", max_body_size),
            ("chunk_size", chunk_size),
        ):
            check_count(name, count)
        invoke_timeout = check_timeout("invoke_timeout", invoke_timeout)
        execute_timeout = check_timeout("execute_timeout", execute_timeout)
        connect_timeout = check_timeout("connect_timeout", connect_timeout)
        interval = check_positive("heartbeat_interval", heartbeat_interval)
        timeout = check_positive("heartbeat_timeout", heartbeat_timeout)
        if timeout <= interval:
            raise ValueError("heartbeat_timeout must be longer than heartbeat_interval")
        resume = check_timeout("resume_timeout", resume_timeout)
        if resume is None:
            raise TypeError("resume_timeout must be seconds (0 turns resumption off)")
        if max_unacked_bytes is None:
            max_unacked_bytes = max(DEFAULT_MAX_UNACKED_BYTES, 2 * max_body_size)
        check_count("max_unacked_bytes", max_unacked_bytes)
        return cls(
            bound=bound,
            address=address,
            transport=made,
            authenticator=authenticator,
            identity=identity or f"peer-{secrets.token_hex(4)}",
            ordering=ordering,
            max_concurrency=max_concurrency,
            max_pending=max_pending,
            invoke_timeout=invoke_timeout,
            execute_timeout=execute_timeout,
            compress=bool(compress),
            max_body_size=max_body_size,
            chunk_size=chunk_size,
            heartbeat_interval=interval,
            heartbeat_timeout=timeout,
            connect_timeout=connect_timeout,
            resume_timeout=resume,
            max_unacked_bytes=max_unacked_bytes,
            interceptors=check_interceptors(interceptors),
        )


def _make_transport(transport: object, address: object) -> Transport:
    if transport is None:
        return transport_for(address)  # whatever registered itself for the address's type
    if isinstance(transport, type) and issubclass(transport, Transport):
        return transport()
    if isinstance(transport, Transport):
        return transport
    raise TypeError(f"transport must be a Transport instance or class, not {transport!r}")


def _check_authenticator(authenticator: Any, *, bound: bool) -> Any:
    if authenticator is None:
        return None
    from .auth import AbstractClientAuthenticator, AbstractServerAuthenticator

    expected = AbstractServerAuthenticator if bound else AbstractClientAuthenticator
    if not isinstance(authenticator, expected):
        raise TypeError(
            f"authenticator of a {'bound' if bound else 'connecting'} peer must be an "
            f"{expected.__name__}, not {type(authenticator).__name__}"
        )
    return authenticator


def check_count(name: str, value: object) -> None:
    """Check that ``value`` is an ``int`` of at least 1.

    Raises:
        TypeError: It is not an ``int`` (a ``bool`` is not one here).
        ValueError: It is below 1.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def check_timeout(name: str, value: object) -> float | None:
    """Check seconds that may be ``None`` (no limit) or zero; return them as a float.

    Raises:
        TypeError: Not a number.
        ValueError: Negative (or NaN).
    """
    if value is None:
        return None
    seconds = _check_seconds(name, value)
    if not seconds >= 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return seconds


def check_positive(name: str, value: object) -> float:
    """Check seconds that must be more than zero; return them as a float.

    Raises:
        TypeError: Not a number.
        ValueError: Zero, negative or NaN.
    """
    seconds = _check_seconds(name, value)
    if not seconds > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return seconds


def _check_seconds(name: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    return float(value)


def check_names(name: str, value: object) -> list[str]:
    """Check an iterable of identities (not a single str); return them, each once, in order.

    Raises:
        TypeError: ``value`` is a str or not iterable, or holds something other than str.
    """
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be an iterable of identities, not {type(value).__name__}")
    names = list(dict.fromkeys(value))
    if not all(isinstance(item, str) for item in names):
        raise TypeError(f"{name} must hold identities (str)")
    return names


def check_call_args(method: object, order_key: object, headers: Mapping[Any, Any] | None) -> None:
    """Check the arguments of ``invoke`` and ``stream`` that shape the call.

    Raises:
        TypeError: ``method`` is not a non-empty str, ``order_key`` not a str or None, or
            ``headers`` not a mapping of str to str or bytes.
    """
    if not isinstance(method, str) or not method:
        raise TypeError("method must be a non-empty str")
    if order_key is not None and not isinstance(order_key, str):
        raise TypeError(f"order_key must be a str or None, not {type(order_key).__name__}")
    if headers is None:
        return
    if not isinstance(headers, Mapping):
        raise TypeError("headers must be a mapping of str to str or bytes")
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str | bytes):
            raise TypeError(f"headers[{key!r}] must map a str to a str or bytes")
