"""Reconnection backs off: the wait between failed attempts doubles, up to a cap.

A connecting peer whose server is gone tries again after ``reconnect_interval``, doubling the
wait after each failed attempt up to ``reconnect_max_interval`` (TCP in Python, ZeroMQ with
``ZMQ_RECONNECT_IVL``/``ZMQ_RECONNECT_IVL_MAX``). A refused attempt is seen only by the client
and by the kernel, so the peers run in a child process in a network namespace of its own
(``unshare -rn``: a user namespace, so no root is needed), where the kernel's
``Tcp: AttemptFails`` counter counts that client's failed connections and nothing else.

The checks count attempts in a window rather than time single gaps, with wide margins on both
sides: with interval 10 ms and cap 200 ms, a 4 s window holds about 25 attempts (half of them
in its second half); without the doubling it would hold hundreds, and without the cap about
nine, at most one in its second half. A loaded machine only makes the attempts fewer, which
the lower bound leaves room for (a mean gap of twice the cap).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(90)

INTERVAL = 0.01
MAX_INTERVAL = 0.2
WINDOW = 4.0

CLIENT = textwrap.dedent(
    """
    import asyncio, fcntl, json, socket, struct, sys, threading, time
    import callosum_like as cl

    def loopback_up():
        # A new network namespace has its loopback interface down.
        SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("16sH14x", b"lo", 0)
            flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))

    def attempt_fails():
        # TCP connections of this namespace that failed (a SYN answered by RST, here).
        with open("/proc/self/net/snmp") as snmp:
            names, values = [line.split() for line in snmp if line.startswith("Tcp:")]
        return int(values[names.index("AttemptFails")])

    async def main():
        kind, interval, max_interval, window = sys.argv[1], *map(float, sys.argv[2:5])
        loopback_up()
        options = {"reconnect_interval": interval, "reconnect_max_interval": max_interval}
        if kind == "zeromq":
            bind, transport = "tcp://127.0.0.1:0", cl.ZeroMQTransport(**options)
        else:
            bind, transport = cl.TCPAddress("127.0.0.1", 0), cl.TCPTransport(**options)
        server = cl.Peer(bind=bind, identity="server")
        await server.__aenter__()
        host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
        target = server.address if kind == "zeromq" else cl.TCPAddress(host, int(port))
        async with cl.Peer(connect=target, transport=transport) as client:
            await client.wait_for_peer("server", timeout=20)
            attempts, stop = [], threading.Event()

            def sample():  # in a thread, so that the client's loop cannot delay it
                seen = attempt_fails()
                while not stop.is_set():
                    now = attempt_fails()
                    attempts.extend([time.monotonic() - start] * (now - seen))
                    seen = now
                    time.sleep(0.001)

            start = time.monotonic()
            sampler = threading.Thread(target=sample)
            sampler.start()
            await server.aclose()  # nothing listens at the port from now on
            await asyncio.sleep(window)
            stop.set()
            sampler.join()
            print(json.dumps(attempts), flush=True)

    asyncio.run(main())
    """
)


def unshare_works() -> str | None:
    """Why user and network namespaces cannot be made here, or ``None`` when they can."""
    if not os.path.exists("/proc/self/net/snmp"):
        return "needs Linux /proc/net/snmp"
    if shutil.which("unshare") is None:
        return "the `unshare` command (util-linux) is not installed"
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True, check=False)
    if probe.returncode:
        return f"cannot make a user and network namespace: {probe.stderr.strip()}"
    return None


def failed_attempts(kind: str) -> list[float]:
    """When the client's failed reconnection attempts were made, in seconds since the
    server went away, over ``WINDOW`` seconds."""
    reason = unshare_works()
    if reason is not None:
        pytest.skip(reason)
    args = [kind, str(INTERVAL), str(MAX_INTERVAL), str(WINDOW)]
    done = subprocess.run(
        ["unshare", "-rn", sys.executable, "-c", CLIENT, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [float(t) for t in json.loads(done.stdout)]


# Counts failed TCP connection attempts (/proc/net/snmp); QUIC shares the options' checks
# and the backoff's shape, and nats-py reconnects by its own rules (docs/nats.md).
@pytest.mark.transports("zeromq", "tcp")
def test_the_wait_between_failed_reconnection_attempts_doubles_up_to_the_cap(
    transport_kind: str,
) -> None:
    attempts = failed_attempts(transport_kind)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(attempts)]
    shown = f"{len(attempts)} attempts, gaps {gaps}"
    assert attempts, "no reconnection attempt at all"
    # It grows: without the doubling, attempts every INTERVAL (and ZeroMQ's jitter, under
    # 2 x INTERVAL) would be hundreds; a mean gap of 4 x INTERVAL is far below the cap's.
    assert len(attempts) <= WINDOW / (4 * INTERVAL), shown
    # It is capped: a doubling wait would make at most one attempt in the window's second
    # half (at 2.56 s, the next at 5.12 s); the cap makes one every MAX_INTERVAL or so.
    late = [t for t in attempts if t >= WINDOW / 2]
    assert len(late) >= WINDOW / 2 / (2 * MAX_INTERVAL), shown
