"""The lower layer: message transports behind one small contract (``lower.base``).

Importing this package imports the built-in transport modules, each of which registers
itself for its address type (``lower.registry``), so that ``transport_for(address)`` knows
them whichever module of the layer was imported first. Nothing above this layer names a
concrete transport to choose one: it asks ``transport_for``.
"""

from . import nats_transport as nats_transport
from . import quic as quic
from . import tcp as tcp
from . import unix as unix
from . import zeromq as zeromq
from .registry import register_transport as register_transport
from .registry import transport_for as transport_for

__all__ = ["register_transport", "transport_for"]
