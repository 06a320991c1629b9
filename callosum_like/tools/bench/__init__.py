"""Benchmarks side by side with peers: ``python -m callosum_like bench``.

Theory of operation: the *parent* (``run_bench``) walks ``repeat x systems x workloads``.
For each step it starts a fresh *server* process and a fresh *client* process on 127.0.0.1;
the server binds port 0, prints ``READY <address>`` and serves until its stdin closes; the
client connects, warms up, measures one workload, prints ``RESULT <json>`` and exits. Fresh
processes per step keep one workload's memory and warm caches out of the next one's figures.

Every system runs the *same* measuring code (``measure``), through a small client adapter
(``EchoClient``: ``echo`` and ``stream``). This project's server and client are the hidden
subcommands ``bench-server`` / ``bench-client``; the peers (callosum 1.0.3, grpc.aio, raw
pyzmq, raw asyncio streams) are scripts in ``bench/peers/`` of a source checkout, which call
``children.peer_main`` with their own adapter. A peer whose package is missing, or whose scripts
are absent, is reported as skipped, never as an error.

The client measures: wall time with ``time.perf_counter``; CPU time of both processes from
``/proc/<pid>/stat`` (all threads, so ZeroMQ's I/O thread counts); resident memory from
``/proc/<pid>/status``: the idle ``VmRSS`` after connecting, then the peak ``VmHWM`` after the
workload, with the peak reset in between through ``/proc/<pid>/clear_refs``. Off Linux the
CPU and memory figures are left out. With ``--pin`` every server process runs on one CPU and
every client process on another (the affinity is set in the parent around each spawn, so
every thread a child starts, ZeroMQ's I/O thread included, inherits it): the two no longer
trade places on the cores, nor share one, which steadies the small-call figures. Bodies are
random bytes (incompressible), so snappy compression cannot flatter a system. MB/s counts
10**6 bytes of body per second: an echo's body twice (there and back), a stream's chunks
once.

The rest is reporting: medians and spread over repeats, a terminal table per workload, JSON
(versions, host facts, event loop), a Markdown copy of the tables, the issue's targets with
met / not met, and a PNG chart of ratios to callosum when matplotlib is installed.

The modules, from the bottom: ``workloads`` and ``systems`` (what is run), ``measure`` (the
client's measuring code), ``children`` (the server and client processes), ``steps`` (the
parent's side of one step, and the summaries), ``report``, ``chart`` and ``record`` (tables
and targets, the PNG, the JSON), ``cli`` (the command). Only ``__main__`` imports ``cli`` and
``children``; the peer scripts import ``children``, ``measure`` and ``tools.child``.
"""

__all__: list[str] = []
