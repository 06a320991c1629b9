"""The IDL files of idl/, loaded once, and handlers implementing their services.

The Peer fixtures (``make_pair``: a bound ``server`` and a connecting ``agent-1``, over each
transport, always closed) come from tests/conftest.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import thriftpy2

from callosum_like.upper import schema

IDL = Path(__file__).resolve().parents[2] / "idl"


async def until(condition: Callable[[], bool], what: str, seconds: float = 10) -> None:
    """Wait until ``condition()`` holds; fail, saying ``what`` did not happen, after ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {seconds} s: {what}") from None


async def check_one_key_runs_serialized(
    server: Any,
    started: list[str],
    gate: asyncio.Event,
    echo: Callable[[str], Awaitable[str]],
    other_key_echo: Callable[[str], Awaitable[str]],
) -> None:
    """Five echoes of one SERIALIZED key wait behind the first; another key's does not.

    ``echo`` calls with the serialized key, ``other_key_echo`` with another one; the handler
    appends each text to ``started`` when it starts and holds it until ``gate`` opens.
    """
    texts = [str(i) for i in range(5)]
    keyed = [asyncio.ensure_future(echo(text)) for text in texts]
    await until(lambda: server.statistics().requests_in_flight == 5, "the 5 calls arrive")
    # A call of another key, sent after them, runs: had the 4 behind the first not waited for
    # it, they would have started before it (handlers start in arrival order).
    marker = asyncio.ensure_future(other_key_echo("marker"))
    await until(lambda: "marker" in started, "the call of key 'm' starts")
    assert started == ["0", "marker"]
    gate.set()
    assert await asyncio.gather(*keyed) == texts
    assert await marker == "marker"
    assert started == ["0", "marker", "1", "2", "3", "4"]


SIMPLE_THRIFT: Any = thriftpy2.load(str(IDL / "simple.thrift"), module_name="simple_thrift")
KV_THRIFT: Any = thriftpy2.load(str(IDL / "kvstore.thrift"), module_name="kvstore_thrift")
SIMPLE_SCHEMA = schema.load(IDL / "simple.schema.toml")
KV_SCHEMA = schema.load(IDL / "kvstore.schema.toml")


class ThriftSimple:
    """Implements simple.thrift's ``Simple``, mixing ``def`` and ``async def`` methods."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.calls = 0

    def ping(self) -> None:
        self.calls += 1

    async def echo(self, text: str) -> str:
        self.calls += 1
        await asyncio.sleep(0)
        return text

    def echo_binary(self, data: bytes) -> bytes:
        self.calls += 1
        return data

    async def mirror(self, value: Any) -> Any:
        self.calls += 1
        return value

    def add(self, a: int, b: int) -> int:
        self.calls += 1
        return a + b

    def divide(self, a: float, b: float) -> float:
        self.calls += 1
        if b == 0:
            raise SIMPLE_THRIFT.Oops(message="division by zero", code=22)
        return a / b

    async def fail(self, kind: str) -> int:
        self.calls += 1
        if kind == "oops":
            raise SIMPLE_THRIFT.Oops(message="as requested", code=7)
        if kind == "unlucky":
            raise SIMPLE_THRIFT.Unlucky(number=13)
        if kind == "none":
            return None  # type: ignore[return-value]  # a non-void function must not
        if kind == "wrong type":
            return "not an i32"  # type: ignore[return-value]
        raise KeyError(kind)

    def group_by_length(self, words: list[str]) -> dict[int, list[str]]:
        self.calls += 1
        groups: dict[int, list[str]] = {}
        for word in words:
            groups.setdefault(len(word), []).append(word)
        return groups

    def next_color(self, color: int) -> int:
        self.calls += 1
        return color % 3 + 1

    def greet(self, name: str, greeting: str, punctuation: str | None) -> str:
        self.calls += 1
        return f"{greeting}, {name}{punctuation or ''}"

    async def notify(self, event: str) -> None:
        self.calls += 1
        if event == "explode":
            raise RuntimeError("oneway handlers report nothing")
        self.received.append(event)

    def events(self) -> list[str]:
        self.calls += 1
        return self.received


class SchemaSimple:
    """Implements simple.schema.toml's ``Simple``, mixing ``def`` and ``async def`` methods."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.calls = 0

    def ping(self) -> None:
        self.calls += 1

    async def echo(self, text: str) -> str:
        self.calls += 1
        return text

    def echo_bytes(self, data: bytes) -> bytes:
        self.calls += 1
        return data

    async def mirror(self, value: Any) -> Any:
        self.calls += 1
        return value

    def add(self, a: int, b: int) -> int:
        self.calls += 1
        return a + b

    def divide(self, a: float, b: float) -> float:
        self.calls += 1
        if b == 0:
            raise SIMPLE_SCHEMA.errors.Oops(message="division by zero", code=22)
        return a / b

    async def fail(self, kind: str) -> Any:
        self.calls += 1
        if kind == "oops":
            raise SIMPLE_SCHEMA.errors.Oops(message="as requested", code=7)
        if kind == "unlucky":
            raise SIMPLE_SCHEMA.errors.Unlucky(number=13)
        if kind == "wrong type":
            return "not an int"
        raise KeyError(kind)

    def group_by_length(self, words: list[str]) -> dict[int, list[str]]:
        self.calls += 1
        groups: dict[int, list[str]] = {}
        for word in words:
            groups.setdefault(len(word), []).append(word)
        return groups

    def depth(self, tree: Any) -> int:
        self.calls += 1
        return 1 + max((self.depth(child) for child in tree.children), default=0)

    def find(self, numbers: list[int], wanted: int) -> int | None:
        self.calls += 1
        return numbers.index(wanted) if wanted in numbers else None

    def greet(self, name: str, greeting: str, punctuation: str | None) -> str:
        self.calls += 1
        return f"{greeting}, {name}{punctuation or ''}"

    async def notify(self, event: str) -> None:
        self.calls += 1
        if event == "explode":
            raise RuntimeError("oneway handlers report nothing")
        self.received.append(event)

    def events(self) -> list[str]:
        self.calls += 1
        return self.received


class KVStore:
    """Implements the KVStore of both kvstore.thrift and kvstore.schema.toml.

    ``not_found`` and ``full`` build the IDL's declared exceptions.
    """

    def __init__(self, not_found: Any, full: Any, entry: Any, capacity: int = 3) -> None:
        self._not_found = not_found
        self._full = full
        self._entry = entry
        self._capacity = capacity
        self.data: dict[str, Any] = {}

    async def get(self, key: str) -> bytes:
        if key not in self.data:
            raise self._not_found(key=key)
        return bytes(self.data[key].value)

    def put(self, key: str, value: bytes, tags: list[str] | None = None) -> bool:
        if key not in self.data and len(self.data) >= self._capacity:
            raise self._full(capacity=self._capacity)
        new = key not in self.data
        self.data[key] = self._entry(key=key, value=value, tags=list(tags or []))
        return new

    def remove(self, key: str) -> None:
        self.data.pop(key, None)

    def scan(self, prefix: str) -> list[Any]:
        return [entry for key, entry in sorted(self.data.items()) if key.startswith(prefix)]

    def size(self) -> int:
        return len(self.data)

    def clear(self) -> None:
        self.data.clear()


def thrift_kvstore(capacity: int = 3) -> KVStore:
    return KVStore(KV_THRIFT.KeyNotFound, KV_THRIFT.StoreFull, KV_THRIFT.Entry, capacity)


def schema_kvstore(capacity: int = 3) -> KVStore:
    errors = KV_SCHEMA.errors
    return KVStore(errors.KeyNotFound, errors.StoreFull, KV_SCHEMA.records.Entry, capacity)
