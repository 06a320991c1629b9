"""CURVE keys, certificate files and the authenticator hooks.

Theory of operation
-------------------
ZeroMQ CURVE gives every endpoint a Curve25519 keypair. A bound peer proves who it is with
its secret key, and decides who may connect by looking at each client's *public* key. This
module holds everything about that decision that is not socket plumbing:

* ``Keypair`` is the value object for one keypair. Keys are always the 40-byte Z85 text form
  that libzmq's socket options take; a ``Keypair`` that exists is valid (right length, valid
  Z85, and the public key belongs to the secret key).
* ``save_keypair``/``load_keypair`` read and write ZeroMQ certificate files (the ZPL text
  format of czmq's ``zcert`` and pyzmq's ``zmq.auth``): ``PATH.key`` holds the public key and
  may be handed out; ``PATH.key_secret`` holds both and is created with mode 0600 from its
  first byte (a temporary file made by ``mkstemp``, then renamed into place).
* The ``Abstract*Authenticator`` ABCs are the hooks a user may subclass; ``ServerAuthenticator``
  and ``ClientAuthenticator`` are the ready-made ones. They are plain async objects: they know
  nothing of sockets or of ZAP. ``callosum_like.lower.zap`` calls ``check_client`` for each
  handshake and turns the ``AuthResult`` into a ZAP reply; the user id of an accepted client
  becomes its identity on the bound peer.

Layering: this module imports only ``callosum_like.errors`` and ``zmq`` (for ``curve_keypair``,
``curve_public`` and Z85), so it sits below every transport. Nothing here logs or returns a
secret key; ``Keypair`` and ``Identity`` leave secrets out of their ``repr``.
"""

from __future__ import annotations

import abc
import datetime
import errno
import logging
import os
import re
import stat
import struct
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeAlias

import zmq
from zmq.utils import z85

__all__ = [
    # keys and certificate files
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

log = logging.getLogger(__name__)

#: The domain an authenticator declares unless told otherwise; passed to ``check_client``.
DEFAULT_DOMAIN: Final = "callosum"
#: Z85 text of a 32-byte Curve25519 key: 32 bytes * 5/4.
KEY_SIZE: Final = 40
#: Suffix of the public certificate file, as czmq's ``zcert_save`` writes it.
PUBLIC_SUFFIX: Final = ".key"
#: Suffix of the secret certificate file, as czmq's ``zcert_save`` writes it.
SECRET_SUFFIX: Final = ".key_secret"
#: A certificate is a few hundred bytes; reading more means the path names the wrong file.
MAX_CERTIFICATE_SIZE: Final = 64 * 1024

_Z85_ALPHABET: Final = frozenset(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)
_PUBLIC_BANNER: Final = (
    "#   ZeroMQ CURVE Public Certificate",
    "#   Exchange securely, or use a secure mechanism to verify the contents",
    "#   of this file after exchange.",
)
_SECRET_BANNER: Final = (
    "#   ZeroMQ CURVE **Secret** Certificate",
    "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.",
)
#: One ZPL line after its indentation: ``name``, or ``name = value``, optional ``# comment``.
_ZPL_LINE: Final = re.compile(
    r"""(?P<name>[A-Za-z0-9$\-_@.&+/]+)\s*"""
    r"""(?:=\s*(?P<value>"[^"]*"|'[^']*'|[^\s"']\S*))?"""
    r"""\s*(?:\#.*)?"""
)
_ZPL_INDENT: Final = 4

StrPath: TypeAlias = str | os.PathLike[str]


def _check_key(value: bytes | str, name: str) -> bytes:
    """Return ``value`` as Z85 bytes, or raise naming the argument.

    Raises:
        TypeError: ``value`` is neither ``bytes`` nor ``str``.
        ValueError: ``value`` is not the 40-character Z85 form of a 32-byte key.
    """
    if isinstance(value, str):
        if not value.isascii():
            raise ValueError(f"{name} contains characters outside the Z85 alphabet")
        value = value.encode("ascii")
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be Z85 bytes, not {type(value).__name__}")
    if len(value) != KEY_SIZE:
        raise ValueError(f"{name} must be {KEY_SIZE} bytes of Z85 text, got {len(value)} bytes")
    if not _Z85_ALPHABET.issuperset(value):
        raise ValueError(f"{name} contains characters outside the Z85 alphabet")
    try:
        canonical = z85.encode(z85.decode(value)) == value
    except (ValueError, KeyError, struct.error):  # struct.error: a 5-char group over 2**32
        canonical = False
    if not canonical:
        raise ValueError(f"{name} is not a valid Z85 encoding")
    return value


def _check_domain(domain: str) -> str:
    if not isinstance(domain, str):
        raise TypeError(f"domain must be a str, not {type(domain).__name__}")
    if not domain:
        raise ValueError("domain must not be empty")
    return domain


@dataclass(frozen=True, slots=True)
class Keypair:
    """A CURVE keypair in Z85 text form, as libzmq's socket options take it.

    Args:
        public: The 40-byte Z85 public key; may be published.
        secret: The 40-byte Z85 secret key; never leaves this process (left out of ``repr``).

    Raises:
        TypeError: A key is not ``bytes``.
        ValueError: A key is not valid Z85 of a 32-byte key, or ``public`` does not belong
            to ``secret``.
    """

    public: bytes
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        for name in ("public", "secret"):
            value = getattr(self, name)
            if not isinstance(value, bytes):
                raise TypeError(f"{name} must be Z85 bytes, not {type(value).__name__}")
            _check_key(value, name)
        if zmq.curve_public(self.secret) != self.public:
            raise ValueError("public does not belong to secret: the keys are from two keypairs")


def generate_keypair() -> Keypair:
    """Make a new random CURVE keypair.

    Returns:
        A fresh ``Keypair``.
    """
    public, secret = zmq.curve_keypair()
    return Keypair(public, secret)


# --- certificate files ---------------------------------------------------------------------


def _certificate_text(public: bytes, secret: bytes | None) -> str:
    """Render a ZeroMQ certificate (ZPL) holding ``public`` and, if given, ``secret``."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    banner = _PUBLIC_BANNER if secret is None else _SECRET_BANNER
    lines = [f"#   ****  Generated on {now} by callosum_like  ****", *banner, ""]
    lines += ["metadata", "curve", f'    public-key = "{public.decode("ascii")}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def _write_atomically(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` through a temporary file that is ``mode`` from the start.

    ``mkstemp`` creates the file with mode 0600 and ``O_EXCL``; we only ever widen it (for the
    public file), so a secret is never readable by others, even while it is being written.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as tmp:
            os.fchmod(tmp.fileno(), mode)
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _base_name(path: StrPath) -> str:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
    return os.fspath(path)


def save_keypair(keypair: Keypair, path: StrPath, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``keypair`` as the ZeroMQ certificate files ``PATH.key`` and ``PATH.key_secret``.

    ``PATH.key`` holds only the public key (mode 0644); hand it to the other side.
    ``PATH.key_secret`` holds both keys and has mode 0600 from the moment it exists. Each file
    is written to a temporary name and renamed, so a reader never sees half a certificate.

    Args:
        keypair: The keys to save.
        path: The base path; the suffixes are appended to it.
        overwrite: Replace existing files instead of refusing.

    Returns:
        ``(public_path, secret_path)``.

    Raises:
        TypeError: ``keypair`` is not a ``Keypair`` or ``path`` is not a path.
        FileExistsError: A file exists and ``overwrite`` is false (nothing is written).
        OSError: The directory does not exist or is not writable.
    """
    if not isinstance(keypair, Keypair):
        raise TypeError(f"keypair must be an auth.Keypair, not {type(keypair).__name__}")
    base = _base_name(path)
    public_path, secret_path = Path(base + PUBLIC_SUFFIX), Path(base + SECRET_SUFFIX)
    for target in (public_path, secret_path):
        if not overwrite and target.exists():
            raise FileExistsError(errno.EEXIST, "refusing to overwrite a certificate", str(target))
    _write_atomically(secret_path, _certificate_text(keypair.public, keypair.secret), 0o600)
    _write_atomically(public_path, _certificate_text(keypair.public, None), 0o644)
    return public_path, secret_path


def _parse_zpl_line(line: str, source: str, lineno: int) -> tuple[int, str, str | None] | None:
    """Parse one ZPL line into ``(depth, name, value)``; ``None`` for blanks and comments."""
    body = line.lstrip(" ")
    if not body.strip() or body.startswith("#"):
        return None
    indent = len(line) - len(body)
    if indent % _ZPL_INDENT or body[0].isspace():
        raise ValueError(f"{source}:{lineno}: indent with a multiple of 4 spaces (no tabs)")
    match = _ZPL_LINE.fullmatch(body.rstrip())
    if match is None:
        raise ValueError(f"{source}:{lineno}: not a ZPL 'name = \"value\"' line: {line!r}")
    value = match["value"]
    if value is not None and value[:1] in ("'", '"'):
        value = value[1:-1]
    return indent // _ZPL_INDENT, match["name"], value


def _parse_certificate(text: str, source: str) -> dict[str, str]:
    """Parse ZPL text into ``{"section/name": value}`` (for example ``"curve/public-key"``)."""
    values: dict[str, str] = {}
    stack: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        entry = _parse_zpl_line(line, source, lineno)
        if entry is None:
            continue
        depth, name, value = entry
        if depth > len(stack):
            raise ValueError(f"{source}:{lineno}: indented deeper than its parent")
        del stack[depth:]
        stack.append(name)
        if value is not None:
            values["/".join(stack)] = value
    return values


def _read_certificate(path: Path) -> dict[str, str]:
    """Read and parse one certificate file; every error names ``path``."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CERTIFICATE_SIZE + 1)
    except FileNotFoundError as exc:
        raise FileNotFoundError(errno.ENOENT, "no such CURVE certificate file", str(path)) from exc
    if len(data) > MAX_CERTIFICATE_SIZE:
        raise ValueError(f"{path}: over {MAX_CERTIFICATE_SIZE} bytes, not a CURVE certificate")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a CURVE certificate (not UTF-8 text)") from exc
    return _parse_certificate(text, str(path))


def _certificate_key(values: Mapping[str, str], entry: str, path: Path) -> bytes:
    value = values.get(f"curve/{entry}")
    if value is None:
        raise ValueError(f"{path}: no '{entry}' in the 'curve' section; not a CURVE certificate")
    try:
        return _check_key(value, entry)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _warn_if_exposed(path: Path) -> None:
    """Log a warning if others may read a secret certificate (ssh refuses such keys)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is accessible by group/others (mode %o); chmod 600 it", path, mode & 0o777)


def load_keypair(path: StrPath) -> Keypair:
    """Read a keypair from the ZeroMQ certificate that ``save_keypair`` or ``keygen`` wrote.

    Args:
        path: The base path ``PATH`` (reads ``PATH.key_secret``), or ``PATH.key_secret`` itself.

    Returns:
        The keypair.

    Raises:
        FileNotFoundError: The secret certificate does not exist (``.filename`` names it).
        ValueError: The file is not a valid CURVE secret certificate; the message names the
            file (and the line, for syntax errors).
        OSError: The file cannot be read.
    """
    base = _base_name(path)
    secret_path = Path(base if base.endswith(SECRET_SUFFIX) else base + SECRET_SUFFIX)
    values = _read_certificate(secret_path)
    public = _certificate_key(values, "public-key", secret_path)
    secret = _certificate_key(values, "secret-key", secret_path)
    try:
        keypair = Keypair(public, secret)
    except ValueError as exc:
        raise ValueError(f"{secret_path}: {exc}") from exc
    _warn_if_exposed(secret_path)
    return keypair


def load_public_key(path: StrPath) -> bytes:
    """Read the public key from a certificate file.

    Args:
        path: The base path ``PATH`` (reads ``PATH.key``), or a ``.key`` or ``.key_secret``
            file itself.

    Returns:
        The Z85 public key.

    Raises:
        FileNotFoundError: The certificate does not exist (``.filename`` names it).
        ValueError: The file is not a valid CURVE certificate; the message names the file.
        OSError: The file cannot be read.
    """
    base = _base_name(path)
    has_suffix = base.endswith((PUBLIC_SUFFIX, SECRET_SUFFIX))
    public_path = Path(base if has_suffix else base + PUBLIC_SUFFIX)
    return _certificate_key(_read_certificate(public_path), "public-key", public_path)


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
        _check_key(self.private_key, "private_key")


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
        key = _check_key(public_key, "public_key")
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
        key = _check_key(public_key, "public_key")
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
        self._server_public_key = _check_key(server_public_key, "server_public_key")
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
