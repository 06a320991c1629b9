"""One node's side of the flap load: the handlers it serves and the operations it makes.

Theory of operation: a ``Load`` wraps the working ``Peer`` of a node (a manager or an agent)
and keeps its ``books.Books``. It serves four methods, each of which counts its runs by the
operation id in the body: ``echo`` (returns the body), ``count`` (a stream of ``n`` numbers,
``interval`` seconds apart), ``block`` (runs until cancelled) and ``sink`` (returns the
length of the body's data).

``start`` runs the mixed load towards each target until ``stop``: ``small`` loops of small
echoes, one loop of large echoes (``big_size`` bytes each way) and one loop of streams; each
operation's outcome goes into the books, and a reply other than the one the handler must
have given is a ``WrongResultError``. ``stop`` lets every loop finish the operation it is in
(an operation still running after ``drain`` seconds is cancelled and stays ``STUCK``).
``hold`` makes calls to ``block`` that end only with an error, and ``held`` waits for those
ends; ``measure`` makes small calls and large uploads one after
the other and returns their times; ``probe`` makes one small call per target once it is
connected.

Only ``node`` imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final

from ...errors import RPCError
from ...peer import Peer
from ...request import Body, Request
from .books import OK, STUCK, Books, check_stream

__all__ = ["CALL_TIMEOUT", "SMALL_SIZE", "Load", "WrongResultError"]

#: Seconds any one operation of the load may take (a flap and a reconnection fit well in it).
CALL_TIMEOUT: Final = 60.0
#: Bytes of a small call's data.
SMALL_SIZE: Final = 64
#: Seconds a loop of the load waits after an operation failed (one that fails at once, with
#: no link, would otherwise keep the event loop to itself).
FAILURE_PAUSE: Final = 0.1


class WrongResultError(Exception):
    """A call returned something other than what its handler must have returned."""


class Load:
    """The load of one node (see the module's theory of operation).

    Args:
        peer: The node's working Peer (open before ``start``).
        name: The node's name: the first part of its operation ids.
        big_size: Bytes of a large body.
        seed: Seeds the random data.
    """

    def __init__(self, peer: Peer, name: str, big_size: int, seed: int = 0) -> None:
        self.peer = peer
        self.name = name
        self.books = Books()
        self.blocked = 0  # ``block`` handlers running now
        self._big = random.Random(seed).randbytes(big_size)
        self._small = random.Random(seed + 1).randbytes(SMALL_SIZE)
        self._serial = itertools.count(1)
        self._stop = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._holds: dict[str, asyncio.Task[tuple[str, float]]] = {}

    # -- serving ---------------------------------------------------------------------------

    def serve(self) -> None:
        """Register the load's handlers on the peer."""
        self.peer.handle_function("echo", self._echo)
        self.peer.handle_function("count", self._count)
        self.peer.handle_function("block", self._block)
        self.peer.handle_function("sink", self._sink)

    async def _echo(self, request: Request) -> Body:
        self.books.ran[_id_of(request)] += 1
        return request.body

    async def _count(self, request: Request) -> AsyncIterator[int]:
        self.books.ran[_id_of(request)] += 1
        body = request.body
        assert isinstance(body, dict)
        for number in range(int(body["n"])):
            if number:
                await asyncio.sleep(float(body["interval"]))
            yield number

    async def _block(self, request: Request) -> Body:
        op_id = _id_of(request)
        self.books.ran[op_id] += 1
        self.blocked += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.books.cancelled[op_id] += 1
            raise
        finally:
            self.blocked -= 1
        return None  # never reached: nothing sets the event

    async def _sink(self, request: Request) -> Body:
        self.books.ran[_id_of(request)] += 1
        body = request.body
        assert isinstance(body, dict)
        return len(body["data"])

    # -- the mixed load --------------------------------------------------------------------

    def start(self, targets: Sequence[str | None], spec: dict[str, Any]) -> None:
        """Run the mixed load towards each of ``targets`` (``None``: the one remote).

        ``spec``: ``small`` (loops of small calls per target), ``big`` (a loop of large
        echoes, of ``big_size`` bytes if given, else of the node's ``big_size``),
        ``streams`` (a loop of streams of ``stream_items`` numbers, ``stream_interval``
        seconds apart).
        """
        self._stop.clear()
        items, interval = int(spec["stream_items"]), float(spec["stream_interval"])
        data = self._big[: int(spec.get("big_size", len(self._big)))]
        for target in targets:
            for _ in range(int(spec["small"])):
                self._loop(functools.partial(self._small_call, to=target), "small")
            if spec["big"]:
                self._loop(functools.partial(self._big_call, to=target, data=data), "big")
            if spec["streams"]:
                stream = functools.partial(self._stream, to=target, items=items, interval=interval)
                self._loop(stream, "stream")

    def _loop(self, operation: Callable[[str], Awaitable[None]], kind: str) -> None:
        async def loop() -> None:
            while not self._stop.is_set():
                if await self._operate(kind, operation) != OK:
                    await asyncio.sleep(FAILURE_PAUSE)  # a call that fails at once: no spin

        self._loops.append(asyncio.create_task(loop()))

    async def stop(self, drain: float) -> None:
        """Stop the load: return once every loop ended (see the module's doc)."""
        self._stop.set()
        loops, self._loops = self._loops, []
        if loops:
            _, stuck = await asyncio.wait(loops, timeout=drain)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _operate(self, kind: str, operation: Callable[[str], Awaitable[None]]) -> str:
        """Make one operation of ``kind`` with a new id; write and return its outcome."""
        op_id = f"{self.name}/{kind}/{next(self._serial)}"
        self.books.made_one(op_id, STUCK)  # until it ends
        try:
            await operation(op_id)
        except (RPCError, TimeoutError, WrongResultError) as exc:
            self.books.made_one(op_id, type(exc).__name__)
        else:
            self.books.made_one(op_id, OK)
        return self.books.made[op_id]

    async def _small_call(self, op_id: str, to: str | None) -> None:
        body = {"id": op_id, "data": self._small}
        _expect(await self.peer.invoke("echo", body, to=to, timeout=CALL_TIMEOUT), body)

    async def _big_call(self, op_id: str, to: str | None, data: bytes) -> None:
        body = {"id": op_id, "data": data}
        _expect(await self.peer.invoke("echo", body, to=to, timeout=CALL_TIMEOUT), body)

    async def _stream(self, op_id: str, to: str | None, items: int, interval: float) -> None:
        body = {"id": op_id, "n": items, "interval": interval}
        got = [item async for item in self.peer.stream("count", body, to=to, timeout=CALL_TIMEOUT)]
        check = check_stream(got, items)
        self.books.received(check)
        if not check.intact:
            raise WrongResultError(f"stream {op_id}: {check}")

    # -- calls that end only with an error -------------------------------------------------

    def hold(self, targets: Sequence[str | None], count: int) -> list[str]:
        """Make ``count`` calls to ``block`` per target; return their ids."""
        ids = []
        for target in targets:
            for _ in range(count):
                op_id = f"{self.name}/hold/{next(self._serial)}"
                self._holds[op_id] = asyncio.create_task(self._held(op_id, target))
                ids.append(op_id)
        return ids

    async def _held(self, op_id: str, to: str | None) -> tuple[str, float]:
        self.books.made_one(op_id, STUCK)
        try:
            await self.peer.invoke("block", {"id": op_id}, to=to)
        except RPCError as exc:
            self.books.made_one(op_id, type(exc).__name__)
        else:
            self.books.made_one(op_id, OK)
        return self.books.made[op_id], time.monotonic()

    async def held(self) -> dict[str, list[Any]]:
        """Wait for every held call to end; each one's outcome and end (``time.monotonic``)."""
        holds, self._holds = self._holds, {}
        ends = await asyncio.gather(*holds.values())
        return {op_id: list(end) for op_id, end in zip(holds, ends, strict=True)}

    # -- measuring and probing -------------------------------------------------------------

    async def measure(self, target: str | None, spec: dict[str, Any]) -> dict[str, Any]:
        """``small`` small calls, then ``big`` uploads of ``big_size`` bytes, one at a time.

        Returns:
            ``small_ms``: each small call's round trip in milliseconds; ``big_seconds``: each
            upload's time from the call to its (small) answer; ``failed``: the calls that
            failed (their times are in the lists too).
        """
        small_ms, big_seconds, failed = [], [], 0
        small = functools.partial(self._small_call, to=target)
        upload = functools.partial(self._upload, to=target, data=self._big[: int(spec["big_size"])])
        for _ in range(int(spec["small"])):
            started = time.perf_counter()
            failed += await self._operate("small", small) != OK
            small_ms.append((time.perf_counter() - started) * 1000)
        for _ in range(int(spec["big"])):
            started = time.perf_counter()
            failed += await self._operate("upload", upload) != OK
            big_seconds.append(time.perf_counter() - started)
        return {"small_ms": small_ms, "big_seconds": big_seconds, "failed": failed}

    async def _upload(self, op_id: str, to: str | None, data: bytes) -> None:
        # No timeout: under heavy loss a large upload may take minutes; it is measured.
        size = await self.peer.invoke("sink", {"id": op_id, "data": data}, to=to)
        _expect(size, len(data))

    async def probe(self, targets: Sequence[str | None], remote: str, wait: float) -> list[str]:
        """One small call per target, each once its remote is connected; the outcomes."""
        outcomes = []
        for target in targets:
            with contextlib.suppress(TimeoutError):
                await self.peer.wait_for_peer(target or remote, timeout=wait)
            call = functools.partial(self._small_call, to=target)
            outcomes.append(await self._operate("probe", call))
        return outcomes


def _id_of(request: Request) -> str:
    body = request.body
    assert isinstance(body, dict)
    return str(body["id"])


def _expect(got: Any, wanted: Any) -> None:
    if got != wanted:
        raise WrongResultError(f"expected {wanted!r:.60}, got {got!r:.60}")
