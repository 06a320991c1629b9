"""The parent's side of the tools' child processes: one supervisor and one set of timeouts.

Theory of operation: the demo, the benchmark and the soak each run their servers and clients
as child processes, and all of them through ``ChildProcess``. A child speaks a small line
protocol on its stdout (``child.py`` is its other half):

* ``READY <address>``: the child is bound and serving at ``address`` (``ready()`` returns it).
* ``RESULT <json>``: a benchmark client's figures (kept in ``result``).
* Anything else is output: printed with the child's label when ``relay`` is on (the demo, the
  soak), and its last ``TAIL_LINES`` kept for error reports either way (``tail()``).

A reader task consumes the output from the start, so a child never blocks on a full pipe.
Stopping is explicit and bounded: leaving the ``async with`` closes the child's stdin, which
is how a child is asked to stop (so one whose parent died stops too); a child that has not
exited after ``STOP_TIMEOUT`` is terminated, and after ``KILL_TIMEOUT`` more, killed. Every
child is reaped, and the stop runs to its end even when the caller is cancelled.

Only the tools import this module.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

__all__ = [
    "READY_TIMEOUT",
    "STOP_TIMEOUT",
    "KILL_TIMEOUT",
    "TAIL_LINES",
    "SOURCE_TREE",
    "ChildProcess",
    "subcommand",
    "python_path",
    "child_environment",
    "pinned",
]

#: Seconds a child gets to print its ``READY`` line (interpreter start, imports, bind).
READY_TIMEOUT: Final = 20.0
#: Seconds a child gets to exit after its stdin closed, before it is terminated.
STOP_TIMEOUT: Final = 5.0
#: Seconds a terminated child gets before it is killed, and its output to end after exit.
KILL_TIMEOUT: Final = 2.0
#: Lines of a child's output kept for error reports.
TAIL_LINES: Final = 8
#: The source tree this package was imported from (children are pointed at it).
SOURCE_TREE: Final = Path(__file__).resolve().parents[2]


def subcommand(*args: str) -> list[str]:
    """The command line of ``python -u -m callosum_like ARGS`` with this interpreter."""
    return [sys.executable, "-u", "-m", "callosum_like", *args]


def python_path(root: str | None = None) -> str:
    """A ``PYTHONPATH`` whose children import this package (or the one under ``root``).

    Children find it this way even when it is not installed.
    """
    tree = root or str(SOURCE_TREE)
    return os.pathsep.join(filter(None, [tree, os.environ.get("PYTHONPATH")]))


def child_environment(root: str | None = None) -> dict[str, str]:
    """This process's environment, for a child that must import the package under ``root``.

    ``python -m`` puts the working directory first on ``sys.path``, before ``PYTHONPATH``:
    run from a source tree, a child would import that tree whatever ``PYTHONPATH`` says (a
    ``--baseline`` run would measure this tree twice). ``PYTHONSAFEPATH`` leaves it out.
    """
    return {**os.environ, "PYTHONPATH": python_path(root), "PYTHONSAFEPATH": "1"}


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Confine this thread to ``cpu`` for the block (processes forked meanwhile inherit it).

    ``None`` changes nothing.
    """
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class ChildProcess:
    """One child process, as an async context manager (see the module's theory of operation).

    Args:
        label: Prefix of the child's relayed output lines, and its name in errors.
        argv: The full command line (``subcommand(...)`` for this package's subcommands).
        relay: Print the child's output lines (stdout and stderr, merged) with ``label``.
        stops_on_eof: The child exits by itself once its stdin closes; when False it is
            terminated at once if it still runs on leaving the ``async with``.
        env: The child's environment (default: ours).
        cpu: Start the child confined to this CPU (it and all its threads), or ``None``.
    """

    def __init__(
        self,
        label: str,
        argv: Sequence[str],
        *,
        relay: bool = True,
        stops_on_eof: bool = True,
        env: Mapping[str, str] | None = None,
        cpu: int | None = None,
    ) -> None:
        self.label = label
        self._argv = list(argv)
        self._relay = relay
        self._stops_on_eof = stops_on_eof
        self._env = None if env is None else dict(env)
        self._cpu = cpu
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()  # set on the READY line, or at the end of the output
        self._address: str | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        #: The text after the child's ``RESULT`` line, once it printed one.
        self.result: str | None = None

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self._process is not None
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """The child's exit status, or ``None`` while it runs."""
        assert self._process is not None
        return self._process.returncode

    async def __aenter__(self) -> Self:
        with pinned(self._cpu):  # the fork happens in here: the child starts on its CPU
            self._process = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self._env,
            )
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self._stop())

    async def ready(self, timeout: float = READY_TIMEOUT) -> str:
        """Wait for the child's ``READY <address>`` line and return the address.

        Raises:
            TimeoutError: No ``READY`` line within ``timeout`` seconds.
            RuntimeError: The child's output ended without one.
        """
        async with asyncio.timeout(timeout):
            await self._ready.wait()
        if self._address is None:
            raise RuntimeError(f"{self.label} exited before it was ready")
        return self._address

    async def wait(self, timeout: float) -> int:
        """Wait for the child to exit by itself and its output to end; return its status.

        Raises:
            TimeoutError: It is still running after ``timeout`` seconds.
        """
        assert self._process is not None
        assert self._reader is not None
        async with asyncio.timeout(timeout):
            status = await self._process.wait()
            await self._reader
        return status

    def tail(self) -> str:
        """The child's last output lines (``READY`` and ``RESULT`` aside), joined by `` / ``."""
        return " / ".join(line for line in self._tail if line.strip())

    async def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        while line := await self._process.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            if text.startswith("READY ") and self._address is None:
                self._address = text.removeprefix("READY ")
                self._ready.set()
            elif text.startswith("RESULT "):
                self.result = text.removeprefix("RESULT ")
            else:
                self._tail.append(text)
                if self._relay:
                    print(f"{self.label} | {text}".rstrip(), flush=True)
        self._ready.set()

    async def _exited(self, timeout: float) -> bool:
        assert self._process is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._process.wait()
        return self._process.returncode is not None

    async def _stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()  # the request to stop
            with contextlib.suppress(ConnectionError):
                await process.stdin.wait_closed()
        if not await self._exited(STOP_TIMEOUT if self._stops_on_eof else 0):
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            if not await self._exited(KILL_TIMEOUT):
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KILL_TIMEOUT):
                    await self._reader
