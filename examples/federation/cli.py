"""What the federation example scripts share: CURVE key options, and how they stop.

    examples/federation/cli.py is imported by manager.py, relay.py and agent.py; not run.

Keys live in one directory, one keypair per name, as ``python -m callosum_like keygen
DIR/NAME`` writes them: ``DIR/NAME.key`` (public) and ``DIR/NAME.key_secret``. A bound side
allows the public keys of the names given with ``--allow``, and knows each under that name;
a connecting side needs the public key of the name it connects to.

A script stops cleanly (its ``async with`` blocks close) on SIGTERM or Ctrl-C, and with
``--stop-on-eof`` also when its stdin reaches end-of-file: a launcher that keeps the write
end of that pipe takes all its children with it, however it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from callosum_like import auth

#: Fast heartbeats, so that a process that dies is noticed within seconds.
HEARTBEAT = {"heartbeat_interval": 1.0, "heartbeat_timeout": 3.0}


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", type=Path, help="directory of CURVE keys (turns CURVE on)")
    parser.add_argument("--allow", default="", help="comma-separated names allowed to connect")
    parser.add_argument(
        "--stop-on-eof", action="store_true", help="also stop when stdin reaches end-of-file"
    )


def names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def server_auth(args: argparse.Namespace, name: str) -> auth.ServerAuthenticator | None:
    """The authenticator of ``name``'s bound side, or None without ``--keys``."""
    if args.keys is None:
        return None
    allowed = {auth.load_public_key(args.keys / f"{n}.key"): n for n in names(args.allow)}
    return auth.ServerAuthenticator(auth.load_keypair(args.keys / name), allowed=allowed)


def client_auth(
    args: argparse.Namespace, name: str, server: str
) -> auth.ClientAuthenticator | None:
    """``name`` connecting to ``server``, or None without ``--keys``."""
    if args.keys is None:
        return None
    keypair = auth.load_keypair(args.keys / name)
    server_key = auth.load_public_key(args.keys / f"{server}.key")
    return auth.ClientAuthenticator(keypair, server_public_key=server_key)


class _EndOfInput(asyncio.Protocol):
    def __init__(self, ended: asyncio.Event) -> None:
        self.ended = ended

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended.set()


async def wait_for_stop(args: argparse.Namespace) -> None:
    """Return on SIGTERM or SIGINT (or, with ``--stop-on-eof``, when our parent goes away)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pipe = None
    if args.stop_on_eof:
        pipe, _ = await loop.connect_read_pipe(lambda: _EndOfInput(stop), sys.stdin)
    try:
        await stop.wait()
    finally:
        if pipe is not None:
            pipe.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
