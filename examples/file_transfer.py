"""Stream a file up to a server and back down, with a progress bar, in one process.

    .venv/bin/python examples/file_transfer.py                 # a 64 MiB file of random bytes
    .venv/bin/python examples/file_transfer.py --file PATH     # any file of yours
    .venv/bin/python examples/file_transfer.py --size 512      # 512 MiB of random bytes

Upload: ``invoke("store", pieces())`` with an async generator as the body. The server's
handler reads ``request.body`` with ``async for`` and writes each piece to disk as it comes;
the client never runs more than a window of pieces ahead of the server.

Download: the server's ``fetch`` handler is an async generator that yields the file in
pieces; ``async for piece in client.stream("fetch", name)`` reads them, again with flow
control. Both directions check a SHA-256 at the end. While the transfers run, a small call
(``ping``) goes back and forth on the same connection and is answered between chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import callosum_like as cl

PIECE = 1024 * 1024  # bytes per item; items over the peer's chunk_size travel in chunks


class Progress:
    """A one-line progress bar on stdout (redrawn with a carriage return)."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self.started = time.perf_counter()
        self.shown = -1

    def advance(self, amount: int) -> None:
        self.done += amount
        percent = 100 * self.done // max(self.total, 1)
        if percent != self.shown:
            self.shown = percent
            bar = "#" * (percent // 4)
            sys.stdout.write(f"\r{self.label} [{bar:<25}] {percent:3d}%")
            sys.stdout.flush()

    def finish(self) -> None:
        seconds = time.perf_counter() - self.started
        rate = self.done / 2**20 / seconds if seconds else 0.0
        sys.stdout.write(f"\r{self.label} {self.done / 2**20:.1f} MiB in {seconds:.2f} s")
        sys.stdout.write(f" ({rate:.0f} MiB/s){' ' * 10}\n")


class FileServer:
    """Stores uploads in a directory and serves them back."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def store(self, request: cl.Request) -> dict[str, Any]:
        name = request.headers["name"]
        assert isinstance(name, str)
        digest, size = hashlib.sha256(), 0
        out = await asyncio.to_thread(open, self.directory / name, "wb")
        try:
            async for piece in request.body:  # pieces arrive as the client sends them
                await asyncio.to_thread(out.write, piece)  # disk I/O off the event loop
                digest.update(piece)
                size += len(piece)
        finally:
            await asyncio.to_thread(out.close)
        return {"size": size, "sha256": digest.hexdigest()}

    async def fetch(self, request: cl.Request) -> AsyncIterator[bytes]:
        async for piece in read_pieces(self.directory / request.body):
            yield piece  # the generator waits here while the client is a window behind

    async def ping(self, request: cl.Request) -> str:
        return "pong"


async def read_pieces(path: Path) -> AsyncIterator[bytes]:
    """The file in pieces of ``PIECE`` bytes, read in a thread so the event loop stays free."""
    source = await asyncio.to_thread(open, path, "rb")
    try:
        while piece := await asyncio.to_thread(source.read, PIECE):
            yield piece
    finally:
        await asyncio.to_thread(source.close)


async def pieces(path: Path, progress: Progress) -> AsyncIterator[bytes]:
    async for piece in read_pieces(path):
        progress.advance(len(piece))
        yield piece


async def pinger(client: cl.Peer, answered: list[float]) -> None:
    """Small calls on the same connection while the big transfers run."""
    while True:
        started = time.perf_counter()
        assert await client.invoke("ping") == "pong"
        answered.append(time.perf_counter() - started)
        await asyncio.sleep(0.01)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while piece := source.read(PIECE):
            digest.update(piece)
    return digest.hexdigest()


async def main(path: Path, workdir: Path) -> None:
    server_dir = workdir / "server"
    server_dir.mkdir()
    files = FileServer(server_dir)
    async with cl.Peer(bind="tcp://127.0.0.1:0", identity="files") as server:
        server.handle_function("store", files.store)
        server.handle_function("fetch", files.fetch)
        server.handle_function("ping", files.ping)
        async with cl.Peer(connect=server.address, identity="client") as client:
            size = (await asyncio.to_thread(path.stat)).st_size
            expected = await asyncio.to_thread(sha256_of, path)
            answered: list[float] = []
            ping_task = asyncio.create_task(pinger(client, answered))

            progress = Progress("upload  ", size)
            stored = await client.invoke("store", pieces(path, progress), headers={"name": "f"})
            progress.finish()
            assert stored == {"size": size, "sha256": expected}, stored

            progress = Progress("download", size)
            copy = workdir / "copy"
            out = await asyncio.to_thread(open, copy, "wb")
            try:
                async for piece in client.stream("fetch", "f"):
                    await asyncio.to_thread(out.write, piece)
                    progress.advance(len(piece))
            finally:
                await asyncio.to_thread(out.close)
            progress.finish()
            assert await asyncio.to_thread(sha256_of, copy) == expected

            ping_task.cancel()
            await asyncio.gather(ping_task, return_exceptions=True)
            worst = max(answered) * 1000 if answered else 0.0
            print(f"checksums match: {expected[:16]}...")
            print(f"{len(answered)} small calls during the transfers, slowest {worst:.1f} ms")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, help="the file to send (default: random bytes)")
    parser.add_argument("--size", type=int, default=64, help="MiB of random bytes to send")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        source = args.file
        if source is None:
            source = workdir / "random.bin"
            with open(source, "wb") as out:
                for _ in range(args.size):
                    out.write(os.urandom(2**20))
        asyncio.run(main(source, workdir))
