"""The end-to-end demo behind ``python -m callosum_like demo``, and its child processes.

Theory of operation: ``run_demo`` is the narrator's stage manager. It starts a *server*
process (``python -m callosum_like demo-server``), which binds 127.0.0.1 port 0 and prints
``READY <address>``, then a *client* process (``demo-client --connect <address>``), which
connects and tells the story: calls to the server, the server calling back into the client
while it serves the client's call, the three orderings side by side, and errors crossing the
wire. Both children's output is relayed line by line with a label.

Shutdown is explicit and bounded: the client exits when its story is told; the server exits
when its stdin reaches end-of-file, which is how ``supervisor.ChildProcess`` asks a child to
stop (so a server whose parent died stops too), and is terminated, then killed, if it does
not; every child is waited for, so none is left behind.

Only ``__main__`` imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
from typing import Final

from .. import auth
from ..errors import MethodNotFoundError, RPCUserError
from ..ordering import Ordering
from ..peer import Peer
from ..request import Body, Request
from .child import bind_address, connect_address, ignore_sigint, say_ready, wait_for_stdin_eof
from .demo_typed import register_typed, typed_calls
from .supervisor import ChildProcess, subcommand

__all__ = [
    "DEMO_TIMEOUT",
    "run_demo",
    "serve_demo",
    "run_demo_client",
]

#: Seconds the whole demo may take; it normally needs two or three.
DEMO_TIMEOUT: Final = 20.0
#: Seconds any single call of the demo may take; every call is far quicker.
CALL_TIMEOUT: Final = 5.0

#: The ordering burst: (call number, seconds its handler sleeps). Sent at once, one order key.
BURST: Final = ((1, 0.20), (2, 0.05), (3, 0.15), (4, 0.10))
ORDERINGS: Final = (Ordering.UNORDERED, Ordering.ORDERED, Ordering.SERIALIZED)


# --- the stage manager --------------------------------------------------------------------------


async def run_demo(transport: str = "zeromq", timeout: float = DEMO_TIMEOUT) -> int:
    """Run the demo: a server process, a client process, and their relayed output.

    Returns:
        0 when both processes exited 0, else 1.
    """
    name = {"zeromq": "ZeroMQ", "tcp": "plain TCP"}[transport]
    print(f"callosum_like demo: a server process and a client process on 127.0.0.1 ({name})")
    print()
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            server_status, client_status = await _run_children(transport)
    except TimeoutError:
        print(f"demo: did not finish within {timeout} s", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    print()
    print(
        f"demo finished in {elapsed:.1f} s: server exited {server_status}, "
        f"client exited {client_status}"
    )
    return 0 if server_status == client_status == 0 else 1


async def _run_children(transport: str) -> tuple[int | None, int | None]:
    with tempfile.TemporaryDirectory(prefix="callosum-demo-") as keys:
        security: list[str] = []
        if transport == "zeromq":
            # CURVE on: each side gets its own keypair and knows the other's public key only.
            auth.save_keypair(auth.generate_keypair(), os.path.join(keys, "server"))
            auth.save_keypair(auth.generate_keypair(), os.path.join(keys, "client"))
            security = ["--keys", keys]
            print(f"CURVE is on: keypairs in {keys} (written as by 'keygen'); the server")
            print("allows only the client's public key, under the user id 'demo-client'")
            print()
        server_argv = ["demo-server", "--transport", transport, *security]
        async with ChildProcess("server", subcommand(*server_argv)) as server:
            address = await server.ready()
            argv = ["demo-client", "--transport", transport, "--connect", address, *security]
            async with ChildProcess("client", subcommand(*argv), stops_on_eof=False) as client:
                await client.wait(DEMO_TIMEOUT)
    return server.returncode, client.returncode


def server_authenticator(keys: str | None) -> auth.ServerAuthenticator | None:
    """The demo server's CURVE authenticator, from the keys ``run_demo`` wrote."""
    if keys is None:
        return None
    client_public = auth.load_public_key(os.path.join(keys, "client"))
    server_keys = auth.load_keypair(os.path.join(keys, "server"))
    return auth.ServerAuthenticator(server_keys, allowed={client_public: "demo-client"})


def client_authenticator(keys: str | None) -> auth.ClientAuthenticator | None:
    """The demo client's CURVE authenticator, from the keys ``run_demo`` wrote."""
    if keys is None:
        return None
    server_public = auth.load_public_key(os.path.join(keys, "server"))
    client_keys = auth.load_keypair(os.path.join(keys, "client"))
    return auth.ClientAuthenticator(client_keys, server_public_key=server_public)


# --- the server process ------------------------------------------------------------------------


class DemoService:
    """The server process's handlers, and what they remember for the client to ask about."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.work_log: dict[str, list[tuple[str, int]]] = {}
        self.nap_cancelled = asyncio.Event()

    def register(self) -> None:
        """Register every handler of the demo on the peer."""
        peer = self.peer
        peer.handle_function("echo", self.echo)
        peer.handle_function("whoami", self.whoami)
        peer.handle_function("sum_of_squares", self.sum_of_squares)
        peer.handle_function("divide", self.divide)
        peer.handle_function("nap", self.nap)
        peer.handle_function("nap.was_cancelled", self.nap_was_cancelled)
        peer.handle_function("work.log", self.work_log_of)
        for ordering in ORDERINGS:
            peer.handle_function(f"work.{ordering.value}", self.work, ordering=ordering)

    async def echo(self, request: Request) -> Body:
        """Return the body as it came."""
        return request.body

    async def whoami(self, request: Request) -> Body:
        """Say who served the call, for whom, and with which headers."""
        return {"pid": os.getpid(), "peer_id": request.peer_id, "headers": dict(request.headers)}

    async def sum_of_squares(self, request: Request) -> Body:
        """Sum the squares of the numbers, asking the *caller* to square each one."""
        total = 0
        for number in request.body:
            total += await self.peer.invoke("square", number, to=request.peer_id)
        return total

    async def divide(self, request: Request) -> Body:
        """Divide; dividing by zero raises, and the caller gets the traceback."""
        dividend, divisor = request.body
        return dividend / divisor

    async def nap(self, request: Request) -> Body:
        """Sleep for the given seconds; remember being cancelled."""
        try:
            await asyncio.sleep(request.body)
        except asyncio.CancelledError:
            self.nap_cancelled.set()
            raise
        return "rested"

    async def nap_was_cancelled(self, request: Request) -> Body:
        """Whether a ``nap`` was cancelled (waits briefly: the Cancel may still be on its way)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self.nap_cancelled.wait()
        return self.nap_cancelled.is_set()

    async def work(self, request: Request) -> Body:
        """Sleep as long as the body says, logging when the handler starts and finishes."""
        number, seconds = request.body
        log = self.work_log.setdefault(request.method, [])
        log.append(("start", number))
        try:
            await asyncio.sleep(seconds)
        finally:
            log.append(("finish", number))
        return number

    async def work_log_of(self, request: Request) -> Body:
        """Return and forget the start/finish log of one ``work.*`` method."""
        return self.work_log.pop(request.body, [])


async def serve_demo(transport: str, keys: str | None = None) -> int:
    """The server process: serve the demo until stdin closes (with CURVE when given keys)."""
    ignore_sigint()
    async with Peer(
        bind=bind_address(transport),
        identity="demo-server",
        invoke_timeout=CALL_TIMEOUT,
        authenticator=server_authenticator(keys),
    ) as server:
        # The client makes handlers fail on purpose, to show the errors it gets; the server
        # need not log those expected errors too (it would, at ERROR, with tracebacks).
        logging.getLogger("callosum_like.handlers").setLevel(logging.CRITICAL)
        DemoService(server).register()
        register_typed(server)
        say_ready(server.address)
        print(f"listening on {server.address} (pid {os.getpid()})", flush=True)
        await wait_for_stdin_eof()
        stats = server.statistics()
        print("asked to stop: closing", flush=True)
    print(
        f"closed cleanly after {stats.calls_in} calls in and {stats.calls_out} calls out",
        flush=True,
    )
    return 0


# --- the client process -----------------------------------------------------------------------


async def run_demo_client(transport: str, address: str, keys: str | None = None) -> int:
    """The client process: connect (with CURVE when given keys) and tell the story."""
    ignore_sigint()
    async with Peer(
        connect=connect_address(transport, address),
        identity="demo-client",
        invoke_timeout=CALL_TIMEOUT,
        connect_timeout=CALL_TIMEOUT,
        authenticator=client_authenticator(keys),
    ) as client:
        client.handle_function("square", _square)
        how = "authenticated and encrypted with CURVE" if keys else "in plaintext"
        _say(f"connected to {address} as {client.identity!r}, {how} (pid {os.getpid()})")
        await _calls_to_the_server(client)
        await _calls_back(client)
        await _orderings(client)
        await _errors(client)
        _heading("5. Typed calls: a Thrift service and a msgpack-schema service, same peers")
        await typed_calls(client, _say)
        stats = client.statistics()
    _heading("6. Statistics of the client (peer.statistics())")
    _say(
        f"   calls out {stats.calls_out}, calls in {stats.calls_in}, "
        f"bytes out {stats.bytes_out}, bytes in {stats.bytes_in}, "
        f"dropped messages {stats.dropped_messages}"
    )
    return 0


def _say(text: str = "") -> None:
    print(text, flush=True)


def _heading(text: str) -> None:
    _say()
    _say(f"== {text}")


async def _square(request: Request) -> Body:
    number = request.body
    _say(f"   <- the server calls the client: square({number}) -> {number * number}")
    return number * number


async def _calls_to_the_server(client: Peer) -> None:
    _heading("1. The client calls the server")
    body = {"x": [1, 2, b"\x00"]}
    started = time.perf_counter()
    reply = await client.invoke("echo", body)
    took = (time.perf_counter() - started) * 1000
    _say(f"   echo({body!r}) -> {reply!r}   ({took:.1f} ms)")
    who = await client.invoke("whoami", headers={"trace-id": "demo-1"})
    _say(f"   whoami() with headers {{'trace-id': 'demo-1'}} -> {who!r}")
    _say(
        f"   (served by the server process, pid {who['pid']}, which knows us as {who['peer_id']!r})"
    )


async def _calls_back(client: Peer) -> None:
    _heading("2. The server calls the client back while serving the client's call")
    _say("   -> the client calls sum_of_squares([2, 3, 4]); the server asks the client to square")
    total = await client.invoke("sum_of_squares", [2, 3, 4])
    _say(f"   sum_of_squares([2, 3, 4]) -> {total}")


async def _burst(client: Peer, ordering: Ordering) -> dict[str, str]:
    method = f"work.{ordering.value}"
    replies: list[int] = []

    async def one(number: int, seconds: float) -> None:
        replies.append(await client.invoke(method, [number, seconds], order_key="k"))

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for number, seconds in BURST:
            group.create_task(one(number, seconds))
    took = time.perf_counter() - started
    log = await client.invoke("work.log", method)
    running = most = 0
    for event, _ in log:
        running += 1 if event == "start" else -1
        most = max(most, running)
    return {
        "started": " ".join(str(n) for event, n in log if event == "start"),
        "finished": " ".join(str(n) for event, n in log if event == "finish"),
        "server log": " ".join(f"{event[0]}{n}" for event, n in log),
        "replies": " ".join(map(str, replies)),
        "most at once": str(most),
        "took": f"{took:.2f} s",
    }


async def _orderings(client: Peer) -> None:
    _heading("3. Orderings: the same burst of 4 calls, all with order_key='k'")
    sleeps = ", ".join(f"#{n} {int(s * 1000)} ms" for n, s in BURST)
    _say(f"   sent at once, in order 1 2 3 4; the handler sleeps {sleeps}")
    columns = [await _burst(client, ordering) for ordering in ORDERINGS]
    _say()
    _say(f"   {'':<16}" + "".join(f"{o.name:<22}" for o in ORDERINGS))
    for row in ("started", "finished", "replies", "most at once", "took"):
        _say(f"   {row:<16}" + "".join(f"{column[row]:<22}" for column in columns).rstrip())
    _say()
    _say("   started/finished: the order the server's handlers began and ended;")
    _say("   replies: the order the client got the answers.")
    _say("   the server's log (s = a handler started, f = it finished):")
    for ordering, column in zip(ORDERINGS, columns, strict=True):
        _say(f"     {ordering.name:<12}{column['server log']}")
    _say()
    _say("   UNORDERED  runs them together and replies as each finishes")
    _say("   ORDERED    runs them together, but releases the replies in arrival order")
    _say("   SERIALIZED runs them one at a time, in arrival order")


async def _errors(client: Peer) -> None:
    _heading("4. Errors cross the wire")
    try:
        await client.invoke("divide", [1, 0])
    except RPCUserError as exc:
        _say("   divide([1, 0]) raised cl.RPCUserError")
        _say(f"     .name = {exc.name!r}")
        _say(f"     .repr = {exc.repr!r}")
        _say("     .traceback, from the server process:")
        for line in exc.traceback.rstrip().splitlines():
            _say(f"       {line}")
    try:
        await client.invoke("no_such_method")
    except MethodNotFoundError as exc:
        _say(f"   no_such_method() raised cl.MethodNotFoundError: {exc}")
    started = time.perf_counter()
    try:
        await client.invoke("nap", 30.0, timeout=0.2)
    except TimeoutError as exc:
        took = time.perf_counter() - started
        kind = f"TimeoutError (cl.{type(exc).__name__})"
        _say(f"   nap(30.0) with timeout=0.2 raised {kind} after {took:.2f} s")
    cancelled = await client.invoke("nap.was_cancelled")
    _say(f"   ... and the server says its nap handler was cancelled: {cancelled}")
