"""The bed's hands on the system: running ``ip``, ``tc`` and ``nft``, and removing namespaces.

Theory of operation: every change the bed makes goes through ``run``, which runs one command
with a timeout and raises ``NetBedError`` with the command's own message when it fails.
``unavailable_reason`` says, before anything is attempted, why a bed cannot be built here
(not Linux, not root, a command missing); a kernel or container that refuses namespaces is
reported by ``NetBedUnavailableError`` from the first ``ip netns add``.

Removing a namespace (``remove_namespace``) first kills every process still inside it
(``ip netns pids``), with SIGKILL, and waits until none is left: ``ip netns del`` only unlinks
the name, and a process left inside would keep the namespace, its links and its addresses
alive. ``sweep_stale`` does that for every bed namespace whose owner process is gone (a test
run that was killed), and removes their temporary directories.

Only the bed's modules import this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Final

from .plan import PREFIX, BedName, owner_alive

__all__ = [
    "COMMAND_TIMEOUT",
    "REQUIRED_COMMANDS",
    "NetBedError",
    "NetBedUnavailableError",
    "unavailable_reason",
    "run",
    "namespaces",
    "remove_namespace",
    "sweep_stale",
]

#: Seconds any one ``ip``/``tc``/``nft`` command may take.
COMMAND_TIMEOUT: Final = 30.0
#: Seconds the processes of a namespace get to disappear after SIGKILL.
KILL_TIMEOUT: Final = 10.0
#: The commands a bed needs, and the Debian package of each.
REQUIRED_COMMANDS: Final = {"ip": "iproute2", "tc": "iproute2", "nft": "nftables"}


class NetBedError(RuntimeError):
    """A command the bed ran failed; the message has the command and what it printed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NetBedUnavailableError(NetBedError):
    """A bed cannot be built here at all: the message says why (not root, a tool missing...)."""


def unavailable_reason() -> str | None:
    """Why no bed can be built on this machine, or ``None`` if nothing is known against it."""
    if not sys.platform.startswith("linux"):
        return "network namespaces exist only on Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs these tests as root)"
    missing = sorted({pkg for cmd, pkg in REQUIRED_COMMANDS.items() if not shutil.which(cmd)})
    if missing:
        return f"missing commands; install the Debian packages: {' '.join(missing)} (make install)"
    return None


async def run(*argv: str, stdin: str | None = None) -> str:
    """Run ``argv`` to completion and return its standard output.

    Args:
        argv: The command and its arguments.
        stdin: Text for the command's standard input (an ``nft -f -`` script).

    Raises:
        NetBedError: It exited non-zero, or ran longer than ``COMMAND_TIMEOUT``.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            out, err = await process.communicate(None if stdin is None else stdin.encode())
    except TimeoutError:
        process.kill()
        await process.wait()
        raise NetBedError(f"{' '.join(argv)}: no answer within {COMMAND_TIMEOUT:g} s") from None
    if process.returncode:
        text = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        raise NetBedError(f"{' '.join(argv)}: {text} (exit status {process.returncode})")
    return out.decode(errors="replace")


async def namespaces() -> list[str]:
    """The names of the network namespaces that exist now (of any owner)."""
    listing = await run("ip", "netns", "list")
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


async def _pids(namespace: str) -> list[int]:
    try:
        return [int(pid) for pid in (await run("ip", "netns", "pids", namespace)).split()]
    except NetBedError:
        return []  # it is gone already


async def remove_namespace(namespace: str) -> None:
    """Kill everything running in ``namespace``, then delete it (a missing one is fine).

    Raises:
        NetBedError: A process inside survived SIGKILL for ``KILL_TIMEOUT``, or the
            namespace could not be deleted.
    """
    async with asyncio.timeout(KILL_TIMEOUT):
        while pids := await _pids(namespace):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.02)
    if namespace in await namespaces():
        await run("ip", "netns", "del", namespace)


async def sweep_stale() -> list[str]:
    """Remove every bed namespace and temporary directory whose owner is gone; their names.

    Beds of live processes, this one included, are left alone.
    """
    stale = []
    for namespace in await namespaces():
        parsed = BedName.parse(namespace)
        if parsed is not None and not owner_alive(parsed[0]):
            await remove_namespace(namespace)
            stale.append(namespace)
    _remove_stale_directories()
    return stale


def _remove_stale_directories() -> None:
    for directory in Path(tempfile.gettempdir()).glob(f"{PREFIX}-*"):
        parsed = BedName.parse(directory.name)
        if parsed is not None and not owner_alive(parsed[0]):
            shutil.rmtree(directory, ignore_errors=True)
