from __future__ import annotations

from typing import Any

from callosum_like.addresses import TCPAddress
from callosum_like.lower.base import Connection, Transport
from callosum_like.lower.tcp import TCPTransport

from .conformance import TransportConformance


class TestTCPTransport(TransportConformance):
    def transport(self) -> Transport:
        return TCPTransport()

    def bind_address(self) -> Any:
        return TCPAddress("127.0.0.1", 0)

    def connect_address(self, server: Connection) -> Any:
        host, port = server.local_address.rsplit(":", 1)
        return TCPAddress(host, int(port))
