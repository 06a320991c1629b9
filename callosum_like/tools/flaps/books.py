"""The books of a flap run: what each node called, what it ran, and the verdict on them.

Theory of operation: every operation of the load has an id unique in the whole run,
``NODE/KIND/N`` (the calling node's name, the kind of operation, a serial number). The
caller writes its outcome in ``Books.made`` (``OK``, or the class name of the error it
raised); the side that serves it counts each run of a handler for that id in ``Books.ran``
(and each cancellation in ``Books.cancelled``); a stream's receiver checks the items it got
(``check_stream``) and adds what was lost, repeated or out of order. A node sends its books
to the parent as plain data (``Books.report``).

``judge`` puts the reports of the nodes of one path (a manager and an agent, which call each
other) side by side: a call that succeeded must have run exactly once on the other side,
no call may have run twice, nothing may have run that nobody called, and every stream must
have arrived whole and in order. ``Verdict.passed`` says whether all of that holds and no
call failed.

No I/O here: the nodes (``node``) and the parent (``stage``, ``figures``) use it.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["OK", "STUCK", "Books", "StreamCheck", "Verdict", "check_stream", "judge", "percentile"]

#: The outcome of an operation that did what it should.
OK: Final = "ok"
#: The outcome of an operation still running when the load was told to stop and drained.
STUCK: Final = "Stuck"


@dataclass(frozen=True, slots=True)
class StreamCheck:
    """What was wrong with one stream's items: lost, repeated, and whether out of order."""

    lost: int = 0
    repeated: int = 0
    reordered: bool = False

    @property
    def intact(self) -> bool:
        """Every item arrived once, in order."""
        return not (self.lost or self.repeated or self.reordered)


def check_stream(items: Sequence[Any], count: int) -> StreamCheck:
    """Check that ``items`` is ``0 .. count-1`` in order; say what differs.

    An item outside that range counts as repeated (it is one too many); ``reordered`` is
    about the first arrival of each item.
    """
    expected = range(count)
    seen: list[Any] = list(dict.fromkeys(items))  # first arrivals, in order
    lost = len(set(expected) - set(seen))
    repeated = len(items) - len(seen) + sum(1 for item in seen if item not in expected)
    firsts = [item for item in seen if item in expected]
    return StreamCheck(lost=lost, repeated=repeated, reordered=firsts != sorted(firsts))


@dataclass
class Books:
    """One node's books (see the module's theory of operation)."""

    #: Outcome of each operation this node made, by id.
    made: dict[str, str] = field(default_factory=dict)
    #: Runs of a handler, by the id of the operation it served.
    ran: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Handlers cancelled, by id.
    cancelled: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Streams received, and what was wrong with them, summed.
    streams: int = 0
    lost_items: int = 0
    repeated_items: int = 0
    reordered_streams: int = 0

    def made_one(self, op_id: str, outcome: str) -> None:
        """Write the outcome of the operation ``op_id``."""
        self.made[op_id] = outcome

    def received(self, check: StreamCheck) -> None:
        """Add what one received stream's check found."""
        self.streams += 1
        self.lost_items += check.lost
        self.repeated_items += check.repeated
        self.reordered_streams += check.reordered

    @property
    def succeeded(self) -> int:
        """Operations that did what they should, so far."""
        return sum(1 for outcome in self.made.values() if outcome == OK)

    def report(self) -> dict[str, Any]:
        """The books as plain data (for a message body or JSON)."""
        return {
            "made": dict(self.made),
            "ran": dict(self.ran),
            "cancelled": dict(self.cancelled),
            "streams": self.streams,
            "lost_items": self.lost_items,
            "repeated_items": self.repeated_items,
            "reordered_streams": self.reordered_streams,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The books of one path's nodes, judged together."""

    calls: int
    by_kind: Mapping[str, int]
    failed: Mapping[str, int]
    duplicates: int
    missing: int
    strangers: int
    streams: int
    lost_items: int
    repeated_items: int
    reordered_streams: int

    @property
    def passed(self) -> bool:
        """No failure, every call ran once, every stream arrived whole and in order."""
        return not (
            self.failed
            or self.duplicates
            or self.missing
            or self.strangers
            or self.lost_items
            or self.repeated_items
            or self.reordered_streams
        )

    def as_dict(self) -> dict[str, Any]:
        """The verdict as plain data, with ``passed``."""
        return {
            "calls": self.calls,
            "by_kind": dict(self.by_kind),
            "failed": dict(self.failed),
            "duplicates": self.duplicates,
            "missing": self.missing,
            "strangers": self.strangers,
            "streams": self.streams,
            "lost_items": self.lost_items,
            "repeated_items": self.repeated_items,
            "reordered_streams": self.reordered_streams,
            "passed": self.passed,
        }


def judge(reports: Iterable[Mapping[str, Any]]) -> Verdict:
    """Judge the reports (``Books.report``) of nodes that call each other.

    * ``duplicates``: operations whose handler ran more than once;
    * ``missing``: operations that succeeded but whose handler never ran;
    * ``strangers``: handler runs for operations that nobody made.
    """
    made: dict[str, str] = {}
    ran: collections.Counter[str] = collections.Counter()
    totals = collections.Counter[str]()
    for report in reports:
        made.update(report["made"])
        ran.update(report["ran"])
        for key in ("streams", "lost_items", "repeated_items", "reordered_streams"):
            totals[key] += int(report[key])
    failed = collections.Counter(outcome for outcome in made.values() if outcome != OK)
    by_kind = collections.Counter(op_id.split("/")[1] for op_id in made if op_id.count("/") == 2)
    return Verdict(
        calls=len(made),
        by_kind=dict(by_kind),
        failed=dict(failed),
        duplicates=sum(1 for count in ran.values() if count > 1),
        missing=sum(1 for op_id, outcome in made.items() if outcome == OK and not ran[op_id]),
        strangers=sum(1 for op_id in ran if op_id not in made),
        streams=totals["streams"],
        lost_items=totals["lost_items"],
        repeated_items=totals["repeated_items"],
        reordered_streams=totals["reordered_streams"],
    )


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` (0..1) percentile of ``values``, nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(share * len(ordered))))
    return ordered[rank - 1]
