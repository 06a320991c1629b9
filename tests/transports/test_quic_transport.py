from __future__ import annotations

from typing import Any

from callosum_like.addresses import QUICAddress
from callosum_like.lower.base import Connection, Transport
from callosum_like.lower.quic import QUICTransport

from ..certs import quic_client_options, quic_server_options
from .conformance import ReconnectingTransportConformance


class TestQUICTransport(ReconnectingTransportConformance):
    def transport(self) -> Transport:
        return QUICTransport(**quic_server_options(), **quic_client_options())

    def bind_address(self) -> Any:
        return QUICAddress("127.0.0.1", 0)

    def connect_address(self, server: Connection) -> Any:
        host, port = server.local_address.rsplit(":", 1)
        return QUICAddress(host, int(port))
