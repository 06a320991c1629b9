"""CURVE keys and their certificate files: keygen, Z85 checks, saving and loading.

Theory of operation
-------------------
ZeroMQ CURVE gives every endpoint a Curve25519 keypair. This module holds the keys as values
and as files; what a bound peer decides with them (the authenticator hooks) is in
``callosum_like.auth``, which re-exports the public names below (``auth.Keypair``,
``auth.generate_keypair``, ``auth.save_keypair``, ``auth.load_keypair``,
``auth.load_public_key``): users import them from there.

* ``Keypair`` is the value object for one keypair. Keys are always the 40-byte Z85 text form
  that libzmq's socket options take; a ``Keypair`` that exists is valid (right length, valid
  Z85, and the public key belongs to the secret key). ``check_key`` is that check for one
  key, naming the argument in its errors.
* ``save_keypair``/``load_keypair`` read and write ZeroMQ certificate files (the ZPL text
  format of czmq's ``zcert`` and pyzmq's ``zmq.auth``): ``PATH.key`` holds the public key and
  may be handed out; ``PATH.key_secret`` holds both and is created with mode 0600 from its
  first byte (a temporary file made by ``mkstemp``, then renamed into place). Loading a
  secret certificate that others may read logs a warning.

Layering: this module imports only ``zmq`` (for ``curve_keypair``, ``curve_public`` and Z85),
so it sits below ``auth`` and every transport. Nothing here logs or returns a secret key;
``Keypair`` leaves its secret out of its ``repr``.
"""

from __future__ import annotations

import datetime
import errno
import logging
import os
import re
import stat
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeAlias

import zmq
from zmq.utils import z85

__all__ = [
    # the keys
    "Keypair",
    "generate_keypair",
    "check_key",
    "KEY_SIZE",
    # certificate files
    "save_keypair",
    "load_keypair",
    "load_public_key",
    "PUBLIC_SUFFIX",
    "SECRET_SUFFIX",
    "MAX_CERTIFICATE_SIZE",
    "StrPath",
]

log = logging.getLogger(__name__)

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


def check_key(value: bytes | str, name: str) -> bytes:
    """Return ``value`` as Z85 bytes, or raise naming the argument.

    Args:
        value: The key, as Z85 ``bytes`` or ``str``.
        name: The argument's name, for the error messages.

    Returns:
        The key as 40 bytes of Z85 text.

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
            check_key(value, name)
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
        return check_key(value, entry)
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
