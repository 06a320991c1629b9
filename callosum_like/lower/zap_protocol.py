"""ZAP's messages (ZeroMQ Authentication Protocol, RFC 27), sans-IO: frames in, values out.

Theory of operation
-------------------
When a CURVE server socket completes a handshake, libzmq sends the ZAP handler of its context
a request (version ``1.0``, request id, ZAP domain, address, routing id, mechanism, and for
CURVE one frame holding the client's raw 32-byte public key) and waits for a reply (version,
request id, status code, status text, user id, metadata). This module maps those frames to
value objects and back; the async server that receives and answers them is ``lower.zap``.

* ``split_envelope`` separates what the handler's ROUTER received into the routing envelope
  and the request.
* ``parse_request`` turns the request frames into a ``ZAPRequest`` or raises
  ``ProtocolError``; ``screen_request`` never raises: a malformed request is answered
  ``500``, a mechanism other than CURVE ``400``, and a well-formed CURVE request is returned
  for an authenticator to decide.
* ``reply_for_result`` turns an authenticator's ``AuthResult`` into a ``ZAPReply`` (``200``
  with the user id, or ``400``); ``ZAPReply.to_frames`` encodes it, with
  ``encode_metadata`` for the ZMTP connection properties.

Layering: no I/O and no event loop; it imports ``auth`` (for ``AuthResult``), ``errors``
and ``zmq.utils.z85``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from zmq.utils import z85

from ..auth import AuthResult
from ..errors import ProtocolError

__all__ = [
    "ZAP_VERSION",
    "CURVE_KEY_SIZE",
    "ZAPStatus",
    "ZAPRequest",
    "ZAPReply",
    "parse_request",
    "screen_request",
    "reply_for_result",
    "split_envelope",
    "encode_metadata",
]


#: The only ZAP version there is.
ZAP_VERSION: Final = b"1.0"
#: The raw Curve25519 public key in the credentials frame of a CURVE request.
CURVE_KEY_SIZE: Final = 32
#: Status texts are informative only; keep one bounded even if an error message is not.
_MAX_STATUS_TEXT: Final = 200


class ZAPStatus(enum.Enum):
    """ZAP status codes (RFC 27)."""

    SUCCESS = b"200"
    TEMPORARY_ERROR = b"300"
    FAILURE = b"400"
    INTERNAL_ERROR = b"500"


@dataclass(frozen=True, slots=True, kw_only=True)
class ZAPRequest:
    """A well-formed ZAP request, without its routing envelope.

    Attributes:
        request_id: Opaque; echoed in the reply.
        domain: The ZAP domain of the socket that handshook (our internal routing key).
        address: The client's address, such as ``"127.0.0.1"``.
        routing_id: The routing id the client announced (often empty).
        mechanism: ``"NULL"``, ``"PLAIN"``, ``"CURVE"`` or ``"GSSAPI"``.
        credentials: The mechanism's credential frames.
    """

    request_id: bytes
    domain: str
    address: str
    routing_id: bytes
    mechanism: str
    credentials: tuple[bytes, ...]

    @property
    def curve_public_key(self) -> bytes:
        """The client's public key in Z85, for a request that ``screen_request`` passed."""
        return z85.encode(self.credentials[0])

    def reply(self, status: ZAPStatus, text: str, user_id: str = "") -> ZAPReply:
        """Build the reply to this request.

        Args:
            status: The status code.
            text: A short human-readable reason.
            user_id: On success, the authenticated user id.

        Returns:
            The reply value object.
        """
        return ZAPReply(request_id=self.request_id, status=status, text=text, user_id=user_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class ZAPReply:
    """A ZAP reply, ready to be turned into frames.

    Attributes:
        request_id: The id of the request answered.
        status: The status code.
        text: A short human-readable reason (truncated to 200 characters on the wire).
        user_id: The authenticated user id; libzmq puts it on each message as ``User-Id``.
        metadata: Extra connection properties (ZMTP metadata); names should start with
            ``X-``.
    """

    request_id: bytes
    status: ZAPStatus
    text: str
    user_id: str = ""
    metadata: Mapping[str, bytes] = field(default_factory=dict)

    def to_frames(self) -> list[bytes]:
        """Encode the reply as the six ZAP reply frames (no routing envelope).

        Returns:
            ``[version, request_id, status, text, user_id, metadata]``.

        Raises:
            ValueError: A metadata name is empty or over 255 bytes.
        """
        return [
            ZAP_VERSION,
            self.request_id,
            self.status.value,
            self.text[:_MAX_STATUS_TEXT].encode("utf-8", errors="replace"),
            self.user_id.encode("utf-8"),
            encode_metadata(self.metadata),
        ]


def encode_metadata(metadata: Mapping[str, bytes]) -> bytes:
    """Encode connection properties in the ZMTP 3.0 metadata format.

    Each property is a 1-byte name length, the name, a 4-byte big-endian value length and
    the value.

    Args:
        metadata: Property names to values.

    Returns:
        The encoded properties (empty for no properties).

    Raises:
        ValueError: A name is empty or longer than 255 bytes once encoded.
    """
    parts: list[bytes] = []
    for name, value in metadata.items():
        raw_name = name.encode("ascii")
        if not 0 < len(raw_name) < 256:
            raise ValueError(f"metadata name {name!r} must be 1 to 255 bytes")
        parts += [bytes([len(raw_name)]), raw_name, len(value).to_bytes(4, "big"), value]
    return b"".join(parts)


def _text_frame(frame: bytes, what: str) -> str:
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"ZAP {what} is not UTF-8") from None


def parse_request(frames: Sequence[bytes]) -> ZAPRequest:
    """Parse the frames of one ZAP request (without its routing envelope).

    Args:
        frames: ``[version, request_id, domain, address, routing_id, mechanism, *credentials]``.

    Returns:
        The request.

    Raises:
        ProtocolError: The frames are not a ZAP 1.0 request.
    """
    if len(frames) < 6:
        raise ProtocolError(f"ZAP request has {len(frames)} frames, at least 6 expected")
    if not all(isinstance(frame, bytes) for frame in frames):
        raise ProtocolError("ZAP request frames must be bytes")
    version, request_id, domain, address, routing_id, mechanism, *credentials = frames
    if version != ZAP_VERSION:
        raise ProtocolError(f"ZAP version {version[:16]!r} is not supported")
    return ZAPRequest(
        request_id=request_id,
        domain=_text_frame(domain, "domain"),
        address=_text_frame(address, "address"),
        routing_id=routing_id,
        mechanism=_text_frame(mechanism, "mechanism"),
        credentials=tuple(credentials),
    )


def screen_request(frames: Sequence[bytes]) -> ZAPRequest | ZAPReply:
    """Sort a request into "ask the authenticator" or "answer right away". Never raises.

    Args:
        frames: The request frames, without the routing envelope.

    Returns:
        The ``ZAPRequest`` when it is a well-formed CURVE request that an authenticator must
        decide; otherwise the ``ZAPReply`` to send: ``500`` for a malformed request, ``400``
        for a mechanism other than CURVE.
    """
    try:
        request = parse_request(frames)
    except ProtocolError as exc:
        request_id = frames[1] if len(frames) > 1 and isinstance(frames[1], bytes) else b""
        text = f"malformed ZAP request: {exc}"
        return ZAPReply(request_id=request_id, status=ZAPStatus.INTERNAL_ERROR, text=text)
    if request.mechanism != "CURVE":
        text = f"mechanism {request.mechanism[:20]!r} is not accepted, only CURVE"
        return request.reply(ZAPStatus.FAILURE, text)
    if len(request.credentials) != 1 or len(request.credentials[0]) != CURVE_KEY_SIZE:
        return request.reply(ZAPStatus.INTERNAL_ERROR, "malformed CURVE credentials")
    return request


def reply_for_result(request: ZAPRequest, result: AuthResult) -> ZAPReply:
    """Turn an authenticator's verdict into the reply.

    Args:
        request: A request that ``screen_request`` passed.
        result: The verdict of ``check_client``.

    Returns:
        ``200`` with the user id (the client's Z85 public key when the verdict has none), or
        ``400``.
    """
    if not result.success:
        return request.reply(ZAPStatus.FAILURE, "client key not allowed")
    user_id = result.user_id or request.curve_public_key.decode("ascii")
    return request.reply(ZAPStatus.SUCCESS, "OK", user_id)


def split_envelope(frames: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split what a ROUTER received into the routing envelope and the request.

    Args:
        frames: Routing ids, an empty delimiter frame, then the request.

    Returns:
        ``(envelope, request)``; the envelope includes the delimiter, ready to prefix a reply.

    Raises:
        ProtocolError: There is no empty delimiter frame.
    """
    try:
        delimiter = list(frames).index(b"")
    except ValueError:
        raise ProtocolError("ZAP message has no envelope delimiter") from None
    return list(frames[: delimiter + 1]), list(frames[delimiter + 1 :])
