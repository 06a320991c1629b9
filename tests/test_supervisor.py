"""The tools' one child-process supervisor: its line protocol, and how it stops a child.

Real child processes (``python -c``), no mocks: what the demo, the benchmark and the soak rely
on when they start servers and clients.
"""

from __future__ import annotations

import signal
import sys

import pytest

from callosum_like.tools.supervisor import ChildProcess

#: Say READY, print around it, give a RESULT, and exit.
TALKER = """
print("before", flush=True)
print("READY 127.0.0.1:1234", flush=True)
print("after", flush=True)
print('RESULT {"x": 1}', flush=True)
"""

#: Say READY, then never stop by itself; its arguments name the signals it ignores.
STUBBORN = """
import signal, sys, time
for name in sys.argv[1:]:
    signal.signal(getattr(signal, name), signal.SIG_IGN)
print("READY here", flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_ready_result_and_tail_are_read_from_the_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with ChildProcess("talker", [sys.executable, "-c", TALKER]) as child:
        assert await child.ready() == "127.0.0.1:1234"
        assert await child.wait(20) == 0
    assert child.result == '{"x": 1}'
    assert child.tail() == "before / after"
    out = capsys.readouterr().out
    assert out.splitlines() == ["talker | before", "talker | after"]  # relayed, READY kept back


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_a_child_that_exits_without_ready_is_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [sys.executable, "-c", "print('no luck', flush=True)"]
    async with ChildProcess("quiet", argv, relay=False) as child:
        with pytest.raises(RuntimeError, match="quiet exited before it was ready"):
            await child.ready()
    assert child.returncode == 0
    assert child.tail() == "no luck"
    assert capsys.readouterr().out == ""  # relay=False keeps the output back


@pytest.mark.slow
@pytest.mark.timeout(30)
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("ignored", "ended_by"),
    [([], signal.SIGTERM), (["SIGTERM"], signal.SIGKILL)],
    ids=["terminated", "killed"],
)
async def test_a_child_that_ignores_eof_is_terminated_then_killed(
    ignored: list[str], ended_by: signal.Signals
) -> None:
    argv = [sys.executable, "-c", STUBBORN, *ignored]
    async with ChildProcess("stubborn", argv, relay=False) as child:
        assert await child.ready() == "here"  # its signal handlers are in place
    assert child.returncode == -ended_by
