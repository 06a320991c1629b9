"""The calls in flight through a relay, found by either hop's (link, call id).

Only ``relay`` uses this module (docs/federation.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from .interceptors import ForwardDone
from .link import Link

__all__ = ["Forward", "ForwardTable"]


@dataclass(eq=False, slots=True)
class Forward:
    """One call in flight through the relay: where it came from and where it went."""

    caller_link: Link
    caller_id: int
    callee_link: Link
    callee_id: int
    done: list[ForwardDone] | None = None  # the interceptors to tell how it ended


class ForwardTable:
    """The calls in flight through the relay, found by either end's (link, id)."""

    def __init__(self) -> None:
        self._by_caller: dict[Link, dict[int, Forward]] = {}
        self._by_callee: dict[Link, dict[int, Forward]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, fwd: Forward) -> None:
        """Hold ``fwd`` until either of its links ends or its reply passes."""
        self._by_caller.setdefault(fwd.caller_link, {})[fwd.caller_id] = fwd
        self._by_callee.setdefault(fwd.callee_link, {})[fwd.callee_id] = fwd
        self._count += 1

    def from_caller(self, link: Link, call_id: int) -> Forward | None:
        """The call that came in on ``link`` as ``call_id``."""
        return self._by_caller.get(link, {}).get(call_id)

    def to_callee(self, link: Link, call_id: int) -> Forward | None:
        """The call that went out on ``link`` as ``call_id``."""
        return self._by_callee.get(link, {}).get(call_id)

    def remove(self, fwd: Forward) -> None:
        """Forget ``fwd`` (nothing happens if it is gone already)."""
        if _pop(self._by_caller, fwd.caller_link, fwd.caller_id):
            _pop(self._by_callee, fwd.callee_link, fwd.callee_id)
            self._count -= 1

    def pop_caller(self, link: Link) -> list[Forward]:
        """Forget and return the calls that came in on ``link``."""
        return self._pop_all(list(self._by_caller.get(link, {}).values()))

    def pop_callee(self, link: Link) -> list[Forward]:
        """Forget and return the calls that went out on ``link``."""
        return self._pop_all(list(self._by_callee.get(link, {}).values()))

    def pop_everything(self) -> list[Forward]:
        """Forget and return every call."""
        return self._pop_all([f for calls in self._by_caller.values() for f in calls.values()])

    def _pop_all(self, forwards: list[Forward]) -> list[Forward]:
        for fwd in forwards:
            self.remove(fwd)
        return forwards


def _pop(table: dict[Link, dict[int, Forward]], link: Link, call_id: int) -> bool:
    calls = table.get(link)
    if calls is None or calls.pop(call_id, None) is None:
        return False
    if not calls:
        del table[link]
    return True
