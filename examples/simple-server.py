"""A minimal callosum_like server: serves ``echo`` and ``add`` until Ctrl-C (or SIGTERM).

Run it, then the client in another terminal:

    .venv/bin/python examples/simple-server.py --port 5020
    .venv/bin/python examples/simple-client.py --port 5020

``--port 0`` picks a free port; the server prints the address it really listens on.
The client's ``--self-contained`` flag runs this server inside the client's process instead.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import callosum_like as cl


async def echo(request: cl.Request) -> object:
    """Return the body unchanged."""
    return request.body


async def add(request: cl.Request) -> object:
    """Add a list of numbers; a wrong body raises, and the caller gets the traceback."""
    return sum(request.body)


def register(server: cl.Peer) -> None:
    """Put this server's handlers on a peer (the client's --self-contained mode uses it too)."""
    # The client calls add with a wrong body on purpose, to show the remote traceback it
    # gets; the serving side need not log that expected error too (it would, at ERROR).
    logging.getLogger("callosum_like.handlers").setLevel(logging.CRITICAL)
    server.handle_function("echo", echo)
    server.handle_function("add", add)


async def serve(port: int) -> None:
    async with cl.Peer(bind=f"tcp://127.0.0.1:{port}", identity="simple-server") as server:
        register(server)
        print(f"serving on {server.address} (Ctrl-C to stop)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        stats = server.statistics()
    print(f"server closed after serving {stats.calls_in} calls", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5020, help="TCP port (default 5020; 0: any)")
    args = parser.parse_args()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
