"""The Thrift and schema examples run to completion, alone and as two processes."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Show every warning (ResourceWarning included) on the child's stderr, where we look for it.
ENV = {**os.environ, "PYTHONWARNINGS": "default"}
PAIRS = [("thrift_server.py", "thrift_client.py"), ("schema_server.py", "schema_client.py")]


def run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""  # no warnings, no log noise
    return result.stdout


def check_client_output(out: str) -> None:
    assert "put('greeting') -> new=True" in out
    assert "get('greeting') -> b'hello'" in out
    assert "get('missing') -> KeyNotFound(key='missing')" in out
    assert re.search(r"scan\('n'\) -> \[.*'n2'", out)
    assert "put(42, ...) -> SchemaError: KVStore.put: " in out
    assert "size() after clear() -> 0" in out
    assert out.rstrip().endswith("client done")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("client", [client for _, client in PAIRS])
def test_client_self_contained(client: str) -> None:
    out = run_example(client, "--self-contained")
    assert "started the server in this process on tcp://127.0.0.1:" in out
    assert f"clear() requested by '{client.split('_')[0]}-client'" in out
    check_client_output(out)


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    return process.stdout.readline()


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("server", "client"), PAIRS)
def test_server_and_client_in_two_processes(server: str, client: str) -> None:
    with subprocess.Popen(
        [sys.executable, str(EXAMPLES / server), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    ) as process:
        try:
            match = re.search(r"on tcp://127\.0\.0\.1:(\d+) ", read_line(process, timeout=20))
            assert match
            check_client_output(run_example(client, "--port", match[1]))
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0, out + err
    assert err == ""
    assert "clear() requested by" in out
    assert re.search(r"server closed after serving \d+ calls", out)


@pytest.mark.timeout(30)
def test_examples_say_how_to_run_them() -> None:
    for pair in PAIRS:
        for name in pair:
            text = (EXAMPLES / name).read_text(encoding="utf-8")
            assert text.startswith('"""'), name
            assert f"examples/{name}" in text.split('"""')[1], name
