"""The soak's bookkeeping: calls and failures by kind, and when each server was down.

Theory of operation: every outcome of the load goes through ``Tally``. A failure is counted
by its exception class, and also as *unexpected* unless a server kill explains it: the error
is one a kill causes (``ALLOWED``, or a CURVE handshake cut short: ``HANDSHAKE_CUT``) and it
happened while that transport's server was down or within ``GRACE`` seconds of its new life
being ready (a ``Window``). The soak passes when nothing unexpected was counted.

Only the soak's modules (and their tests) import this module.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Final

__all__ = ["GRACE", "ALLOWED", "HANDSHAKE_CUT", "Window", "Tally", "explained_by_a_kill"]

#: Seconds after a restarted server is ready during which its clients may still report
#: ``PeerDisconnectedError`` (a reconnection waits up to 2 s, then handshakes).
GRACE: Final = 10.0
#: Failure kinds a kill may cause.
ALLOWED: Final = frozenset({"PeerDisconnectedError"})
#: What a ZeroMQ client reports when the server dies in the middle of its CURVE handshake:
#: libzmq cannot tell that from a wrong server key ("handshake failed, no detail"), so a
#: connecting peer raises AuthenticationError. During a kill, that is the kill's doing.
HANDSHAKE_CUT: Final = "security handshake failed"


@dataclass
class Window:
    """A time when one server was down, or had come back less than ``GRACE`` ago."""

    start: float
    end: float | None = None  # None: the server is still down

    def covers(self, now: float) -> bool:
        """Whether ``now`` falls in this window."""
        return self.start <= now and (self.end is None or now <= self.end)


@dataclass
class Tally:
    """Calls and failures of the whole soak, and when each server was down."""

    ok: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    unexpected: collections.Counter[str] = field(default_factory=collections.Counter)
    refused: int = 0
    windows: dict[str, list[Window]] = field(default_factory=lambda: collections.defaultdict(list))

    def succeeded(self, kind: str, count: int = 1) -> None:
        """Count ``count`` successful operations of ``kind``."""
        self.ok[kind] += count

    def failed(self, transport: str, error: BaseException) -> None:
        """Count a failure; remember it as unexpected unless a kill explains it."""
        kind = type(error).__name__
        self.failures[kind] += 1
        if not (explained_by_a_kill(error) and self.in_window(transport)):
            self.unexpected[kind] += 1

    def in_window(self, transport: str) -> bool:
        """Whether ``transport``'s server is down or came back less than ``GRACE`` ago."""
        now = time.monotonic()
        return any(window.covers(now) for window in self.windows[transport])

    def killed(self, transport: str) -> None:
        """The server of ``transport`` is being killed now."""
        self.windows[transport].append(Window(time.monotonic()))

    def restarted(self, transport: str) -> None:
        """The new server of ``transport`` is ready: its window closes ``GRACE`` from now."""
        self.windows[transport][-1].end = time.monotonic() + GRACE


def explained_by_a_kill(error: BaseException) -> bool:
    """Whether a server kill can cause ``error`` (see ``ALLOWED`` and ``HANDSHAKE_CUT``)."""
    if type(error).__name__ in ALLOWED:
        return True
    return type(error).__name__ == "AuthenticationError" and HANDSHAKE_CUT in str(error)
