"""Identities proven by client certificates: what TLS over TCP/Unix and QUIC share.

Theory of operation: a bound endpoint that requires client certificates (a TCP/Unix server
context with ``verify_mode = ssl.CERT_REQUIRED``, or a ``QUICTransport`` with a ``cafile``)
has, once the handshake is over, the certificate its remote proved it holds the key of. The
transport then names that remote by what the certificate says, not by what its ``Hello``
claims: it reports ``Connected(key, user_id=identity)``, and the Peer's rule "a proven
identity wins over a claimed one" (``remotes.py``) does the rest.

Which identity a certificate proves is the *identity hook*'s decision: a callable taking the
``PeerCertificate`` and returning the identity, or ``None`` to refuse the remote (its
connection is closed before anything it sent is delivered). The default hook,
``common_name``, takes the subject's common name (CN), or for a certificate without one its
first DNS name or e-mail address among its subject alternative names, and refuses a
certificate with none of these.
Transports call ``identify`` with the hook; a hook that raises refuses too (logged), so that
a bug in a user's hook cannot let a remote in under its claimed name.

This module is a leaf of the lower layer: it parses certificates with ``cryptography``
(imported on use: it comes with the ``quic`` extra, or ``pip install cryptography``; without
it every client certificate is refused, with an error in the log) and knows nothing of
sockets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "PeerCertificate",
    "IdentityHook",
    "common_name",
    "identify",
    "check_identity_hook",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The certificate a remote presented (and proved it holds the key of).

    Attributes:
        der: The certificate, DER-encoded.
    """

    der: bytes
    _parsed: list[x509.Certificate] = field(default_factory=list, repr=False, compare=False)

    @property
    def x509(self) -> x509.Certificate:
        """The certificate parsed by ``cryptography`` (subject, extensions, fingerprint...).

        Raises:
            ImportError: ``cryptography`` is not installed.
        """
        if not self._parsed:
            from cryptography import x509

            self._parsed.append(x509.load_der_x509_certificate(self.der))
        return self._parsed[0]

    @property
    def subject_common_name(self) -> str | None:
        """The subject's common name (CN), or ``None`` when it has none."""
        from cryptography.x509.oid import NameOID

        names = self.x509.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names:
            return None
        value = names[0].value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")


#: Derives a remote's identity from its certificate; ``None`` refuses the remote.
IdentityHook: TypeAlias = Callable[[PeerCertificate], "str | None"]


def common_name(certificate: PeerCertificate) -> str | None:
    """The default identity hook: the subject's common name, else its first DNS or e-mail alt name.

    Returns ``None`` (refused) for a certificate with none of these.
    """
    from cryptography import x509

    name = certificate.subject_common_name
    if name:
        return name
    try:
        names = certificate.x509.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    alternatives = names.value.get_values_for_type(x509.DNSName)
    alternatives += names.value.get_values_for_type(x509.RFC822Name)
    return alternatives[0] if alternatives else None


def check_identity_hook(hook: object) -> IdentityHook:
    """Validate a transport's ``identity_from_certificate`` option.

    Raises:
        TypeError: ``hook`` is not callable.
    """
    if hook is None:
        return common_name
    if not callable(hook):
        raise TypeError(f"identity_from_certificate must be callable, not {hook!r}")
    return hook


def identify(hook: IdentityHook, der: bytes | None) -> str | None:
    """The identity ``hook`` gives the certificate ``der``; ``None``: refuse the remote.

    A missing certificate, one that does not parse, a hook that raises or returns something
    else than a non-empty ``str``: all refuse (and are logged).
    """
    if der is None:
        return None
    try:
        identity = hook(PeerCertificate(der))
    except Exception:  # a user's hook: whatever it raises refuses the remote, logged
        log.exception("the identity hook failed on a client certificate; refused")
        return None
    if identity is not None and (not isinstance(identity, str) or not identity):
        log.warning("the identity hook returned %r, not a non-empty str; refused", identity)
        return None
    return identity
