"""Heartbeats: one schedule for all the links of a Peer.

Theory of operation: one task (``keep_alive``) wakes every ``min(heartbeat_interval,
heartbeat_timeout / 4)`` seconds and looks at each link once:

* a link that has not said Hello within ``heartbeat_timeout`` is refused (bound side);
* a link silent for ``heartbeat_timeout`` is expired (``LinkInput.EXPIRE``): it ends, or a
  resumable one is suspended, and the transport drops the connection (a connecting side
  makes a new one);
* an open link is pinged every ``heartbeat_interval`` by the connecting side; the bound
  side pings only a remote quiet for an interval and a tick (the remote's own pings, answered,
  keep an idle link alive); a resumable link is sent the ``Ack`` it is owed;
* a suspended session whose ``resume_timeout`` passed ends.

There is no timer or task per link, and a tick does not visit every link: the bound side
keeps its links in the order they were last heard from (``Remotes.heard``), so a tick visits
only those quiet for ``heartbeat_interval``, normally none. Only ``peer`` uses this module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .link import Link
from .remotes import Remotes
from .session import LinkInput
from .wire import messages as m

__all__ = ["keep_alive"]

log = logging.getLogger(__name__)


async def keep_alive(remotes: Remotes, clock: Callable[[], float]) -> None:
    """Ping every open link each ``heartbeat_interval``; expire the silent ones. Forever."""
    options = remotes.options
    tick = min(options.heartbeat_interval, options.heartbeat_timeout / 4)
    # A remote that pings every interval is heard at most a tick later than that.
    quiet = options.heartbeat_interval + tick
    while True:
        expiry = remotes.resumption.next_expiry()  # to the moment, as the contract says
        await asyncio.sleep(tick if expiry is None else max(0.0, min(tick, expiry - clock())))
        now = clock()
        # Only the links that went quiet (the bound side keeps them in that order); all of
        # them on the connecting side (it has one, and pings it every interval).
        for link in _quiet(remotes, now, quiet if options.bound else 0.0):
            try:
                await _heartbeat(remotes, link, now, quiet if options.bound else 0.0)
            except Exception:
                log.exception("heartbeat of %r failed", link.identity)
        for link in remotes.resumption.owed_ack():
            link.send_in_background(m.Ack(seq=link.replay.ack()))  # type: ignore[union-attr]
        for link in remotes.resumption.expired(now):
            reason = f"not resumed within {options.resume_timeout} s"
            try:
                await remotes.lose(link, LinkInput.EXPIRE, reason)
            except Exception:  # as for a heartbeat: one link's failure ends nothing else
                log.exception("ending the session of %r failed", link.identity)


def _quiet(remotes: Remotes, now: float, quiet: float) -> list[Link]:
    """The links not heard from for ``quiet`` seconds, the longest silent first.

    Costs what it returns, not the number of links (``remotes.links`` is in the order heard).
    """
    found = []
    for link in remotes.links.values():
        if now - link.session.heard < quiet:
            break
        found.append(link)
    return found


async def _heartbeat(remotes: Remotes, link: Link, now: float, quiet: float) -> None:
    options, session = remotes.options, link.session
    if session.expired(now) and remotes.awaits_hello(link):
        await remotes.refuse(link, f"no Hello within {options.heartbeat_timeout} s")
    elif session.expired(now):
        log.warning("%r went silent for %s s", link.identity or link.key, options.heartbeat_timeout)
        if await remotes.lost(link.key, LinkInput.EXPIRE, "heartbeat lost"):
            await remotes.disconnect(link.key)
    elif session.is_open and session.ping_due(now, quiet=quiet):
        if options.bound:  # a bound transport's send never waits
            await link.send_quietly(m.Ping())
        else:  # a connected one waits while the remote reads nothing: not this loop
            link.send_in_background(m.Ping())
