from __future__ import annotations

import itertools
import os
import tempfile
from typing import Any

from callosum_like.addresses import ZeroMQAddress
from callosum_like.lower.base import Connection, Transport
from callosum_like.lower.zeromq import ZeroMQTransport

from .conformance import TransportConformance

_names = itertools.count()


class TestZeroMQOverTCP(TransportConformance):
    def transport(self) -> Transport:
        return ZeroMQTransport()

    def bind_address(self) -> Any:
        return ZeroMQAddress("tcp://127.0.0.1:0")

    def connect_address(self, server: Connection) -> Any:
        return ZeroMQAddress(server.local_address)


class TestZeroMQOverIPC(TestZeroMQOverTCP):
    def bind_address(self) -> Any:
        path = os.path.join(tempfile.gettempdir(), f"cl-test-{os.getpid()}-{next(_names)}.sock")
        return ZeroMQAddress(f"ipc://{path}")


class TestZeroMQOverInproc(TestZeroMQOverTCP):
    # inproc:// has no connection events at all: libzmq's monitor is silent for it.
    client_reports_disconnects = False

    def bind_address(self) -> Any:
        return ZeroMQAddress(f"inproc://cl-test-{os.getpid()}-{next(_names)}")
