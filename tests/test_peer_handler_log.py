"""A handler that raises is logged once on the serving side, with its traceback."""

from __future__ import annotations

import logging

import pytest

import callosum_like as cl

from .conftest import PairFactory

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def divide(request: cl.Request) -> float:
    return 1 / request.body  # type: ignore[no-any-return]


async def count_down(request: cl.Request):  # type: ignore[no-untyped-def]
    yield 1
    raise LookupError("no more")


async def test_a_handler_that_raised_is_logged_once_with_its_traceback(
    make_pair: PairFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server, client = await make_pair()
    server.handle_function("divide", divide)
    server.handle_function("count_down", count_down)
    with caplog.at_level(logging.ERROR, logger="callosum_like.handlers"):
        with pytest.raises(cl.RPCUserError):
            await client.invoke("divide", 0)
        assert await client.invoke("divide", 2) == 0.5  # a success logs nothing
        with pytest.raises(cl.RPCUserError):
            async for _ in client.stream("count_down"):
                pass
    records = [r for r in caplog.records if r.name == "callosum_like.handlers"]
    assert [r.levelno for r in records] == [logging.ERROR, logging.ERROR]
    assert "'divide' for 'agent-1' raised ZeroDivisionError" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] is ZeroDivisionError
    assert "'count_down'" in records[1].getMessage()
    assert records[1].exc_info is not None
    assert records[1].exc_info[0] is LookupError


async def test_the_handler_log_can_be_turned_down_alone(
    make_pair: PairFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server, client = await make_pair()
    server.handle_function("divide", divide)
    logger = logging.getLogger("callosum_like.handlers")
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with (
            caplog.at_level(logging.DEBUG, logger="callosum_like"),
            pytest.raises(cl.RPCUserError),
        ):
            await client.invoke("divide", 0)
    finally:
        logger.setLevel(before)
    assert not [r for r in caplog.records if r.name == "callosum_like.handlers"]
