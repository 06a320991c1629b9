"""Many deadlines on one timer: the per-call timeouts of the Peer and of the dispatcher.

Theory of operation: every call with a timeout needs a deadline, and almost every deadline is
met (the reply comes first) and then thrown away. ``asyncio.timeout`` costs a ``Timeout``
object, a timer handle pushed on the loop's heap and a task lookup per call: about 6 us, a
sixth of a small call's whole cost on each side. ``Deadlines`` costs an append and, when the
call ends, a flag.

* Deadlines are grouped by their length in seconds. Within a group they expire in the order
  they were added (the loop's clock only moves forward), so each group is a FIFO ``deque``
  and the earliest deadline of the group is at its front. Calls nearly always share one
  length (a peer's ``invoke_timeout``), so there are few groups.
* One ``TimerHandle`` is armed for the earliest front of all groups. When it fires, every
  expired deadline calls its callback, in order, and the timer is armed again.
* ``discard`` only marks a deadline dead; the dead are dropped when they reach the front of
  their group, and all at once (``_compact``) when they outnumber the live ones, so memory
  stays bounded by the calls in flight (twice that, plus ``COMPACT_SLACK``).

Callbacks run from the loop, not from the task that added the deadline; an exception in one
is logged and does not stop the others. Only the Peer and the dispatcher use this module.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Final

__all__ = ["Deadline", "Deadlines", "COMPACT_SLACK"]

log = logging.getLogger(__name__)

#: Dead deadlines tolerated beyond the live ones before they are swept out at once.
COMPACT_SLACK: Final = 256


class Deadline:
    """One deadline: when it is due, and what to call then (``None`` once dead or fired)."""

    __slots__ = ("arg", "callback", "when")

    def __init__(self, when: float, callback: Callable[[Any], object], arg: object) -> None:
        self.when = when
        self.callback: Callable[[Any], object] | None = callback
        self.arg = arg


class Deadlines:
    """Deadlines of any length, served by one timer of the running loop."""

    def __init__(self) -> None:
        self._groups: dict[float, deque[Deadline]] = {}
        self._timer: asyncio.TimerHandle | None = None
        #: The loop of the first ``add`` (until ``clear``): ``asyncio.get_running_loop`` is a
        #: ``getpid`` system call per use on Python 3.11, and ``add`` runs on every call.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer_at = math.inf
        self._held = 0  # deadlines in the groups, live or dead
        self._live = 0

    def __len__(self) -> int:
        """Live deadlines."""
        return self._live

    @property
    def held(self) -> int:
        """Deadlines stored, live or dead: at most ``2 * len(self) + COMPACT_SLACK``."""
        return self._held

    def add(self, seconds: float, callback: Callable[[Any], object], arg: object) -> Deadline:
        """Call ``callback(arg)`` from the loop in ``seconds``, unless discarded first."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = Deadline(loop.time() + seconds, callback, arg)
        group = self._groups.get(seconds)
        if group is None:
            group = self._groups[seconds] = deque()
        group.append(deadline)
        self._held += 1
        self._live += 1
        if deadline.when < self._timer_at:
            self._arm(loop, deadline.when)
        return deadline

    def discard(self, deadline: Deadline) -> None:
        """The deadline is no longer needed (it may have fired already: then nothing)."""
        if deadline.callback is None:
            return
        deadline.callback = deadline.arg = None
        self._live -= 1
        if self._held > 2 * self._live + COMPACT_SLACK:
            self._compact()

    def clear(self) -> None:
        """Forget every deadline and stop the timer."""
        for group in self._groups.values():
            for deadline in group:
                deadline.callback = deadline.arg = None
        self._groups.clear()
        self._held = self._live = 0
        self._loop = None
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire)
        self._timer_at = when

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        due: list[Deadline] = []
        for seconds, group in list(self._groups.items()):
            while group and (group[0].callback is None or group[0].when <= now):
                deadline = group.popleft()
                self._held -= 1
                if deadline.callback is not None:
                    due.append(deadline)
            if not group:
                del self._groups[seconds]
        self._live -= len(due)
        self._rearm(loop)
        for deadline in sorted(due, key=_when):
            callback, arg = deadline.callback, deadline.arg
            deadline.callback = deadline.arg = None
            try:
                callback(arg)  # type: ignore[misc]
            except Exception:
                log.exception("deadline callback %r failed", callback)

    def _rearm(self, loop: asyncio.AbstractEventLoop) -> None:
        earliest = min((group[0].when for group in self._groups.values()), default=math.inf)
        if earliest < math.inf:
            self._arm(loop, earliest)

    def _compact(self) -> None:
        for seconds, group in list(self._groups.items()):
            live = deque(d for d in group if d.callback is not None)
            if live:
                self._groups[seconds] = live
            else:
                del self._groups[seconds]
        self._held = self._live


def _when(deadline: Deadline) -> float:
    return deadline.when
