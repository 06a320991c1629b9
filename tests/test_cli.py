"""The command line: keygen, demo and bench, in-process where possible, else as a user runs it."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from callosum_like import auth
from callosum_like.__main__ import main

#: Show every warning (ResourceWarning included) in the child processes' output.
ENV = {**os.environ, "PYTHONWARNINGS": "default"}


def run_cli(
    *args: str, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callosum_like", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=cwd,
        check=False,
    )


# --- keygen -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_keygen_writes_both_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "server"
    assert main(["keygen", str(base)]) == 0
    out, err = capsys.readouterr()
    public = out.strip()
    assert "server.key" in err
    assert "server.key_secret" in err
    secret_file = tmp_path / "server.key_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert (tmp_path / "server.key").is_file()
    assert "secret-key" not in (tmp_path / "server.key").read_text()
    assert auth.load_keypair(base).public.decode() == public
    assert auth.load_public_key(tmp_path / "server.key").decode() == public


@pytest.mark.timeout(30)
def test_keygen_refuses_to_overwrite_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "agent"
    assert main(["keygen", str(base)]) == 0
    first = capsys.readouterr().out.strip()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    assert main(["keygen", str(base)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "exists" in err
    assert "--force" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    assert main(["keygen", "--force", str(base)]) == 0
    second = capsys.readouterr().out.strip()
    assert second != first
    assert auth.load_keypair(base).public.decode() == second


@pytest.mark.timeout(30)
def test_keygen_refuses_when_only_the_public_file_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.key").write_text("not mine\n")
    assert main(["keygen", str(tmp_path / "x")]) == 1
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "x.key").read_text() == "not mine\n"
    assert not (tmp_path / "x.key_secret").exists()


@pytest.mark.timeout(30)
def test_keygen_into_a_missing_directory_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", str(tmp_path / "no" / "such" / "dir" / "k")]) == 1
    assert "keygen:" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_keygen_as_a_module(tmp_path: Path) -> None:
    result = run_cli("keygen", str(tmp_path / "cli"))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) == 40  # a Z85 CURVE public key, and nothing else
    assert auth.load_keypair(tmp_path / "cli").public.decode() == result.stdout.strip()


# --- usage --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_help_lists_the_public_commands_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("keygen", "demo", "bench"):
        assert command in out
    assert "demo-server" not in out
    assert "bench-server" not in out


@pytest.mark.timeout(30)
def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "required" in capsys.readouterr().err


# --- demo ---------------------------------------------------------------------------------


def _columns(out: str, row: str) -> list[str]:
    """The UNORDERED, ORDERED and SERIALIZED cells of one row of the demo's orderings table.

    A row is ``"client | "``, 3 spaces, the row name padded to 16, then 3 cells of 22.
    """
    prefix = f"client |    {row:<16}"
    line = next(line for line in out.splitlines() if line.startswith(prefix))
    cells = line.removeprefix(prefix)
    return [cells[i : i + 22].strip() for i in (0, 22, 44)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["zeromq", "tcp"])
def test_demo_runs_end_to_end(transport: str) -> None:
    # No bound on its time: the timeouts here only turn a hang into a failure.
    result = run_cli("demo", "--transport", transport, timeout=50)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    curve = "authenticated and encrypted with CURVE" in out
    assert curve is (transport == "zeromq")
    assert result.stderr == ""
    for section in (
        "== 1. The client calls the server",
        "== 2. The server calls the client back while serving the client's call",
        "== 3. Orderings",
        "== 4. Errors cross the wire",
        "== 5. Typed calls",
        "== 6. Statistics",
    ):
        assert f"client | {section}" in out
    assert "Thrift  Calculator.divide(7.0, 2.0) -> 3.5" in out
    assert "raised the IDL's DivideByZero('1.0')" in out
    assert "Greeting(text='hello agent hello agent', shout=False)" in out
    assert "refused locally: SchemaError" in out
    # both directions
    assert "echo({'x': [1, 2, b'\\x00']}) -> {'x': [1, 2, b'\\x00']}" in out
    assert "<- the server calls the client: square(3) -> 9" in out
    assert "sum_of_squares([2, 3, 4]) -> 29" in out
    # the orderings side by side: UNORDERED, ORDERED, SERIALIZED
    assert _columns(out, "replies")[1:] == ["1 2 3 4", "1 2 3 4"]
    assert _columns(out, "finished")[2] == "1 2 3 4"
    # All 4 at once needs them all to arrive within 50 ms (#2's sleep): not on a loaded
    # machine. Two at once needs #2 to arrive during #1's 200 ms; SERIALIZED never has two.
    unordered, ordered, serialized = map(int, _columns(out, "most at once"))
    assert (unordered > 1, ordered > 1, serialized) == (True, True, 1)
    assert "SERIALIZED  s1 f1 s2 f2 s3 f3 s4 f4" in out
    # an error with its remote traceback
    assert "raised cl.RPCUserError" in out
    assert "client |        ZeroDivisionError: division by zero" in out
    assert "raised cl.MethodNotFoundError" in out
    assert "nap handler was cancelled: True" in out
    # a clean end: nothing but the remote traceback looks like a problem
    assert out.count("Traceback") == 1
    assert "Warning" not in out
    assert "Exception ignored" not in out
    assert "server | closed cleanly" in out
    assert "server exited 0, client exited 0" in out
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", out)]
    assert len(set(pids)) == 2
    for pid in pids:  # both children were reaped, none left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# --- bench --------------------------------------------------------------------------------
