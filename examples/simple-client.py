"""A minimal callosum_like client: calls the simple server's ``echo`` and ``add``, then exits.

With the server running in another terminal (see simple-server.py):

    .venv/bin/python examples/simple-client.py --port 5020

On its own, with the server started inside this process on a free port:

    .venv/bin/python examples/simple-client.py --self-contained
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import runpy
from collections.abc import AsyncIterator
from pathlib import Path

import callosum_like as cl


@contextlib.asynccontextmanager
async def in_process_server() -> AsyncIterator[int]:
    """Run simple-server.py's handlers in this process on a free port; yield the port."""
    server_module = runpy.run_path(str(Path(__file__).with_name("simple-server.py")))
    async with cl.Peer(bind="tcp://127.0.0.1:0", identity="simple-server") as server:
        server_module["register"](server)
        port = int(server.address.rsplit(":", 1)[1])
        print(f"started the server in this process on {server.address}")
        yield port


async def talk(port: int) -> None:
    async with cl.Peer(connect=f"tcp://127.0.0.1:{port}", identity="simple-client") as client:
        print(f"connected to tcp://127.0.0.1:{port} as {client.identity!r}")
        body = {"greeting": "hello", "numbers": [1, 2, 3], "raw": b"\x00\x01"}
        print(f"echo -> {await client.invoke('echo', body)!r}")
        print(f"add [1, 2, 3.5] -> {await client.invoke('add', [1, 2, 3.5])!r}")
        try:
            await client.invoke("add", ["one", 2])
        except cl.RPCUserError as exc:
            print(f"add ['one', 2] -> the server raised {exc.repr}")
        try:
            await client.invoke("multiply", [2, 3])
        except cl.MethodNotFoundError as exc:
            print(f"multiply -> MethodNotFoundError: {exc}")
    print("client done")


async def main(port: int, self_contained: bool) -> None:
    if self_contained:
        async with in_process_server() as free_port:
            await talk(free_port)
    else:
        await talk(port)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5020, help="the server's port (default 5020)")
    parser.add_argument(
        "--self-contained", action="store_true", help="start the server in this process"
    )
    args = parser.parse_args()
    try:
        asyncio.run(main(args.port, args.self_contained))
    except TimeoutError:  # the handshake did not happen within connect_timeout (10 s)
        raise SystemExit(
            f"no server answered on port {args.port}; start simple-server.py"
        ) from None
