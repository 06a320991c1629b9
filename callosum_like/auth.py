"""CURVE authentication: the authenticator hooks, the values they exchange, and the keys.

Theory of operation
-------------------
ZeroMQ CURVE gives every endpoint a Curve25519 keypair. A bound peer proves who it is with
its secret key, and decides who may connect by looking at each client's *public* key. This
module holds everything about that decision that is not socket plumbing:

* The keys and their certificate files live in ``callosum_like.keys`` and are re-exported
  here, as the public API names them: ``Keypair`` (a ``Keypair`` that exists is valid),
  ``generate_keypair``, and ``save_keypair``/``load_keypair``/``load_public_key`` for the
  ZeroMQ certificate files (``PATH.key``, public; ``PATH.key_secret``, mode 0600).
* ``Identity``, ``Credential`` and ``AuthResult`` are the values passed to and from the hooks.
* The ``Abstract*Authenticator`` ABCs are the hooks a user may subclass; ``ServerAuthenticator``
  and ``ClientAuthenticator`` are the ready-made ones. They are plain async objects: they know
  nothing of sockets or of ZAP. ``callosum_like.lower.zap`` calls ``check_client`` for each
  handshake and turns the ``AuthResult`` into a ZAP reply; the user id of an accepted client
  becomes its identity on the bound peer.

Layering: this module imports only ``callosum_like.keys``, so it sits below every transport.
Nothing here logs or returns a secret key; ``Keypair`` and ``Identity`` leave secrets out of
their ``repr``.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from .keys import Keypair as Keypair
from .keys import check_key
from .keys import generate_keypair as generate_keypair
from .keys import load_keypair as load_keypair
from .keys import load_public_key as load_public_key
from .keys import save_keypair as save_keypair

__all__ = [
    # keys and certificate files (defined in callosum_like.keys)
    "Keypair",
    "generate_keypair",
    "save_keypair",
    "load_keypair",
    "load_public_key",
    # values passed to and from the hooks
    "Identity",
    "Credential",
    "AuthResult",
    # the hooks and the ready-made authenticators
    "AbstractServerAuthenticator",
    "AbstractClientAuthenticator",
    "ServerAuthenticator",
    "ClientAuthenticator",
    "ClientCheck",
    "DEFAULT_DOMAIN",
]

# The keypair is known by its public path, ``auth.Keypair`` (as the package's names are by
# ``callosum_like``).
Keypair.__module__ = __name__

log = logging.getLogger(__name__)

#: The domain an authenticator declares unless told otherwise; passed to ``check_client``.
DEFAULT_DOMAIN: Final = "callosum"


def _check_domain(domain: str) -> str:
    if not isinstance(domain, str):
        raise TypeError(f"domain must be a str, not {type(domain).__name__}")
    if not domain:
        raise ValueError("domain must not be empty")
    return domain


# --- values exchanged with the hooks -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this endpoint is: its authentication domain and its secret key.

    Args:
        domain: The authentication domain; a server's domain is passed to ``check_client``.
        private_key: The 40-byte Z85 secret key (left out of ``repr``).

    Raises:
        TypeError, ValueError: ``domain`` is not a non-empty str or ``private_key`` is not a
            valid Z85 key.
    """

    domain: str
    private_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_domain(self.domain)
        if not isinstance(self.private_key, bytes):
            raise TypeError("private_key must be Z85 bytes")
        check_key(self.private_key, "private_key")


@dataclass(frozen=True, slots=True)
class Credential:
    """What a connecting client presented, as ``check_client`` sees it.

    Args:
        domain: The domain of the server authenticator that is asked (its ``Identity.domain``).
        public_key: The client's 40-byte Z85 public key, proven by the CURVE handshake.
    """

    domain: str
    public_key: bytes


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The verdict of ``check_client``.

    Args:
        success: Whether the client may connect.
        user_id: On success, the name the client is known by (its identity on the bound
            peer). ``None`` means "use the client's Z85 public key". Ignored on failure.

    Raises:
        TypeError: ``user_id`` is neither ``None`` nor a ``str``.
    """

    success: bool
    user_id: str | None = None

    def __post_init__(self) -> None:
        if self.user_id is not None and not isinstance(self.user_id, str):
            raise TypeError(f"user_id must be a str or None, not {type(self.user_id).__name__}")


#: An async callable deciding on one client, accepted by ``ServerAuthenticator`` as ``allowed``.
ClientCheck: TypeAlias = Callable[[Credential], Awaitable[AuthResult]]


# --- the hooks -----------------------------------------------------------------------------


class AbstractServerAuthenticator(abc.ABC):
    """The hook a bound peer uses to prove itself and to admit clients.

    Subclass it to fetch keys from a vault or to check clients against a database. The
    methods are awaited on the event loop of the peer; ``check_client`` runs once per
    connection handshake and should answer well within the ZAP timeout
    (``callosum_like.lower.zap.CHECK_CLIENT_TIMEOUT``), or the client is refused.
    """

    @abc.abstractmethod
    async def server_identity(self) -> Identity:
        """Return the server's domain and secret key.

        Returns:
            The server ``Identity``.
        """

    @abc.abstractmethod
    async def server_public_key(self) -> bytes:
        """Return the server's Z85 public key (the one clients must be given).

        Returns:
            The 40-byte Z85 public key.
        """

    @abc.abstractmethod
    async def check_client(self, credential: Credential) -> AuthResult:
        """Decide whether a client that completed the CURVE handshake may connect.

        Args:
            credential: The server's domain and the client's public key.

        Returns:
            The verdict; an accepted client is known by ``user_id``. Raising an exception or
            taking too long refuses the client (and is logged).
        """


class AbstractClientAuthenticator(abc.ABC):
    """The hook a connecting peer uses to find its keys and the server's public key."""

    @abc.abstractmethod
    async def server_public_key(self) -> bytes:
        """Return the Z85 public key the server must prove it owns.

        Returns:
            The 40-byte Z85 public key.
        """

    @abc.abstractmethod
    async def client_identity(self) -> Identity:
        """Return the client's domain and secret key.

        Returns:
            The client ``Identity``.
        """

    @abc.abstractmethod
    async def client_public_key(self) -> bytes:
        """Return the client's Z85 public key (the one the server's allow-list holds).

        Returns:
            The 40-byte Z85 public key.
        """


def _check_keypair(keypair: Keypair) -> Keypair:
    if not isinstance(keypair, Keypair):
        raise TypeError(f"keypair must be an auth.Keypair, not {type(keypair).__name__}")
    return keypair


def _check_user_id(user_id: str) -> str:
    if not isinstance(user_id, str):
        raise TypeError(f"user_id must be a str, not {type(user_id).__name__}")
    if not user_id:
        raise ValueError("user_id must not be empty")
    return user_id


class ServerAuthenticator(AbstractServerAuthenticator):
    """A server authenticator with an allow-list of client public keys, or a callable.

    Decision order for each connection: a revoked key is refused; a key in the allow-list is
    accepted with its user id; otherwise the callable (if one was given) decides; otherwise
    the client is refused. Changes apply to the *next* handshake: a connection that is already
    established stays up until it closes.

    Args:
        keypair: The server's keypair.
        allowed: Either a mapping from client public keys (Z85 ``bytes`` or ``str``) to user
            ids, or an async callable taking a ``Credential`` and returning an ``AuthResult``.
        domain: The domain passed to the callable in ``Credential.domain``.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: A key in ``allowed`` is not valid Z85, a user id is empty, or ``domain``
            is empty.
    """

    def __init__(
        self,
        keypair: Keypair,
        allowed: Mapping[bytes, str] | Mapping[str, str] | ClientCheck,
        *,
        domain: str = DEFAULT_DOMAIN,
    ) -> None:
        self._keypair = _check_keypair(keypair)
        self._domain = _check_domain(domain)
        self._allowed: dict[bytes, str] = {}
        self._revoked: set[bytes] = set()
        self._check: ClientCheck | None = None
        if isinstance(allowed, Mapping):
            for public_key, user_id in allowed.items():
                self.allow(public_key, user_id)
        elif callable(allowed):
            self._check = allowed
        else:
            raise TypeError("allowed must be a mapping of public keys to user ids or a callable")

    @property
    def allowed(self) -> Mapping[bytes, str]:
        """A snapshot of the allow-list: Z85 public key to user id."""
        return dict(self._allowed)

    def allow(self, public_key: bytes | str, user_id: str) -> None:
        """Accept ``public_key`` as ``user_id`` from the next handshake on (undoes ``revoke``).

        Args:
            public_key: The client's Z85 public key.
            user_id: The identity the client will have on the bound peer.

        Raises:
            TypeError, ValueError: The key is not valid Z85 or ``user_id`` is not a
                non-empty str.
        """
        key = check_key(public_key, "public_key")
        self._allowed[key] = _check_user_id(user_id)
        self._revoked.discard(key)
        log.info("CURVE key %s allowed as %r", key.decode("ascii"), user_id)

    def revoke(self, public_key: bytes | str) -> None:
        """Refuse ``public_key`` from the next handshake on, even if the callable accepts it.

        Revoking a key that was never allowed is not an error. Established connections are
        not cut; the bound peer must close them itself if it needs to.

        Args:
            public_key: The client's Z85 public key.

        Raises:
            TypeError, ValueError: The key is not valid Z85.
        """
        key = check_key(public_key, "public_key")
        self._allowed.pop(key, None)
        self._revoked.add(key)
        log.info("CURVE key %s revoked", key.decode("ascii"))

    async def server_identity(self) -> Identity:
        """Return the domain and the secret key given at construction."""
        return Identity(self._domain, self._keypair.secret)

    async def server_public_key(self) -> bytes:
        """Return the public key of the keypair given at construction."""
        return self._keypair.public

    async def check_client(self, credential: Credential) -> AuthResult:
        """Apply the revocations, the allow-list and the callable, in that order.

        Args:
            credential: The server's domain and the client's public key.

        Returns:
            The verdict.

        Raises:
            Exception: Whatever the callable raises (the ZAP server logs it and refuses).
        """
        key = credential.public_key
        if key in self._revoked:
            return AuthResult(False)
        user_id = self._allowed.get(key)
        if user_id is not None:
            return AuthResult(True, user_id)
        if self._check is not None:
            return await self._check(credential)
        return AuthResult(False)


class ClientAuthenticator(AbstractClientAuthenticator):
    """A client authenticator holding its keypair and the server's public key.

    Args:
        keypair: The client's keypair; its public key is what the server's allow-list holds.
        server_public_key: The server's Z85 public key (``bytes`` or ``str``).
        domain: The client's domain (reported by ``client_identity``).

    Raises:
        TypeError, ValueError: An argument has the wrong type or is not a valid key.
    """

    def __init__(
        self,
        keypair: Keypair,
        server_public_key: bytes | str,
        *,
        domain: str = DEFAULT_DOMAIN,
    ) -> None:
        self._keypair = _check_keypair(keypair)
        self._server_public_key = check_key(server_public_key, "server_public_key")
        self._domain = _check_domain(domain)

    async def server_public_key(self) -> bytes:
        """Return the server public key given at construction."""
        return self._server_public_key

    async def client_identity(self) -> Identity:
        """Return the domain and the secret key given at construction."""
        return Identity(self._domain, self._keypair.secret)

    async def client_public_key(self) -> bytes:
        """Return the public key of the keypair given at construction."""
        return self._keypair.public
