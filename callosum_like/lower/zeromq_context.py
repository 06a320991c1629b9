"""The process's ZeroMQ context, and the limits on sockets and open files it runs into.

``shared_context`` is the context every ZeroMQ connection uses unless given its own, sized
for ``MAX_SOCKETS`` at import; ``raise_open_file_limit`` lifts the soft open-file limit to the
hard one (the first socket calls it); ``out_of_room`` turns libzmq's "too many open files"
into an ``OSError`` that names the limit that was hit and how to raise it. docs/transports.md
has the costs per peer. Only ``lower.zeromq`` uses this module.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import weakref
from typing import Any, Final

import zmq
import zmq.asyncio

__all__ = [
    "shared_context",
    "raise_open_file_limit",
    "check_file_limit",
    "out_of_room",
    "MAX_SOCKETS",
    "FDS_PER_CONNECTING_PEER",
]

log = logging.getLogger(__name__)

#: The shared context's socket limit (``ZMQ_MAX_SOCKETS``; libzmq's default is 1,023):
#: libzmq's largest, 65,535, or 21,845 connecting peers at three sockets each. Its slot tables
#: cost about 0.75 MiB once per process; the open-file limit binds long before it.
MAX_SOCKETS: Final = 65_535
#: Descriptors one connecting peer holds: the mailbox eventfds of its DEALER, of its monitor
#: and of the PAIR reading it, and its TCP/IPC connection (``inproc://``: the first only).
FDS_PER_CONNECTING_PEER: Final = 4
_sized: weakref.WeakSet[zmq.asyncio.Context] = weakref.WeakSet()
_sizing = threading.Lock()
_file_limit_checked = False


def shared_context() -> zmq.asyncio.Context:
    """The process-wide ZeroMQ context that every ZeroMQ connection uses by default.

    It is pyzmq's ``zmq.asyncio.Context.instance()``, sized for ``MAX_SOCKETS`` sockets the
    first time we see it (libzmq takes the size only before the context's first socket: code
    that makes sockets on that instance before importing this module keeps libzmq's 1,023).
    """
    context = zmq.asyncio.Context.instance()
    if context not in _sized:
        with _sizing:
            if context not in _sized:
                context.set(zmq.MAX_SOCKETS, min(MAX_SOCKETS, context.get(zmq.SOCKET_LIMIT)))
                _sized.add(context)
    return context


shared_context()  # sized now, before anyone can make a socket on it


def raise_open_file_limit() -> int:
    """Raise the process's soft limit on open files to its hard limit; return the soft limit.

    Returns 0 where there is no such limit to read (no ``resource`` module).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux or macOS
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # macOS refuses more than OPEN_MAX for RLIM_INFINITY
            return int(soft)
        log.debug("raised the soft limit on open files from %d to %d", soft, hard)
        soft = hard
    return int(soft)


def check_file_limit() -> None:
    """Raise the soft open-file limit once per process (the first ZeroMQ socket does)."""
    global _file_limit_checked
    if not _file_limit_checked:
        _file_limit_checked = True
        raise_open_file_limit()


def out_of_room(exc: zmq.ZMQError, context: zmq.Context[Any]) -> OSError:
    """The ``OSError`` for a socket libzmq could not make: which limit, and how to raise it."""
    soft = hard = -1
    with contextlib.suppress(ImportError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError as error:  # no /proc; or no descriptor left even to list them
        open_now = soft if error.errno == errno.EMFILE else -1
    sockets = (
        f"the ZeroMQ context holds its limit of sockets (ZMQ_MAX_SOCKETS is "
        f"{context.get(zmq.MAX_SOCKETS)}; each connecting peer takes three): give "
        "ZeroMQTransport(context=...) a context made with ctx.set(zmq.MAX_SOCKETS, n) before "
        "its first socket"
    )
    files = (
        f"the process is out of open files (RLIMIT_NOFILE soft {soft}, hard {hard}; each "
        f"connecting ZeroMQ peer holds {FDS_PER_CONNECTING_PEER}): raise the limit with "
        "`ulimit -n` (as root for more than the hard limit), LimitNOFILE= in a systemd unit, "
        "or /etc/security/limits.conf"
    )
    if open_now < 0:  # pragma: no cover - cannot tell without /proc
        text = f"either {files}, or {sockets}"
    elif open_now + 16 < soft:
        text = sockets
    else:
        text = files
    return OSError(errno.EMFILE, f"cannot make a ZeroMQ socket: {text}")
