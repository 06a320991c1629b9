"""Relays and peers in child processes, so that tests can kill (SIGKILL) or stop (SIGSTOP) them.

The parent starts a child with a JSON description of its role and reads what it does from
its stdout, one event per line:

* ``ready <address>``: the child is open (a relay: bound and connected upstream; a peer:
  bound, or connected with its handshake done). ``<address>`` is where to connect to it.
* ``started <body>`` / ``cancelled <body>``: the ``block`` handler began, or was cancelled.
* ``returned <json>`` / ``raised <ExceptionName> <message>``: one of the child's own calls
  ended (``invoke`` in the description: made at once when the child is open).

Addresses travel as strings: ``tcp://host:port`` for ZeroMQ, ``host:port`` for the plain TCP
transport and QUIC (what ``Peer.address`` and ``Relay.address`` give; the host says which:
tests/conftest.py ``KINDS``).

Run as ``python -m tests.relayproc '<json>'``; ``Child`` does that, and ``Children`` is the
fixture's object that kills and reaps every child at the end of a test, pass or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import sys
from typing import Any

import zmq

import callosum_like as cl

from .certs import quic_server_options
from .conftest import KINDS, kind_of, same_address

#: Seconds a child or a line from it may take to appear (Python starts slowly when loaded).
START_TIMEOUT = 20
#: The directory that holds ``callosum_like`` and ``tests``, for the child's ``sys.path``.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def address_of(text: str) -> Any:
    """The address object for an address string (see the module doc)."""
    return same_address(kind_of(text), text)


def bind_at(kind: str, port: int = 0) -> Any:
    """Where a child binds: the ``kind``'s loopback host at ``port`` (tests/conftest.py)."""
    return KINDS[kind].address(KINDS[kind].host, port)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# -- the child ------------------------------------------------------------------------------------


def say(*words: Any) -> None:
    print(*words, flush=True)


async def echo(request: cl.Request) -> Any:
    return request.body


async def whoami(request: cl.Request) -> Any:
    return request.peer_id


async def block(request: cl.Request) -> Any:
    say("started", json.dumps(request.body))
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        say("cancelled", json.dumps(request.body))
        raise


async def open_rebinding(make: Any) -> Any:
    """Open what ``make()`` builds, retried while its port is still taken (a restart)."""
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            opened = make()
            try:
                return await opened.__aenter__()
            except (OSError, zmq.ZMQError) as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
            await asyncio.sleep(0.05)


async def call(peer: cl.Peer, spec: dict[str, Any]) -> None:
    if spec.get("wait_for"):
        await peer.wait_for_peer(spec["wait_for"], timeout=START_TIMEOUT)
    try:
        result = await peer.invoke(
            spec["method"], spec.get("body"), to=spec.get("to"), timeout=spec.get("timeout")
        )
    except Exception as exc:
        say("raised", type(exc).__name__, exc)
    else:
        say("returned", json.dumps(result))


async def child(config: dict[str, Any]) -> None:
    options = config.get("options", {})
    bind = config.get("bind")
    if config["role"] == "relay":
        assert bind is not None
        relay = await open_rebinding(
            lambda: cl.Relay(
                bind=bind_at(bind["kind"], bind.get("port", 0)),
                upstream=address_of(config["upstream"]),
                identity=config["identity"],
                **options,
            )
        )
        await relay.wait_upstream(timeout=START_TIMEOUT)
        say("ready", relay.address)
    else:
        if bind is not None:
            make = lambda: cl.Peer(  # noqa: E731
                bind=bind_at(bind["kind"], bind.get("port", 0)),
                identity=config["identity"],
                **options,
            )
            peer = await open_rebinding(make)
        else:
            connect = address_of(config["connect"])
            peer = cl.Peer(connect=connect, identity=config["identity"], **options)
            await peer.__aenter__()
        for name, handler in (("echo", echo), ("whoami", whoami), ("block", block)):
            peer.handle_function(name, handler)
        say("ready", peer.address)
        calls = [asyncio.create_task(call(peer, spec)) for spec in config.get("invoke", [])]
        await asyncio.gather(*calls)
    await asyncio.Event().wait()  # until killed


# -- the parent -----------------------------------------------------------------------------------


class Child:
    """One child process; ``Children.start`` makes them."""

    def __init__(self, process: asyncio.subprocess.Process, config: dict[str, Any]) -> None:
        self.process = process
        self.config = config
        self.lines: list[str] = []  # every line read so far, in order
        self.address = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    async def line(self, word: str, timeout: float = START_TIMEOUT) -> str:
        """The rest of the first line read from now on that starts with ``word``.

        Lines that do not match are kept in ``lines``; a line already read before this call
        is not matched again (each event is waited for once).

        Raises:
            AssertionError: The child ended first.
            TimeoutError: Nothing matched within ``timeout`` seconds.
        """
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.process.stdout.readline()
                assert raw, f"the child {self.config['identity']!r} ended: {self.lines}"
                text = raw.decode().rstrip("\n")
                self.lines.append(text)
                head, _, rest = text.partition(" ")
                if head == word:
                    return rest

    def kill(self) -> None:
        """SIGKILL: the process dies at once, its sockets closed by the kernel, no Goodbye."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGSTOP: the process is frozen; its connections stay up, nothing is read or sent."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    async def reap(self) -> None:
        """Kill if still running, read what is left of stdout, and wait for the exit."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)  # a stopped process dies on SIGKILL
                self.process.send_signal(signal.SIGKILL)
        assert self.process.stdout is not None
        await self.process.stdout.read()  # to EOF: the pipe closes with the process
        await self.process.wait()


class Children:
    """Starts children; ``reap_all`` kills and reaps every one (the fixture calls it)."""

    def __init__(self) -> None:
        self.started: list[Child] = []

    async def start(self, **config: Any) -> Child:
        """Start a child as ``config`` describes, and wait for its ``ready`` line.

        Args (in ``config``):
            role: ``"relay"`` or ``"peer"``.
            identity: Its identity.
            bind: ``{"kind": "zeromq" | "tcp", "port": int}`` (a relay, or a bound peer);
                an address still in use (the port of a process just killed) is retried.
            upstream: For a relay: the address string to connect to.
            connect: For a connecting peer: the address string to connect to.
            options: More keyword arguments for ``cl.Relay``/``cl.Peer`` (JSON values).
            invoke: For a peer: calls to make once open, each a dict of ``method`` and
                optionally ``body``, ``to``, ``timeout``, ``wait_for`` (a peer to wait for
                first).
        """
        quic_server_options()  # the test certificates exist before the child looks for them
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.relayproc",
            json.dumps(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": ROOT},
            cwd=ROOT,
        )
        started = Child(process, config)
        self.started.append(started)
        started.address = await started.line("ready")
        return started

    async def reap_all(self) -> None:
        for started in self.started:
            await started.reap()


if __name__ == "__main__":
    asyncio.run(child(json.loads(sys.argv[1])))
