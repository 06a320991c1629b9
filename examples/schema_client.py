"""A msgpack-schema client on callosum_like: typed calls to idl/kvstore.schema.toml's KVStore.

With the server running in another terminal (see schema_server.py):

    .venv/bin/python examples/schema_client.py --port 5040

On its own, with the server started inside this process on a free port:

    .venv/bin/python examples/schema_client.py --self-contained

Needs the ``schema`` extra (msgspec). The schema format is described in docs/schema.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import runpy
from collections.abc import AsyncIterator
from pathlib import Path

import callosum_like as cl
from callosum_like.upper import schema

# Client and server share the schema file, not code: each loads it at run time.
kvstore = schema.load(Path(__file__).resolve().parent.parent / "idl" / "kvstore.schema.toml")


@contextlib.asynccontextmanager
async def in_process_server() -> AsyncIterator[int]:
    """Run schema_server.py's service in this process on a free port; yield the port."""
    server_module = runpy.run_path(str(Path(__file__).with_name("schema_server.py")))
    async with cl.Peer(bind="tcp://127.0.0.1:0", identity="schema-server") as server:
        server_module["register"](server)
        print(f"started the server in this process on {server.address}")
        yield int(server.address.rsplit(":", 1)[1])


async def talk(port: int) -> None:
    async with cl.Peer(connect=f"tcp://127.0.0.1:{port}", identity="schema-client") as peer:
        kv = schema.SchemaClient(peer, kvstore)  # calls "KVStore.<method>" on the server
        print(f"put('greeting') -> new={await kv.put('greeting', b'hello', tags=['demo'])}")
        print(f"get('greeting') -> {await kv.get('greeting')!r}")
        try:
            await kv.get("missing")
        except kvstore.errors.KeyNotFound as exc:  # declared in the schema: typed, with fields
            print(f"get('missing') -> KeyNotFound(key={exc.key!r})")
        # Calls with one order key are ordered by the server's Ordering for them.
        same_key = kv.with_options(order_key="counter", timeout=5.0)
        await asyncio.gather(*(same_key.put(f"n{i}", bytes([i])) for i in range(3)))
        entries = await kv.scan("n")  # a list of Entry structs
        print(f"scan('n') -> {[(entry.key, entry.value) for entry in entries]}")
        try:
            await kv.put(42, b"")
        except cl.SchemaError as exc:  # nothing was sent
            print(f"put(42, ...) -> SchemaError: {exc}")
        await kv.clear()  # oneway
        print(f"size() after clear() -> {await kv.size()}")
    print("client done")


async def main(port: int, self_contained: bool) -> None:
    if self_contained:
        async with in_process_server() as free_port:
            await talk(free_port)
    else:
        await talk(port)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5040, help="the server's port (default 5040)")
    parser.add_argument(
        "--self-contained", action="store_true", help="start the server in this process"
    )
    args = parser.parse_args()
    try:
        asyncio.run(main(args.port, args.self_contained))
    except TimeoutError:
        raise SystemExit(
            f"no server answered on port {args.port}; start schema_server.py"
        ) from None
