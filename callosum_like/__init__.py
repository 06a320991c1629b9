"""callosum_like: a layered, bidirectional RPC framework for Python asyncio.

The names below are the public surface (see ``shared/CONTRACT.md`` and docs/guide.md).
Everything else is internal and may change. ``callosum_like.upper`` (Thrift and msgpack
schemas) is imported on its own, so that thriftpy2 stays optional.
"""

from . import auth as auth
from .addresses import NATSAddress as NATSAddress
from .addresses import QUICAddress as QUICAddress
from .addresses import TCPAddress as TCPAddress
from .addresses import UnixAddress as UnixAddress
from .addresses import ZeroMQAddress as ZeroMQAddress
from .errors import AuthenticationError as AuthenticationError
from .errors import InterceptorError as InterceptorError
from .errors import MessageTooLargeError as MessageTooLargeError
from .errors import MethodNotFoundError as MethodNotFoundError
from .errors import OverloadedError as OverloadedError
from .errors import PeerClosedError as PeerClosedError
from .errors import PeerDisconnectedError as PeerDisconnectedError
from .errors import RefusedError as RefusedError
from .errors import RemoteError as RemoteError
from .errors import RPCCancelledError as RPCCancelledError
from .errors import RPCError as RPCError
from .errors import RPCInternalError as RPCInternalError
from .errors import RPCTimeoutError as RPCTimeoutError
from .errors import RPCUserError as RPCUserError
from .errors import SchemaError as SchemaError
from .errors import UnknownPeerError as UnknownPeerError
from .events import PeerEvent as PeerEvent
from .events import PeerEventKind as PeerEventKind
from .events import PeerEvents as PeerEvents
from .interceptors import ForwardedCall as ForwardedCall
from .interceptors import Interceptor as Interceptor
from .interceptors import OutgoingCall as OutgoingCall
from .lower.base import Transport as Transport
from .lower.nats_transport import NATSTransport as NATSTransport
from .lower.quic import QUICTransport as QUICTransport
from .lower.tcp import TCPTransport as TCPTransport
from .lower.unix import UnixTransport as UnixTransport
from .lower.zeromq import ZeroMQTransport as ZeroMQTransport
from .ordering import Ordering as Ordering
from .peer import Peer as Peer
from .relay import Relay as Relay
from .request import Request as Request
from .stats import PeerStatistics as PeerStatistics

__version__ = "0.1.0"

__all__ = [
    # the peer
    "Peer",
    "Request",
    "Ordering",
    "PeerStatistics",
    "PeerEvent",
    "PeerEventKind",
    "PeerEvents",
    # observability
    "Interceptor",
    "OutgoingCall",
    "ForwardedCall",
    # federation
    "Relay",
    # addresses and transports
    "ZeroMQAddress",
    "TCPAddress",
    "UnixAddress",
    "NATSAddress",
    "QUICAddress",
    "Transport",
    "ZeroMQTransport",
    "TCPTransport",
    "UnixTransport",
    "NATSTransport",
    "QUICTransport",
    # errors
    "RPCError",
    "RemoteError",
    "RPCUserError",
    "MethodNotFoundError",
    "RPCInternalError",
    "OverloadedError",
    "RefusedError",
    "InterceptorError",
    "RPCTimeoutError",
    "RPCCancelledError",
    "PeerDisconnectedError",
    "PeerClosedError",
    "MessageTooLargeError",
    "AuthenticationError",
    "UnknownPeerError",
    "SchemaError",
    # security
    "auth",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
