"""Deliberate breaks of the core, each run against the tests that claim to catch it.

Run it as ``make mutants`` (or ``.venv/bin/python tools/mutants.py [-k NAME] [--list]``).

Theory of operation: ``MUTANTS`` is a fixed, reviewed list of meaningful breaks of the protocol
core (session, ordering, dispatch, transfers, framing, streams, and the Peer where it acts on
them). Each names one exact snippet of one source file, what replaces it, and the tests that
cover that behaviour. The runner copies the working tree (the files git tracks, and the
untracked ones it does not ignore) into a temporary folder, runs the union of the listed tests
there once unbroken, then for each mutant applies its edit, runs only its tests (``-x``: the
first failure kills it), and restores the file. The working tree is never touched.

A mutant whose snippet is not found exactly once is *stale*: the code moved on and the list
must follow. A mutant whose tests all pass *survived*: a test claims more than it proves.
Either makes the run exit 1; the table at the end names them.

Mutants of a state table's rows run against the Peer's tests only: the session tests pin the
rows by equality, and the point is that the Peer acts on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Seconds one mutant's tests may take; past it the mutant counts as killed (a hang is
#: caught: every test has its own timeout, so this is only a backstop).
MUTANT_TIMEOUT = 600
PYTEST = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "error::ResourceWarning"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Mutant:
    """One deliberate break: replace ``old`` (found exactly once in ``path``) by ``new``."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


PEER_LINK_TESTS = ("tests/test_peer_lifecycle.py", "tests/test_peer_reconnect.py")

MUTANTS: tuple[Mutant, ...] = (
    # -- session: the link table, as the Peer acts on it ----------------------------------------
    Mutant(
        name="session-expiry-keeps-link-open",
        path="callosum_like/session.py",
        old="(_S.OPEN, _I.EXPIRE): _S.BROKEN,",
        new="(_S.OPEN, _I.EXPIRE): _S.OPEN,",
        tests=PEER_LINK_TESTS,
        why="a silent remote must fail calls within heartbeat_timeout",
    ),
    Mutant(
        name="session-loss-keeps-link-open",
        path="callosum_like/session.py",
        old="(_S.OPEN, _I.LOST): _S.BROKEN,",
        new="(_S.OPEN, _I.LOST): _S.OPEN,",
        tests=PEER_LINK_TESTS,
        why="a dropped connection must fail the calls pending on it",
    ),
    Mutant(
        name="session-goodbye-keeps-link-open",
        path="callosum_like/session.py",
        old="(_S.OPEN, _I.GOODBYE): _S.BROKEN,",
        new="(_S.OPEN, _I.GOODBYE): _S.OPEN,",
        tests=PEER_LINK_TESTS,
        why="a remote that closes says why, and its link ends at once",
    ),
    Mutant(
        name="session-close-says-no-goodbye",
        path="callosum_like/session.py",
        old="(_S.OPEN, _I.CLOSE): _S.CLOSING,",
        new="(_S.OPEN, _I.CLOSE): _S.CLOSED,",
        tests=PEER_LINK_TESTS,
        why="closing tells every open remote (Goodbye), which fails its calls at once",
    ),
    Mutant(
        name="session-refusal-ignored",
        path="callosum_like/session.py",
        old="(_S.CONNECTING, _I.GOODBYE): _S.BROKEN,",
        new="(_S.CONNECTING, _I.GOODBYE): _S.CONNECTING,",
        tests=("tests/test_peer_routes.py",),
        why="a connecting peer turned away in its handshake fails at once, with the reason",
    ),
    Mutant(
        name="session-traffic-before-handshake",
        path="callosum_like/session.py",
        old="LinkState.CONNECTING: _HANDSHAKE | {m.MessageKind.GOODBYE},",
        new="LinkState.CONNECTING: frozenset(m.MessageKind),",
        tests=("tests/test_session.py", "tests/test_peer_fuzz.py", "tests/test_peer_security.py"),
        why="nothing but the handshake is served before it",
    ),
    Mutant(
        name="session-traffic-is-no-sign-of-life",
        path="callosum_like/session.py",
        old="        self._heard = now\n\n    def resume",
        new="        pass\n\n    def resume",
        tests=("tests/test_session.py",),
        why="every message heard keeps a link alive, not only the handshake",
    ),
    Mutant(
        name="session-never-pings",
        path="callosum_like/session.py",
        old="if now - self._pinged < self._interval:",
        new="if True:",
        tests=("tests/test_session.py", "tests/test_peer_lifecycle.py"),
        why="an idle link stays up: pings go out every heartbeat_interval",
    ),
    Mutant(
        name="session-abandoned-call-forgotten",
        path="callosum_like/session.py",
        old="(CallState.SENT, CallInput.ABANDON): CallState.CANCELLING,",
        new="(CallState.SENT, CallInput.ABANDON): CallState.DONE,",
        tests=("tests/test_peer_errors.py",),
        why="the late answer to a call we abandoned is expected, not counted as garbage",
    ),
    # -- ordering ---------------------------------------------------------------------------------
    Mutant(
        name="ordering-reorder-releases-at-once",
        path="callosum_like/ordering.py",
        old="        done[ticket] = reply\n        released: list[T] = []\n",
        new=(
            "        done[ticket] = None\n"
            "        released: list[T] = [] if reply is None else [reply]\n"
        ),
        tests=("tests/test_peer_ordering.py",),
        why="ORDERED replies are released in arrival order",
    ),
    Mutant(
        name="ordering-serial-queue-last-first",
        path="callosum_like/ordering.py",
        old="            return queue.popleft()",
        new="            return queue.pop()",
        tests=("tests/test_peer_ordering.py",),
        why="SERIALIZED requests of a key run in arrival order",
    ),
    Mutant(
        name="ordering-serial-queue-admits-all",
        path="callosum_like/ordering.py",
        old="        queue.append(item)\n        return False",
        new="        return True",
        tests=("tests/test_peer_ordering.py",),
        why="SERIALIZED requests of a key run one at a time",
    ),
    # -- dispatch ---------------------------------------------------------------------------------
    Mutant(
        name="dispatch-ordered-not-reordered",
        path="callosum_like/dispatch.py",
        old="        if inbound.ordering is not Ordering.ORDERED:\n            return [reply]",
        new="        if True:\n            return [reply]",
        tests=("tests/test_peer_ordering.py",),
        why="ORDERED replies go through the reorder buffer",
    ),
    Mutant(
        name="fairness-cap-plus-one",
        path="callosum_like/fairness.py",
        old="if self._running >= self._max_concurrency or not self._turns:",
        new="if self._running > self._max_concurrency or not self._turns:",
        tests=("tests/test_peer_ordering.py", "tests/test_peer_fairness.py"),
        why="max_concurrency caps the handlers running at once",
    ),
    Mutant(
        name="fairness-fast-start-past-the-cap",
        path="callosum_like/fairness.py",
        old="            or self._running >= self._max_concurrency\n",
        new="            or self._running > self._max_concurrency\n",
        tests=("tests/test_peer_ordering.py", "tests/test_peer_fairness.py"),
        why="a call started at once (nothing queued) still respects max_concurrency",
    ),
    Mutant(
        name="fairness-fast-start-jumps-the-queue",
        path="callosum_like/fairness.py",
        old="            self._turns\n            or self._running",
        new="            False\n            or self._running",
        tests=("tests/test_fairness.py", "tests/test_peer_fairness.py"),
        why="a new call does not start before requests already waiting for a slot",
    ),
    Mutant(
        name="receiving-cancel-taken-in-the-callback",
        path="callosum_like/receiving.py",
        old="        m.Call,\n        m.Credit,\n",
        new="        m.Call,\n        m.Cancel,\n        m.Credit,\n",
        tests=("tests/test_peer_errors.py",),
        why="a Cancel stops a job, which needs a task: it is handled in the receive loop",
    ),
    Mutant(
        name="dispatch-serialized-not-queued",
        path="callosum_like/dispatch.py",
        old="elif inbound.ordering is Ordering.SERIALIZED and not self._serial.arrive(",
        new="elif False and not self._serial.arrive(",
        tests=("tests/test_peer_ordering.py",),
        why="SERIALIZED requests wait for the running one of their key",
    ),
    Mutant(
        name="dispatch-cancel-ignored",
        path="callosum_like/dispatch.py",
        old='        await self._stop(inbound, "cancelled by the caller")',
        new="        return",
        tests=("tests/test_peer_errors.py", "tests/test_peer_calls.py"),
        why="a caller's timeout or cancellation cancels the remote handler",
    ),
    Mutant(
        name="fairness-max-pending-unbounded",
        path="callosum_like/fairness.py",
        old="if len(self._entries) >= self._max_pending:",
        new="if False:",
        tests=("tests/test_peer_overload.py",),
        why="past max_pending, requests are refused (OverloadedError), not queued",
    ),
    Mutant(
        name="fairness-no-round-robin",
        path="callosum_like/fairness.py",
        old="    if more:\n        turns.move_to_end(key)",
        new="    if more:\n        pass",
        tests=("tests/test_peer_fairness.py",),
        why="waiting requests start round-robin across links, not the flood's queue first",
    ),
    Mutant(
        name="fairness-no-push-out",
        path="callosum_like/fairness.py",
        old="            return _newest_unstarted(victim.origins.values())",
        new="            return REFUSED",
        tests=("tests/test_peer_fairness.py",),
        why="a remote under its share is admitted into a pool a flooder filled",
    ),
    Mutant(
        name="fairness-origins-not-shared",
        path="callosum_like/fairness.py",
        old="        if mine < sub:",
        new="        if False:",
        tests=("tests/test_peer_fairness.py",),
        why="callers behind one link (a relay) share its part fairly",
    ),
    Mutant(
        name="fairness-refused-when-the-flood-only-runs",
        path="callosum_like/fairness.py",
        old="return None  # everything above its share runs: admit past max_pending",
        new="return REFUSED",
        tests=("tests/test_peer_fairness.py",),
        why="a remote under its share is admitted even when nothing can be pushed out",
    ),
    Mutant(
        name="dispatch-queued-serialized-cancel-passes-the-key",
        path="callosum_like/dispatch.py",
        old="if inbound.ordering is Ordering.SERIALIZED and not inbound.behind_key:",
        new="if inbound.ordering is Ordering.SERIALIZED:",
        tests=("tests/test_peer_fairness.py",),
        why="a SERIALIZED call cancelled while queued does not start the next one of its key",
    ),
    Mutant(
        name="dispatch-pushed-out-ordered-reply-held",
        path="callosum_like/dispatch.py",
        old="ran = inbound.job is not None and not isinstance(reply, m.Cancelled)",
        new="ran = not isinstance(reply, m.Cancelled)",
        tests=("tests/test_peer_fairness.py",),
        why="an ORDERED call that never ran is answered at once, not after its key's others",
    ),
    Mutant(
        name="dispatch-execute-timeout-ignored",
        path="callosum_like/dispatch.py",
        old="timeout = earliest(self._execute_timeout, call.timeout)",
        new="timeout = None",
        tests=("tests/test_peer_errors.py",),
        why="execute_timeout cancels a handler that runs too long",
    ),
    Mutant(
        name="dispatch-lost-link-keeps-handlers",
        path="callosum_like/dispatch.py",
        old='                await self._stop(inbound, "link lost")',
        new="                pass",
        tests=("tests/test_peer_lifecycle.py", "tests/test_relay.py"),
        why="the handlers of a remote that went away are cancelled",
    ),
    Mutant(
        name="dispatch-stream-ignores-credit",
        path="callosum_like/dispatch.py",
        old="                await inbound.credit.take()\n",
        new="",
        tests=("tests/test_peer_streams.py", "tests/test_stream_memory.py"),
        why="a slow stream consumer holds the producer back",
    ),
    # -- transfers --------------------------------------------------------------------------------
    Mutant(
        name="transfers-window-ignored",
        path="callosum_like/transfers.py",
        old="while state.credit < 1 and state.error is None:",
        new="while False:",
        tests=("tests/test_transfers.py", "tests/test_peer_chunks.py"),
        why="a chunked body runs at most a window of chunks ahead of the receiver",
    ),
    Mutant(
        name="transfers-overrun-accepted",
        path="callosum_like/transfers.py",
        old="if incoming.received + size > incoming.head.size or not size:",
        new="if not size:",
        tests=("tests/test_transfers.py",),
        why="a chunk past the announced size is a protocol violation, not more memory",
    ),
    Mutant(
        name="transfers-oversize-head-accepted",
        path="callosum_like/transfers.py",
        old="if head.size > self._max_body_size:",
        new="if False:",
        tests=("tests/test_transfers.py", "tests/test_peer_chunks.py"),
        why="a chunked body over max_body_size is refused before any chunk is buffered",
    ),
    Mutant(
        name="transfers-stop-ignored",
        path="callosum_like/transfers.py",
        old="        state.error = TransferStopped(transfer)\n",
        new="",
        tests=("tests/test_transfers.py", "tests/test_peer_chunks.py"),
        why="a refused transfer stops sending",
    ),
    Mutant(
        name="transfers-open-transfers-unbounded",
        path="callosum_like/transfers.py",
        old="if len(self._open) >= MAX_OPEN_TRANSFERS:",
        new="if False:",
        tests=("tests/test_transfers.py",),
        why="a remote cannot open transfers without bound",
    ),
    # -- framing ----------------------------------------------------------------------------------
    Mutant(
        name="framing-frame-size-unchecked",
        path="callosum_like/wire/framing.py",
        old="elif value > self._max_frame_size:",
        new="elif False:",
        tests=("tests/wire/test_framing.py", "tests/transports/test_tcp_transport.py"),
        why="a frame over max_frame_size is refused before it is buffered",
    ),
    Mutant(
        name="framing-frame-count-unchecked",
        path="callosum_like/wire/framing.py",
        old="            if not 1 <= value <= MAX_FRAMES:\n                raise ProtocolError",
        new="            if False:\n                raise ProtocolError",
        tests=("tests/wire/test_framing.py",),
        why="a message announces 1..MAX_FRAMES frames",
    ),
    Mutant(
        name="framing-keeps-a-shared-read-whole",
        path="callosum_like/wire/framing.py",
        old="whole = pos == 0 and take == end",
        new="whole = pos == 0",
        tests=("tests/wire/test_framing.py",),
        why="a read that holds the end of a large frame and more is split where the frame ends",
    ),
    # -- streams ----------------------------------------------------------------------------------
    Mutant(
        name="streams-credit-unbounded",
        path="callosum_like/streams.py",
        old="while self.available <= 0 and self._error is None:",
        new="while False:",
        tests=("tests/test_peer_uploads.py", "tests/test_peer_streams.py"),
        why="a streamed body runs at most a window ahead of the handler reading it",
    ),
    Mutant(
        name="streams-inbox-over-window-accepted",
        path="callosum_like/streams.py",
        old="if len(self._items) >= self._window or self._ended:",
        new="if self._ended:",
        tests=("tests/test_stream_credit.py",),
        why="items past the credit granted are dropped and counted, not buffered",
    ),
    # -- the caller's side, where it acts on the above ---------------------------------------------
    Mutant(
        name="calls-stream-timeout-leaves-generator-running",
        path="callosum_like/calls.py",
        old="            if not finished:\n                link.abandon(call_id)",
        new="            if False:\n                link.abandon(call_id)",
        tests=("tests/test_peer_streams.py",),
        why="leaving a stream early or by timeout cancels the remote generator",
    ),
    Mutant(
        name="calls-upload-pump-left-running",
        path="callosum_like/calls.py",
        old="            if not pump.done():\n                pump.cancel()",
        new="            if False:\n                pump.cancel()",
        tests=("tests/test_peer_uploads.py",),
        why="a handler that answers before reading its upload stops the caller's iterator",
    ),
    # -- fleets and resumption (issues 19 and 20) ---------------------------------------------
    Mutant(
        name="replay-duplicates-handled-again",
        path="callosum_like/replay.py",
        old="        if seq <= self.received:",
        new="        if seq < self.received:",
        tests=("tests/test_replay.py",),
        why="a message received before must be dropped: its handler ran once",
    ),
    Mutant(
        name="replay-acknowledgement-frees-nothing",
        path="callosum_like/replay.py",
        old="        while kept and kept[0][0] <= seq:",
        new="        while kept and kept[0][0] < 0:",
        tests=("tests/test_replay.py",),
        why="what the remote acknowledged must be forgotten, or the bound is reached at once",
    ),
    Mutant(
        name="resumption-token-not-checked",
        path="callosum_like/resumption.py",
        old="link.identity != identity or link.token is None or link.token != msg.token",
        new="link.identity != identity",
        tests=("tests/test_peer_resume.py",),
        why="a session id (with an identity) must grant nothing without the Peer's token",
    ),
    Mutant(
        name="remotes-token-of-another-identity-replaces",
        path="callosum_like/remotes.py",
        old="        if previous is not None and previous.identity != identity:",
        new="        if previous is not None and previous.identity is None:",
        tests=("tests/test_peer_links.py",),
        why="knowing a token must not let another identity push a link off",
    ),
    Mutant(
        name="remotes-refused-resumption-keeps-session",
        path="callosum_like/remotes.py",
        old="refused = msg.reason.startswith(RESUME_REFUSED)",
        new="refused = False",
        tests=("tests/test_peer_resume.py",),
        why="after a server restart, calls must fail at once, not after resume_timeout",
    ),
    Mutant(
        name="remotes-to-takes-oldest-link",
        path="callosum_like/remotes.py",
        old="    for link in reversed(links.values()):",
        new="    for link in links.values():",
        tests=("tests/test_peer_links.py",),
        why="to=identity takes the most recently opened live link",
    ),
    Mutant(
        name="heartbeats-bound-side-pings-every-interval",
        path="callosum_like/heartbeats.py",
        old="    quiet = options.heartbeat_interval + tick",
        new="    quiet = 0.0",
        tests=("tests/test_peer_heartbeats.py",),
        why="an idle agent must cost the bound side one message in and one out per interval",
    ),
)


@dataclasses.dataclass
class Outcome:
    """How one mutant fared."""

    mutant: Mutant
    status: str  # "killed", "SURVIVED", "STALE"
    seconds: float
    detail: str


def copy_tree(into: Path) -> None:
    """Copy the working tree's files (tracked, and untracked but not ignored) into ``into``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        source = ROOT / os.fsdecode(raw)
        if source.is_file():
            target = into / os.fsdecode(raw)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, str]:
    """Run ``tests`` in ``tree``; return whether they passed and the first failure's name."""
    env = {**os.environ, "PYTHONPATH": str(tree)}  # children import the copy, too
    try:
        done = subprocess.run(
            [sys.executable, *PYTEST, *tests],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout} s"
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.MULTILINE)
    if done.returncode == 0:
        return True, ""
    return False, failed[0] if failed else done.stdout.strip().splitlines()[-1:][0]


def try_mutant(tree: Path, mutant: Mutant) -> Outcome:
    """Apply ``mutant`` in ``tree``, run its tests, and restore the file."""
    started = time.monotonic()
    path = tree / mutant.path
    original = path.read_text()
    count = original.count(mutant.old)
    if count != 1:
        return Outcome(mutant, "STALE", 0.0, f"snippet found {count} times in {mutant.path}")
    path.write_text(original.replace(mutant.old, mutant.new))
    try:
        passed, detail = run_tests(tree, mutant.tests, MUTANT_TIMEOUT)
    finally:
        path.write_text(original)
    status = "SURVIVED" if passed else "killed"
    return Outcome(mutant, status, time.monotonic() - started, detail or "all tests passed")


def main(argv: list[str] | None = None) -> int:
    """Run the mutants; exit 1 if one survived or is stale, 2 if the unbroken tests fail."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="select", help="only mutants whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the run of the unbroken tests"
    )
    args = parser.parse_args(argv)
    chosen = [mu for mu in MUTANTS if not args.select or args.select in mu.name]
    if args.list:
        for mu in chosen:
            print(f"{mu.name:48} {mu.path}: {mu.why}")
        return 0
    if not chosen:
        parser.error(f"no mutant name contains {args.select!r}")
    with tempfile.TemporaryDirectory(prefix="mutants-") as folder:
        tree = Path(folder)
        copy_tree(tree)
        if not args.no_baseline:
            union = tuple(dict.fromkeys(t for mu in chosen for t in mu.tests))
            print(f"baseline: {len(union)} test files, unbroken ...", flush=True)
            passed, detail = run_tests(tree, union, MUTANT_TIMEOUT * 2)
            if not passed:
                print(f"the unbroken tests fail ({detail}): fix that first")
                return 2
        outcomes = []
        for mutant in chosen:
            outcome = try_mutant(tree, mutant)
            outcomes.append(outcome)
            print(f"{outcome.status:8} {mutant.name:48} {outcome.seconds:6.1f} s  {outcome.detail}")
    bad = [o for o in outcomes if o.status != "killed"]
    print(f"\n{len(outcomes) - len(bad)} of {len(outcomes)} mutants killed")
    for o in bad:
        print(f"  {o.status}: {o.mutant.name} ({o.mutant.path}): {o.mutant.why}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
