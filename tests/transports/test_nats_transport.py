from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from callosum_like.addresses import NATSAddress
from callosum_like.errors import PeerDisconnectedError
from callosum_like.lower.base import Connection, Transport
from callosum_like.lower.nats_transport import NATSTransport

from ..natsserver import NATSServer, nats_address, nats_server
from .conformance import ReconnectingTransportConformance

__all__ = ["nats_server"]


class TestNATSTransport(ReconnectingTransportConformance):
    @pytest.fixture(autouse=True)
    def _server(self, nats_server: NATSServer) -> None:
        self.server = nats_server

    def transport(self) -> Transport:
        return NATSTransport()

    def bind_address(self) -> Any:
        return nats_address(self.server)

    def connect_address(self, server: Connection) -> Any:
        return NATSAddress.from_url(server.local_address)


@pytest.mark.parametrize(
    ("servers", "subject", "error"),
    [
        ("nats://h:4222", "", ValueError),
        ("nats://h:4222", "a.*", ValueError),
        ("nats://h:4222", "a.>", ValueError),
        ("nats://h:4222", "a..b", ValueError),
        ("nats://h:4222", "a b", ValueError),
        ("http://h:4222", "a", ValueError),
        ([], "a", ValueError),
        ([b"nats://h"], "a", TypeError),
        (4222, "a", TypeError),
        ("nats://h:4222", 7, TypeError),
    ],
)
def test_bad_addresses_are_refused(servers: Any, subject: Any, error: type) -> None:
    with pytest.raises(error):
        NATSAddress(servers, subject)


def test_an_address_names_its_servers_and_subject_and_reads_back() -> None:
    one = NATSAddress("nats://h:4222", "fleet.eu-1.manager")
    assert one.servers == ("nats://h:4222",)
    many = NATSAddress(["nats://a:1", "tls://b:2"], "m")
    assert str(many) == "nats://a:1,tls://b:2/m"
    assert NATSAddress.from_url(str(many)) == many
    with pytest.raises(ValueError, match="not a NATS address"):
        NATSAddress.from_url("nats://a:1")


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"identity": "a.b"}, ValueError),
        ({"identity": "*"}, ValueError),
        ({"trust_subjects": 1}, TypeError),
        ({"user": "u"}, ValueError),
        ({"token": 5}, TypeError),
        ({"tls": True}, TypeError),
        ({"connect_timeout": 0}, ValueError),
        ({"max_pending_messages": 1.5}, TypeError),
        ({"reconnect_interval": -1}, ValueError),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        NATSTransport(**options)


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_no_server_is_an_os_error_naming_the_servers() -> None:
    from ..conftest import free_port

    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(OSError, match="no NATS server"):
        await NATSTransport(connect_timeout=1).connect(
            NATSAddress(url, "nobody"), max_frame_size=1024
        )


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_an_authenticator_is_refused(nats_server: NATSServer) -> None:
    from callosum_like import auth

    keys = auth.generate_keypair()
    authenticator = auth.ServerAuthenticator(keys, allowed={})
    with pytest.raises(ValueError, match="no authenticator"):
        await NATSTransport().bind(
            nats_address(nats_server), max_frame_size=1024, authenticator=authenticator
        )


@pytest.mark.timeout(60)
@pytest.mark.asyncio
async def test_a_slow_consumer_is_counted_and_dropped_and_knocks_again(
    nats_server: NATSServer,
) -> None:
    """The bound side reads nothing: nats-py's pending limit overflows, memory stays bounded."""
    from callosum_like.lower.base import RECEIVE_QUEUE_SIZE, Connected, Disconnected, Received

    from .conformance import next_event

    transport = NATSTransport(max_pending_messages=100)
    server = await transport.bind(nats_address(nats_server), max_frame_size=2**20)
    client = await transport.connect(
        NATSAddress.from_url(server.local_address), max_frame_size=2**20
    )
    try:
        assert isinstance(await next_event(client), Connected)
        for n in range(RECEIVE_QUEUE_SIZE + 2_000):
            try:
                await client.send([n.to_bytes(4, "big")])
            except PeerDisconnectedError:
                break  # dropped already: sending more would wait for the next knock's answer
            await asyncio.sleep(0)  # one NATS message each: nothing to batch with
        events: list[Any] = []
        while not any(isinstance(e, Disconnected) for e in events):
            events.append(await next_event(server))
        gone = next(e for e in events if isinstance(e, Disconnected))
        assert gone.slow
        assert server.dropped >= 1
        received = [int.from_bytes(e.frames[0], "big") for e in events if isinstance(e, Received)]
        assert received == list(range(len(received)))  # what came, came in order
        # the client is told, reports the loss, and knocks again under a new key
        assert isinstance(await next_event(client, Disconnected), Disconnected)
        assert isinstance(await next_event(client, Connected), Connected)
        assert isinstance(await next_event(server, Connected), Connected)  # a key of its own
    finally:
        await client.aclose()
        await server.aclose()


def test_without_nats_py_the_transport_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)  # ``import nats`` fails as if absent
    with pytest.raises(ImportError, match=r"pip install 'callosum-like\[nats\]'"):
        NATSTransport()
    assert NATSAddress("nats://h:1", "s").subject == "s"  # addresses need no nats-py
