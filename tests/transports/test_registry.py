"""One registry names each address type's transport; a new transport plugs in by registering.

The third-party transport here is a real one: the Unix stream transport behind an address
type of its own, registered as a plug-in would be.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

import callosum_like as cl
from callosum_like.addresses import parse_address
from callosum_like.lower import register_transport, transport_for
from callosum_like.lower.base import Received
from callosum_like.lower.unix import UnixTransport

from .conformance import MAX_FRAME, next_event

pytestmark = pytest.mark.timeout(30)


def test_each_built_in_address_type_names_its_transport(tmp_path: Path) -> None:
    assert type(transport_for(cl.TCPAddress("127.0.0.1", 0))) is cl.TCPTransport
    assert type(transport_for(cl.UnixAddress(tmp_path / "s"))) is cl.UnixTransport
    assert type(transport_for(cl.ZeroMQAddress("tcp://127.0.0.1:0"))) is cl.ZeroMQTransport


def test_each_call_makes_a_new_transport() -> None:
    address = cl.TCPAddress("127.0.0.1", 0)
    assert transport_for(address) is not transport_for(address)


def test_an_address_type_without_a_transport_is_named() -> None:
    class Carrier:
        pass

    with pytest.raises(TypeError, match="no transport is registered for Carrier addresses"):
        transport_for(Carrier())


def test_a_second_transport_cannot_take_an_address_type() -> None:
    register_transport(cl.TCPAddress, cl.TCPTransport)  # the same again: nothing changes
    with pytest.raises(ValueError, match="TCPAddress addresses are served by"):
        register_transport(cl.TCPAddress, cl.UnixTransport)
    assert type(transport_for(cl.TCPAddress("127.0.0.1", 0))) is cl.TCPTransport


def test_registration_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="address_type must be a class"):
        register_transport("TCPAddress", cl.TCPTransport)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="factory must be callable"):
        register_transport(cl.TCPAddress, cl.TCPTransport())  # type: ignore[arg-type]


@dataclass(frozen=True)
class SocketIn:
    """A plug-in's own address type: a socket named ``name`` in directory ``directory``."""

    directory: str
    name: str


class SocketInTransport(UnixTransport):
    """A plug-in's transport for ``SocketIn`` (over a Unix socket, to be a real one)."""

    def check_address(self, address: object) -> cl.UnixAddress:
        if not isinstance(address, SocketIn):
            raise ValueError(f"needs a SocketIn, not {address!r}")
        return cl.UnixAddress(Path(address.directory) / address.name)


def test_parse_address_accepts_an_address_type_only_once_a_transport_serves_it() -> None:
    @dataclass(frozen=True)
    class Unserved:
        where: str

    with pytest.raises(TypeError, match=r"bind must be a str or one of .*UnixAddress.*Unserved"):
        parse_address(Unserved("x"), argument="bind")
    register_transport(SocketIn, SocketInTransport)
    address = SocketIn("/run", "x.sock")
    assert parse_address(address, argument="connect") is address


@pytest.mark.asyncio
async def test_a_registered_third_party_transport_serves_its_address(tmp_path: Path) -> None:
    register_transport(SocketIn, SocketInTransport)
    address = parse_address(SocketIn(str(tmp_path), "plugin.sock"), argument="bind")
    transport = transport_for(address)
    assert type(transport) is SocketInTransport
    server = await transport.bind(address, max_frame_size=MAX_FRAME)
    client = await transport_for(address).connect(address, max_frame_size=MAX_FRAME)
    try:
        await client.send([b"plugged in"])
        assert (await next_event(server, Received)).frames == [b"plugged in"]
    finally:
        await client.aclose()
        await server.aclose()
