"""QUIC connection migration: the connecting host's address changes in the middle of a call.

Needs root (skipped otherwise, with the reason). The server runs in host ``b``, the client
in host ``a`` (tests/net/quic_roles.py). While a call is in flight, ``a`` is moved to a new
address (the old one is gone at once); the call completes on the same QUIC connection, and
the client's Peer saw no disconnection and made no reconnection.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from callosum_like.tools.netbed.bed import NetBed

from ..certs import ca_file, identity
from .conftest import needs_bed

pytestmark = [needs_bed, pytest.mark.asyncio, pytest.mark.timeout(90)]

ROLES = "tests.net.quic_roles"
#: Seconds the call takes at the server: the address changes well within it.
CALL = 3.0


def certificates(into: Path) -> str:
    """The test CA and a server certificate (for ``localhost``) as files in ``into``."""
    server = identity("server")
    shutil.copy(ca_file(), into / "ca.pem")
    shutil.copy(server.certfile, into / "server.pem")
    shutil.copy(server.keyfile, into / "server.key")
    return str(into)


async def test_a_call_in_flight_survives_a_change_of_the_clients_address(
    bed: NetBed, tmp_path: Path
) -> None:
    certs = certificates(tmp_path)
    async with bed.spawn("b", "server", "-m", ROLES, "server", certs) as server:
        port = await server.ready()
        before = bed.address("a")
        async with bed.spawn(
            "a", "client", "-m", ROLES, "client", certs, bed.address("b"), port, str(CALL)
        ) as client:
            await client.ready()  # the call is in flight
            after = await bed.readdress("a")
            assert after != before
            status = await client.wait(CALL + 20)
        assert client.result is not None, client.tail()
        outcome = json.loads(client.result)
        assert status == 0, client.tail()
    assert outcome["result"] == "done"
    assert outcome["reconnects"] == 0
    assert "DISCONNECTED" not in outcome["events"], outcome
