"""The benchmark: the measuring code in-process, and a quick run as a user starts it."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import callosum_like as cl
from callosum_like.__main__ import main
from callosum_like.tools import fleet
from callosum_like.tools.bench import cli, fleet_step, measure, report, steps, systems, workloads
from callosum_like.tools.supervisor import SOURCE_TREE, ChildProcess, child_environment

WORKLOAD_KEYS = ["W1", "W2", "W3-1MiB", "W3-16MiB", "W4", "W5"]
#: The fleet workloads of ``--quick``: 20 agents in 2 processes.
FLEET_KEYS = ["W6-20", "W7"]
#: Whether ``--pin`` can run here (two usable CPUs).
PINNABLE = len(os.sched_getaffinity(0)) >= 2


class FakeClient:
    """An in-memory EchoClient: echoes after a trip through the event loop."""

    stream_kind = "stream"

    def __init__(self, *, corrupt: bool = False) -> None:
        self.corrupt = corrupt

    async def echo(self, body: bytes) -> measure.Payload:
        await asyncio.sleep(0)
        return body[::-1] if self.corrupt else body

    async def stream(self, size: int, chunk_size: int) -> AsyncIterator[measure.Payload]:
        chunk = bytes(chunk_size)
        for _ in range(size // chunk_size):
            await asyncio.sleep(0)
            yield chunk


def tiny(key: str) -> workloads.Workload:
    """The quick workload ``key``, shrunk further so it runs in milliseconds in-process."""
    workload = next(w for w in workloads.QUICK_WORKLOADS if w.key == key)
    return dataclasses.replace(
        workload,
        body_size=min(workload.body_size, 4096),
        calls=min(workload.calls, 50),
        warmup=min(workload.warmup, 5),
        big_size=min(workload.big_size, 65536),
        stream_size=min(workload.stream_size, 8 * 65536),
        chunk_size=65536,
    )


def probes() -> dict[str, measure.ProcessProbe]:
    me = measure.ProcessProbe(os.getpid())
    return {"client": me, "server": me}


# --- the measuring code, in-process ---------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.asyncio
@pytest.mark.parametrize("key", WORKLOAD_KEYS)
async def test_measure_gives_the_figures_of_each_workload(key: str) -> None:
    workload = tiny(key)
    metrics = await measure.measure(FakeClient(), workload, probes())
    assert metrics["seconds"] > 0
    assert metrics["big_mb_per_s" if workload.kind == "head_of_line" else "mb_per_s"] > 0
    if workload.kind == "stream":
        assert metrics["stream_bytes"] == workload.stream_size
    else:
        assert 0 < metrics["p50_us"] <= metrics["p99_us"]
    if workload.kind == "head_of_line":
        assert metrics["small_calls"] >= 1
        assert metrics["big_calls"] == workload.big_calls
    if sys.platform == "linux":
        assert metrics["cpu_us_per_call"] >= 0
        assert metrics["peak_rss_mib"] >= 0
        assert metrics["client_idle_rss_mib"] > 0
        if workload.kind != "stream":  # the client held bodies of its own
            beyond = metrics["client_peak_beyond_bodies_mib"]
            assert 0 <= beyond <= metrics["client_peak_rss_mib"]


def test_a_target_in_every_run_is_judged_on_the_worst_run() -> None:
    runs = [{"p99_us": 2000.0}, {"p99_us": 6000.0}, {"p99_us": 2500.0}]
    summary = steps.Summary(system="like-tcp", workload="W4", runs=runs)
    summary.median, summary.low, summary.high = runs[2], runs[0], runs[1]
    every = [t for t in report.TARGETS if t.every_run and t.system == "like-tcp"]
    median = [t for t in report.TARGETS if t.row == "W4 small-call p99" and t.system == "like-tcp"]
    assert len(every) == len(median) == 1
    summaries = {("like-tcp", "W4"): summary}
    judged = report.judge(every[0], summaries)
    assert (judged.value, judged.met) == (6000.0, False)
    assert "in every run" in judged.goal
    assert report.judge(median[0], summaries).met is True  # the median run is under 5 ms


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_a_wrong_echo_fails_the_step() -> None:
    with pytest.raises(RuntimeError, match="came back"):
        await measure.measure(FakeClient(corrupt=True), tiny("W1"), probes())


@pytest.mark.timeout(30)
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_process_probe_reads_cpu_and_memory() -> None:
    probe = measure.ProcessProbe(os.getpid())
    before = probe.cpu_seconds()
    sum(range(2_000_000))
    after = probe.cpu_seconds()
    assert before is not None
    assert after is not None
    assert after >= before
    rss, peak = probe.rss(), probe.peak_rss()
    assert rss is not None
    assert peak is not None
    assert peak >= rss > 0
    gone = measure.ProcessProbe(2**22 + 1)  # above the kernel's largest pid
    assert gone.cpu_seconds() is None
    assert gone.rss() is None
    assert gone.reset_peak() is False


@pytest.mark.timeout(30)
def test_a_system_without_its_package_or_script_is_skipped() -> None:
    absent = systems.System(key="x", label="x", requires="no_such_module_here", dists=())
    assert "not installed" in (absent.missing() or "")
    no_script = systems.System(
        key="y", label="y", requires="asyncio", dists=(), script="no_such_peer.py"
    )
    assert "not found" in (no_script.missing() or "")
    assert all(s.missing() is None for s in systems.SYSTEMS if s.key.startswith("like-"))


@pytest.mark.timeout(30)
def test_progress_writes_one_line_per_step_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = cli.Progress(2, stream=stream)
    progress.step("first")
    progress.step("second")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "1/2 first" in lines[0]
    assert "2/2 second" in lines[1]
    silent = io.StringIO()
    cli.Progress(1, stream=silent, enabled=False).step("x")
    assert silent.getvalue() == ""


# --- python -m callosum_like bench, as a user runs it ---------------------------------------


def run_bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callosum_like", "bench", *args],
        capture_output=True,
        text=True,
        timeout=240,  # a hang fails; a slow run on a loaded machine does not
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "default"},
        check=False,
    )


@pytest.mark.timeout(300)
def test_quick_bench_of_our_systems(tmp_path: Path) -> None:
    output = tmp_path / "results" / "run.json"
    result = run_bench("--quick", "--systems", "ours", "--output", str(output), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

    out = result.stdout
    keys = WORKLOAD_KEYS + FLEET_KEYS
    for key in keys:
        assert f"\n{key}: " in out
    lines = out.splitlines()
    assert any(line.startswith("system") and "calls/s" in line and "p99" in line for line in lines)
    assert any(line.startswith("system") and "RSS/agent" in line for line in lines)
    assert sum(line.startswith("callosum_like zeromq ") for line in lines) == len(keys)
    assert sum(line.startswith("callosum_like tcp ") for line in lines) == len(keys)
    assert "targets (issues 7, 19, 22 and 24)" in out
    assert "chart skipped: no callosum figures" in out
    assert "16/16 like-tcp W7" in result.stderr  # the progress bar
    assert "Warning" not in result.stderr

    report = json.loads(output.read_text())
    assert report["quick"] is True
    assert report["repeat"] == 1
    assert report["loop"] in {"uvloop", "asyncio"}
    assert report["chart"] is None
    assert report["pinned"] is None
    assert report["fd_limit"] >= 1024
    assert {"python", "libzmq", "pyzmq", "callosum-like"} <= set(report["versions"])
    assert {"cpu_count", "cpu_model", "python", "os"} <= set(report["host"])
    assert [w["key"] for w in report["workloads"]] == keys
    assert [s["key"] for s in report["systems"]] == ["like-zeromq", "like-tcp"]
    results = {(r["system"], r["workload"]): r for r in report["results"]}
    assert len(results) == 16
    for (system, workload), r in results.items():
        assert r["status"] == "ok", (system, workload, r["reason"])
        assert r["loop"] == report["loop"]
        assert len(r["runs"]) == 1
        assert r["median"] == r["runs"][0]
    w1 = results[("like-zeromq", "W1")]["median"]
    assert w1["calls"] == 200
    assert 0 < w1["p50_us"] <= w1["p99_us"]
    assert results[("like-tcp", "W5")]["median"]["stream_bytes"] == 32 * 2**20
    for system in ("like-zeromq", "like-tcp"):
        check_fleet_figures(results[(system, "W6-20")]["median"], results[(system, "W7")]["median"])
    verdicts = {(t["target"], t["system"]): t["met"] for t in report["targets"]}
    assert verdicts[("W1 calls/s", "like-zeromq")] is None  # no callosum to compare with
    assert verdicts[("W4 small-call p99", "like-tcp")] in {True, False}
    assert verdicts[("W7 invoke_all p99", "like-tcp")] in {True, False}
    assert "| system |" in output.with_suffix(".md").read_text()


def check_fleet_figures(idle: dict[str, float], fan_out: dict[str, float]) -> None:
    """The figures of the quick W6 and W7 (20 agents in 2 processes) are all there."""
    assert (idle["agents"], idle["processes"]) == (20, 2)
    assert idle["connected_after"] == 20  # every agent stayed connected through the window
    assert idle["idle_seconds"] >= 1
    assert idle["fds_per_agent"] >= 1  # one connection each, at least
    assert idle["hub_rss_mib"] > 0
    assert idle["hub_idle_rss_mib"] > 0
    assert {"rss_kib_per_agent", "idle_cpu_percent", "connect_seconds"} <= set(idle)
    assert (fan_out["agents"], fan_out["rounds"]) == (20, 20)
    assert 0 < fan_out["p50_us"] <= fan_out["p99_us"]
    assert fan_out["calls_per_s"] > 0
    assert fan_out["cpu_ms_per_round"] >= 0


@pytest.mark.timeout(300)
def test_bench_filters_and_repeats(tmp_path: Path) -> None:
    output = tmp_path / "w1.json"
    result = run_bench(
        "--quick",
        "--systems",
        "like-tcp",
        "--workloads",
        "W1",
        "--repeat",
        "2",
        *(["--pin"] if PINNABLE else []),
        "--no-chart",
        "--no-progress",
        "--output",
        str(output),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    report = json.loads(output.read_text())
    if PINNABLE:
        pin = steps.Pinning.choose()
        assert report["pinned"] == {"server": pin.server, "client": pin.client}
        assert f"servers on CPU {pin.server}, clients on CPU {pin.client}" in result.stdout
    [only] = report["results"]
    assert (only["system"], only["workload"]) == ("like-tcp", "W1")
    assert len(only["runs"]) == 2
    assert (
        only["low"]["calls_per_s"] <= only["median"]["calls_per_s"] <= only["high"]["calls_per_s"]
    )
    assert "±" in result.stdout  # the spread of two runs
    assert "chart skipped (--no-chart)" in result.stdout


CHILD_CPUS = """
import os, threading
seen = []
thread = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))
thread.start()
thread.join()
print("READY", sorted(os.sched_getaffinity(0)), seen[0], flush=True)
"""


@pytest.mark.skipif(not PINNABLE, reason="needs two usable CPUs")
@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_a_pinned_child_and_its_threads_run_on_its_cpu_only() -> None:
    pin = steps.Pinning.choose()
    before = os.sched_getaffinity(0)
    assert pin.server != pin.client
    assert {pin.server, pin.client} <= before
    for cpu in (pin.server, pin.client):
        argv = [sys.executable, "-c", CHILD_CPUS]
        async with ChildProcess("pinned", argv, relay=False, cpu=cpu) as child:
            assert await child.ready() == f"[{cpu}] [{cpu}]"
        assert os.sched_getaffinity(0) == before  # the parent is not left pinned
    argv = [sys.executable, "-c", CHILD_CPUS]
    async with ChildProcess("free", argv, relay=False) as child:
        everywhere = str(sorted(before))
        assert await child.ready() == f"{everywhere} {everywhere}"


@pytest.mark.timeout(30)
def test_pin_needs_two_cpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    with pytest.raises(RuntimeError, match="two usable CPUs"):
        steps.Pinning.choose()
    argv = ["bench", "--quick", "--pin", "--output", str(tmp_path / "x.json")]
    assert main(argv) == 2
    assert "--pin needs two usable CPUs, this process has [3]" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.timeout(60)
def test_a_missing_peer_is_reported_as_skipped_not_as_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = systems.System(
        key="callosum", label="callosum 1.0.3", requires="no_such_callosum", dists=()
    )
    monkeypatch.setattr(cli, "SYSTEMS", (systems.SYSTEMS[1], absent))
    output = tmp_path / "skip.json"
    argv = [
        "bench",
        "--quick",
        "--systems",
        "like-tcp,callosum",
        "--workloads",
        "W1",
        "--no-progress",
        "--output",
        str(output),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "skipped: no_such_callosum is not installed" in out
    assert "chart skipped: no callosum figures" in out
    report = json.loads(output.read_text())
    status = {r["system"]: r["status"] for r in report["results"]}
    assert status == {"like-tcp": "ok", "callosum": "skipped"}
    [skipped] = [s for s in report["systems"] if s["key"] == "callosum"]
    assert "not installed" in skipped["skipped"]


@pytest.mark.timeout(30)
def test_an_unknown_system_is_a_usage_error(tmp_path: Path) -> None:
    result = run_bench("--systems", "nonesuch", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown name 'nonesuch'" in result.stderr


@pytest.mark.timeout(60)
def test_baseline_runs_a_second_tree_beside_ours(tmp_path: Path) -> None:
    tree = SOURCE_TREE
    output = tmp_path / "ab.json"
    common = ["--quick", "--workloads", "W1", "--no-chart", "--no-progress"]
    argv = [*common, "--systems", "like-tcp", "--baseline", str(tree), "--output", str(output)]
    result = run_bench(*argv, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("callosum_like tcp ") for line in lines)
    assert any(line.startswith("baseline tcp ") for line in lines)
    report = json.loads(output.read_text())
    assert [s["key"] for s in report["systems"]] == ["like-tcp", "base-tcp"]
    assert all(r["status"] == "ok" for r in report["results"])

    empty = tmp_path / "empty"
    empty.mkdir()
    missing = systems.System(
        key="base-tcp", label="x", requires="asyncio", dists=(), root=str(empty)
    )
    assert "no callosum_like package" in (missing.missing() or "")


@pytest.mark.timeout(30)
def test_a_baseline_child_imports_its_tree_even_run_from_ours(tmp_path: Path) -> None:
    # ``python -m`` puts the working directory first on ``sys.path``: a baseline child
    # started from our source tree imported our package, and a --baseline run compared
    # this tree with itself.
    package = tmp_path / "callosum_like"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("print(__file__)\n")
    seen = subprocess.run(
        [sys.executable, "-m", "callosum_like"],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=SOURCE_TREE,
        env=child_environment(str(tmp_path)),
        check=True,
    )
    assert Path(seen.stdout.strip()).parent == package


# --- the fleet workloads (W6, W7) -------------------------------------------------------------


@pytest.mark.timeout(30)
def test_agents_are_shared_out_evenly_over_the_processes() -> None:
    assert fleet_step.shares(10_000, 4) == [2_500] * 4
    assert fleet_step.shares(10, 4) == [3, 3, 2, 2]
    assert fleet_step.shares(3, 4) == [1, 1, 1]  # no empty process


@pytest.mark.timeout(30)
def test_fleet_workloads_are_named_by_their_agents() -> None:
    sizes = dataclasses.replace(workloads.FULL_FLEET, idle_agents=(1_000, 10_000, 250))
    made = workloads.fleet_workloads(sizes)
    assert [w.key for w in made] == ["W6-1k", "W6-10k", "W6-250", "W7"]
    assert [w.group for w in made] == ["W6", "W6", "W6", "W7"]
    assert all(w.fleet and w.processes == 4 for w in made)
    assert made[-1].agents == 1_000
    assert not any(w.fleet for w in workloads.FULL_WORKLOADS)


@pytest.mark.timeout(120)
def test_fleet_options_size_the_fleet_steps(tmp_path: Path) -> None:
    output = tmp_path / "w6.json"
    sizes = ["--fleet-agents", "3,5", "--fleet-processes", "1", "--idle-seconds", "0.5"]
    sizes += ["--fan-out-agents", "4"]
    quiet = ["--no-chart", "--no-progress", "--output", str(output)]
    argv = ["--quick", "--systems", "like-tcp", "--workloads", "fleet", *sizes, *quiet]
    result = run_bench(*argv, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(output.read_text())
    assert [w["key"] for w in report["workloads"]] == ["W6-3", "W6-5", "W7"]
    *idle, fan_out = [r["median"] for r in report["results"]]
    assert [(m["agents"], m["processes"], m["connected_after"]) for m in idle] == [
        (3, 1, 3),
        (5, 1, 5),
    ]
    assert all(m["idle_seconds"] >= 0.5 for m in idle)
    assert (fan_out["agents"], fan_out["processes"]) == (4, 1)


NO_FILES = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))
from callosum_like.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.timeout(60)
def test_a_fleet_over_the_file_limit_is_a_failure_row_not_a_crash(tmp_path: Path) -> None:
    output = tmp_path / "fds.json"
    argv = ["bench", "--quick", "--systems", "like-tcp,raw-asyncio", "--workloads", "W6"]
    argv += ["--fleet-agents", "500", "--no-chart", "--no-progress", "--output", str(output)]
    result = subprocess.run(
        [sys.executable, "-c", NO_FILES, *argv],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(SOURCE_TREE)},
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("callosum_like tcp"))
    assert "error: needs about 564 open files in one process, the hard limit is 200" in row
    assert "raw asyncio" not in result.stdout  # the peers have no fleet: no row at all
    report = json.loads(output.read_text())
    assert [(r["system"], r["status"]) for r in report["results"]] == [("like-tcp", "error")]
    assert report["fd_limit"] == 200


RAISE = """
import resource
from callosum_like.tools.fleet import raise_fd_limit
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))
print(raise_fd_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


@pytest.mark.timeout(30)
def test_the_soft_file_limit_is_raised_to_the_hard_limit() -> None:
    result = subprocess.run(
        [sys.executable, "-c", RAISE],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "PYTHONPATH": str(SOURCE_TREE)},
        check=True,
    )
    assert result.stdout.split() == ["512", "512", "512"]


@pytest.mark.timeout(60)
@pytest.mark.asyncio
async def test_an_agents_process_that_cannot_open_says_why_and_fails() -> None:
    with socket.socket() as sock:  # a port nobody listens at
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = fleet.agents_argv("tcp", f"127.0.0.1:{port}", 3, "lonely-")
    async with ChildProcess("agents", argv, relay=False) as agents:
        status = await agents.wait(50)
        assert status == 1
        assert "FAILED 0 agents open, then PeerDisconnectedError: cannot connect" in agents.tail()


@pytest.mark.timeout(60)
def test_fleet_sizes_must_be_positive(tmp_path: Path) -> None:
    for option, value, error in [
        ("--fleet-agents", "10,0", "must be at least 1"),
        ("--fleet-agents", ",", "give at least one count"),
        ("--idle-seconds", "0", "must be more than 0"),
    ]:
        result = run_bench(option, value, cwd=tmp_path)
        assert result.returncode == 2
        assert f"argument {option}: {error}" in result.stderr


@pytest.mark.timeout(300)
def test_bench_measures_the_interceptor_chains(tmp_path: Path) -> None:
    output = tmp_path / "chains.json"
    result = run_bench(
        "--quick",
        "--systems",
        "interceptors",
        "--workloads",
        "W1",
        "--no-chart",
        "--no-progress",
        "--output",
        str(output),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    report = json.loads(output.read_text())
    measured = {r["system"]: r["median"]["calls_per_s"] for r in report["results"]}
    assert set(measured) == {"like-zeromq", "like-noop", "like-otel"}
    assert all(value > 0 for value in measured.values())
    assert "callosum_like zeromq + OpenTelemetry" in result.stdout


def test_bench_chains_are_what_they_say() -> None:
    from callosum_like.telemetry import OpenTelemetry
    from callosum_like.tools.bench import intercepted

    assert intercepted.chain("none") == []
    (noop,) = intercepted.chain("noop")
    assert isinstance(noop, cl.Interceptor)
    (otel,) = intercepted.chain("otel")
    assert isinstance(otel, OpenTelemetry)
    with pytest.raises(ValueError, match="interceptors"):
        intercepted.chain("fast")


@pytest.mark.timeout(300)
def test_quick_bench_of_nats_beside_its_raw_floor(tmp_path: Path) -> None:
    """The bench starts a nats-server; like-nats and raw-nats run W1, W2 and W4 through it."""
    output = tmp_path / "nats.json"
    result = run_bench(
        "--quick",
        "--systems",
        "nats",
        "--workloads",
        "W1,W2,W4",
        "--no-chart",
        "--no-progress",
        "--output",
        str(output),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(output.read_text())
    results = {(r["system"], r["workload"]): r for r in report["results"]}
    expected = {("like-nats", w) for w in ("W1", "W2", "W4")} | {
        ("raw-nats", "W1"),
        ("raw-nats", "W2"),
    }
    assert set(results) == expected  # raw NATS cannot carry W4's 16 MiB at all
    for key, r in results.items():
        assert r["status"] == "ok", (key, r["reason"])
    for row in ("W1 calls/s", "W2 calls/s", "W4 small-call p99"):
        assert any(
            line.startswith(row) and "like-nats" in line for line in result.stdout.splitlines()
        )
