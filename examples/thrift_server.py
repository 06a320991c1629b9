"""A Thrift service on callosum_like: serves idl/kvstore.thrift's KVStore until Ctrl-C.

Run it, then the client in another terminal:

    .venv/bin/python examples/thrift_server.py --port 5030
    .venv/bin/python examples/thrift_client.py --port 5030

``--port 0`` picks a free port; the server prints the address it really listens on.
The client's ``--self-contained`` flag runs this server inside the client's process instead.
Needs the ``thrift`` extra (thriftpy2).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

import thriftpy2

import callosum_like as cl
from callosum_like.upper.thrift import ThriftServer, current_request

IDL = Path(__file__).resolve().parent.parent / "idl" / "kvstore.thrift"
kvstore = thriftpy2.load(str(IDL), module_name="kvstore_thrift")
CAPACITY = 100


class KVStore:
    """Implements the KVStore service: one method per Thrift function, sync or async."""

    def __init__(self) -> None:
        self._entries: dict[str, Any] = {}  # kvstore.Entry structs

    async def get(self, key: str) -> bytes:
        if key not in self._entries:
            raise kvstore.KeyNotFound(key=key)  # declared: the client gets a KeyNotFound
        return bytes(self._entries[key].value)

    def put(self, key: str, value: bytes, tags: list[str] | None) -> bool:
        if key not in self._entries and len(self._entries) >= CAPACITY:
            raise kvstore.StoreFull(capacity=CAPACITY)
        new = key not in self._entries
        self._entries[key] = kvstore.Entry(key=key, value=value, tags=tags or [])
        return new

    def remove(self, key: str) -> None:
        self._entries.pop(key, None)

    def scan(self, prefix: str) -> list[Any]:
        return [entry for key, entry in sorted(self._entries.items()) if key.startswith(prefix)]

    def size(self) -> int:
        return len(self._entries)

    def clear(self) -> None:  # oneway: the client does not get a result
        print(f"clear() requested by {current_request().peer_id!r}", flush=True)
        self._entries.clear()


def register(server: cl.Peer) -> None:
    """Serve KVStore on a peer (the client's --self-contained mode uses it too)."""
    ThriftServer(kvstore.KVStore, KVStore()).attach(server)


async def serve(port: int) -> None:
    async with cl.Peer(bind=f"tcp://127.0.0.1:{port}", identity="thrift-server") as server:
        register(server)
        print(f"serving KVStore (Thrift) on {server.address} (Ctrl-C to stop)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        stats = server.statistics()
    print(f"server closed after serving {stats.calls_in} calls", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5030, help="TCP port (default 5030; 0: any)")
    args = parser.parse_args()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
