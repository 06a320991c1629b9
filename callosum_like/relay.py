"""The Relay: one authenticated upstream link for all the peers of a cluster.

Theory of operation: a ``Relay`` owns two Peers, a bound one *below* (its agents and nested
relays connect to it) and a connecting one *above* (to the manager, or to the next relay).
It plugs a ``Forwarder`` into each and forwards at the message level: it never unpacks a
body, it only rewrites the call ``id`` of each hop and the ``target``/``origin`` routes
(docs/PROTOCOL.md §11, docs/federation.md).

* Down: a call from above with ``target="agent-3"`` (or ``"sub/agent-1"``) is looked up
  among the names below, and goes on the link that reaches it with a fresh id and the rest
  of the route as its target.
* Up: a call from below without a target, for a method the relay does not serve, goes
  upstream with ``origin`` set to the caller's route below the relay.
* Back: replies, stream items, ``Cancel`` and ``Credit`` (rules by kind: ``hops``) are
  matched by (link, id) in a ``forward_table.ForwardTable``, sent on with the other hop's
  id, else verbatim.
  Stream credit therefore passes end to end. What is passed on goes through an
  ``outbox.Outboxes``: at once when it goes whole, else queued for its link and sent in
  order by a task, so that no receive loop waits for a next hop's chunk credit.
* Faults: when the link a call was forwarded *to* ends, its caller is answered
  ``Error(PEER_DISCONNECTED)``; when the link it came *from* ends, the callee gets
  ``Cancel``. At most ``max_forwarded`` calls are in flight; more are answered
  ``Error(OVERLOADED)``.
* Names: every name of the bound peer (``peers``, nested ones included) is announced
  upstream with ``PeerUp``/``PeerDown``. Changes are marked in a dirty set that one task
  sends out, always as the name's *current* state, so announcements never block a receive
  loop, coalesce, and cannot leave a stale name behind. When the upstream link (re)opens,
  every name is announced again (the upstream forgot them with the old link).
* Upstream: one task keeps the upstream Peer open. A connection that reconnects by itself
  (``Peer.reconnects``) gets ``heartbeat_timeout`` to come back (the relay re-announces);
  one that does not is rebuilt. Failed attempts back off exponentially from
  ``reconnect_interval`` to ``max_reconnect_interval``.

The relay uses only the Peer's surface for it: a ``Forwarder`` given at construction,
``Peer.lookup``/``uplink``/``reconnects``, and each ``Link``'s ``send``/``send_quietly``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from .addresses import AddressLike
from .dispatch import outcome_name
from .errors import (
    ErrorCode,
    ProtocolError,
    RPCError,
)
from .events import PeerEventKind, PeerEvents
from .forward_table import Forward, ForwardTable
from .hops import FORWARDING, Hop
from .interceptors import (
    ForwardDone,
    ForwardedCall,
    Interceptor,
    InterceptorChain,
    check_interceptors,
    forward_ended,
)
from .link import Link
from .lower.base import Transport
from .options import DEFAULT_CONNECT_TIMEOUT, check_count, check_positive
from .outbox import Outboxes
from .peer import Peer
from .routing import scoped
from .session import CallInput
from .wire import messages as m

if TYPE_CHECKING:
    from .auth import AbstractClientAuthenticator, AbstractServerAuthenticator

__all__ = ["Relay", "MAX_FORWARDED"]

log = logging.getLogger(__name__)

#: Calls a relay holds in flight at once (both directions). Each costs a small record; the
#: peers on either side bound what they hold themselves, this bounds the relay's share.
MAX_FORWARDED: Final = 100_000
#: Seconds before the first retry of a failed upstream connection; doubled per failure.
DEFAULT_RECONNECT_INTERVAL: Final = 0.1
#: The longest wait between two upstream connection attempts, in seconds.
DEFAULT_MAX_RECONNECT_INTERVAL: Final = 5.0


class Relay:
    """Binds for local peers and connects upstream over one link; see docs/federation.md.

    Peers connected below the relay are reachable from above as ``"<relay>/<peer>"`` (the
    relay's identity as the upstream authenticated it), and appear in the upstream peer's
    ``peers`` with its connect/disconnect events. Calls from below that the relay does not
    serve go upstream, where ``request.peer_id`` is ``"<relay>/<peer>"``. Relays chain.

    Args:
        bind: Address the local peers connect to.
        upstream: Address of the manager (or of the next relay) to connect to.
        identity: The relay's name, upstream and for its local peers (with CURVE upstream,
            the upstream authenticator's user id is the name that counts).
        authenticator: Server authenticator for the local side (turns on CURVE below).
        upstream_authenticator: Client authenticator for the upstream link (CURVE above).
        transport: Transport for the local side (default: by the type of ``bind``).
        upstream_transport: Transport for the upstream link (default: by ``upstream``).
        max_body_size: Largest body in bytes the relay accepts and passes on, on both sides.
        compress: Snappy-compress large bodies the relay sends.
        heartbeat_interval: Seconds between pings on every link, both sides.
        heartbeat_timeout: Seconds of silence after which a link is considered gone.
        connect_timeout: Seconds one upstream connection attempt waits for its handshake.
        reconnect_interval: Seconds before retrying a failed upstream connection, doubled
            after each failure.
        max_reconnect_interval: The longest wait between upstream attempts, in seconds.
        max_forwarded: Calls in flight through the relay before more are refused
            (``OverloadedError`` for their callers).
        resume_timeout: As for ``Peer``, on both hops: each resumes on its own, so an agent
            below keeps its calls through a break of either hop.
        interceptors: As for ``Peer``, given to both of the relay's peers (``attached``
            tells each about both: gauges and the console see the relay's links). The calls
            it forwards pass through untouched, headers and all, and are intercepted at
            their two ends; here each is told to ``intercept_forward`` (a hop span, rates;
            docs/observability.md).

    Raises:
        TypeError, ValueError: An argument is wrong (the message names it).
    """

    def __init__(
        self,
        *,
        bind: AddressLike,
        upstream: AddressLike,
        identity: str | None = None,
        authenticator: AbstractServerAuthenticator | None = None,
        upstream_authenticator: AbstractClientAuthenticator | None = None,
        transport: Transport | type[Transport] | None = None,
        upstream_transport: Transport | type[Transport] | None = None,
        max_body_size: int = 64 * 2**20,
        compress: bool = True,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 15.0,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        reconnect_interval: float = DEFAULT_RECONNECT_INTERVAL,
        max_reconnect_interval: float = DEFAULT_MAX_RECONNECT_INTERVAL,
        max_forwarded: int = MAX_FORWARDED,
        resume_timeout: float = 0.0,
        interceptors: Iterable[Interceptor] | None = None,
    ) -> None:
        chain = InterceptorChain(check_interceptors(interceptors))
        self._watch = chain if chain.watches_forwards else None  # intercept_forward
        options = functools.partial(
            Peer,
            identity=identity,
            interceptors=chain.interceptors,
            resume_timeout=resume_timeout,
            max_body_size=max_body_size,
            compress=compress,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
        )
        self._below = options(
            bind=bind, transport=transport, authenticator=authenticator, forwarder=_Below(self)
        )
        self._make_upstream = functools.partial(
            options,
            connect=upstream,
            transport=upstream_transport,
            authenticator=upstream_authenticator,
            connect_timeout=connect_timeout,
            forwarder=_Above(self),
        )
        try:
            self._above: Peer | None = self._make_upstream()
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"upstream: {exc}") from None
        check_count("max_forwarded", max_forwarded)
        self._upstream = upstream
        self._reconnect_interval = check_positive("reconnect_interval", reconnect_interval)
        self._max_reconnect_interval = max(
            self._reconnect_interval,
            check_positive("max_reconnect_interval", max_reconnect_interval),
        )
        self._max_forwarded = max_forwarded
        self._heartbeat_timeout = float(heartbeat_timeout)
        self._forwards = ForwardTable()
        self._outboxes = Outboxes()  # what waits to be passed on, per link
        self._dirty: dict[str, str] = {}  # names to announce -> why they went (if they did)
        self._wake = asyncio.Event()
        self._upstream_open = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._state = "new"

    def __repr__(self) -> str:
        return f"<Relay {self.identity!r} upstream={self._upstream} {self._state}>"

    # -- public surface -------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        """The relay's name: as the upstream assigned it once connected, else as configured."""
        above = self._above
        if above is not None and self._upstream_open.is_set():
            return above.identity
        return self._below.identity

    @property
    def address(self) -> str:
        """The address the local side is bound to (with the real port for port 0).

        Raises:
            RuntimeError: The relay is not open.
        """
        return self._below.address

    @property
    def peers(self) -> frozenset[str]:
        """The names reachable below the relay (direct identities and nested routes)."""
        return self._below.peers

    @property
    def upstream_connected(self) -> bool:
        """Whether the upstream link is open right now."""
        return self._uplink() is not None

    async def wait_upstream(self, timeout: float | None = None) -> None:
        """Wait until the upstream link is open (returns at once if it is).

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        async with asyncio.timeout(timeout):
            await self._upstream_open.wait()

    async def wait_for_peer(self, name: str, timeout: float | None = None) -> None:
        """Wait until ``name`` is reachable below the relay; see ``Peer.wait_for_peer``."""
        await self._below.wait_for_peer(name, timeout)

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a Relay can be opened only once")
        self._state = "open"
        try:
            await self._below.__aenter__()
        except BaseException:
            await self.aclose()
            raise
        self._tasks = [
            asyncio.create_task(self._keep_upstream(), name=f"{self!r} upstream"),
            asyncio.create_task(self._announce(), name=f"{self!r} announcements"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Fail what is in flight, close both sides and stop every task. Idempotent.

        Calls in flight through the relay are answered ``PeerDisconnectedError`` on the
        calling side and cancelled on the other. Cancellation: everything is released even
        when the caller is cancelled.
        """
        if self._state == "closed":
            return
        self._state = "closed"
        await asyncio.shield(self._close())

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._outboxes.aclose()
        for fwd in self._forwards.pop_everything():
            _ended(fwd, "PeerDisconnectedError")
            await _answer(fwd.caller_link, fwd.caller_id, "the relay closed")
            await _cancel(fwd)
        above, self._above = self._above, None
        if above is not None:
            await above.aclose()
        await self._below.aclose()

    # -- the upstream link ------------------------------------------------------------------------

    def _uplink(self) -> Link | None:
        above = self._above
        if above is None or self._state != "open":
            return None
        return above.uplink

    async def _keep_upstream(self) -> None:
        delay = self._reconnect_interval
        while True:
            peer = self._above or self._make_upstream()
            self._above = peer
            try:
                await peer.__aenter__()
            except Exception as exc:  # refused, unreachable, timed out: all retried
                self._above = None
                level = logging.WARNING if isinstance(exc, OSError | RPCError) else logging.ERROR
                log.log(level, "upstream %s: %r; retrying in %.1f s", self._upstream, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_reconnect_interval)
                continue
            delay = self._reconnect_interval
            try:
                await self._until_lost(peer)
            finally:
                self._above = None
                await peer.aclose()

    async def _until_lost(self, peer: Peer) -> None:
        """Return once ``peer`` lost its link for good.

        A connection that reconnects by itself (``peer.reconnects``) gets
        ``heartbeat_timeout`` to come back; one that does not is rebuilt at once.
        """
        grace = self._heartbeat_timeout if peer.reconnects else 0
        async with peer.events() as events:
            while True:
                if peer.peers:
                    if not await _next(events, PeerEventKind.DISCONNECTED):
                        return
                    continue
                if not grace:
                    return
                try:
                    async with asyncio.timeout(grace):
                        if not await _next(events, PeerEventKind.CONNECTED):
                            return
                except TimeoutError:
                    log.warning("upstream %s: no reconnection within %s s", self._upstream, grace)
                    return

    # -- announcements ----------------------------------------------------------------------------

    def mark(self, name: str, reason: str) -> None:
        """``name`` below appeared or vanished (``reason``): announce its state upstream."""
        if not m.is_route(name):  # a direct identity too long to be a route
            log.warning("%r cannot be announced: not a route", name[:80])
            return
        self._dirty[name] = reason
        self._wake.set()

    def _mark_everything(self) -> None:
        self._dirty = dict.fromkeys(filter(m.is_route, self._below.peers), "")
        self._wake.set()

    async def _announce(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                link = self._uplink()
                if link is None or self._above is None:
                    self._dirty.clear()  # everything is announced again on reconnection
                    break
                name = next(iter(self._dirty))
                reason = self._dirty.pop(name)
                up = self._below.lookup(name) is not None
                msg = m.PeerUp(peer=name) if up else m.PeerDown(peer=name, reason=reason)
                await link.send_quietly(msg)

    # -- forwarding -------------------------------------------------------------------------------

    async def forward_down(self, link: Link, msg: m.Call) -> bool:
        """A call from above for ``msg.target``: pass it to the link below that reaches it."""
        assert msg.target is not None
        found = self._below.lookup(msg.target)
        if found is None:
            return False  # the peer answers PeerDisconnected: no such peer here
        callee_link, target = found
        await self._forward(link, msg, callee_link, target, msg.origin)
        return True

    async def forward_up(self, link: Link, msg: m.Call) -> bool:
        """A call from below that the relay does not serve: pass it upstream."""
        if msg.target is not None:
            return False  # no routes between the peers below
        uplink = self._uplink()
        if uplink is None:
            await _answer(link, msg.id, "the relay has no upstream link")
            return True
        origin = scoped(link.identity, msg.origin)
        if not m.is_route(origin):
            text = f"the caller's route is longer than {m.MAX_ROUTE_LENGTH} characters"
            await link.send_quietly(_error(msg.id, ErrorCode.INTERNAL, text))
            return True
        await self._forward(link, msg, uplink, None, origin)
        return True

    async def _forward(
        self,
        caller_link: Link,
        msg: m.Call,
        callee_link: Link,
        target: str | None,
        origin: str | None,
    ) -> None:
        refusal = self._refusal(msg, callee_link)
        if refusal is not None:
            await caller_link.send_quietly(refusal)
            return
        callee_id = callee_link.session.start_call()
        done = self._watched(msg, caller_link, callee_link, target)
        fwd = Forward(caller_link, msg.id, callee_link, callee_id, done)
        self._forwards.add(fwd)
        call = dataclasses.replace(msg, id=callee_id, target=target, origin=origin)

        async def failed(exc: Exception) -> None:
            _ended(fwd, "PeerDisconnectedError")
            self._forwards.remove(fwd)
            callee_link.session.call_input(callee_id, CallInput.REPLY)
            await _answer(caller_link, msg.id, f"could not pass the call on: {exc}")

        await self._outboxes.send(callee_link, call, failed)

    def _watched(
        self, msg: m.Call, caller_link: Link, callee_link: Link, target: str | None
    ) -> list[ForwardDone] | None:
        """Tell the interceptors that ``msg`` is passed on; whom to tell how it ended."""
        if self._watch is None:
            return None
        call = ForwardedCall(
            method=msg.method,
            relay=self.identity,
            caller=scoped(caller_link.identity, msg.origin),
            callee=scoped(callee_link.identity, target),
            headers=msg.headers or {},
            stream=msg.stream,
        )
        return self._watch.forward(call) or None

    def _refusal(self, msg: m.Call, callee_link: Link) -> m.Error | None:
        if self._state != "open":
            return _error(msg.id, ErrorCode.PEER_DISCONNECTED, "the relay is closing")
        if msg.upload:
            text = "a relay does not pass on streamed call bodies yet; send the items as calls"
            return _error(msg.id, ErrorCode.INTERNAL, text)
        if len(self._forwards) >= self._max_forwarded:
            text = f"the relay holds {len(self._forwards)} calls (max_forwarded)"
            return _error(msg.id, ErrorCode.OVERLOADED, text)
        limit = callee_link.session.remote_max_body_size
        if len(msg.body) > limit:
            text = f"body of {len(msg.body)} bytes exceeds the next hop's max_body_size {limit}"
            return _error(msg.id, ErrorCode.MESSAGE_TOO_LARGE, text)
        return None

    async def forward_reply(self, link: Link, msg: m.Message) -> bool:
        """A reply or stream item from the callee's side: send it back with the caller's id."""
        call_id: int = msg.id  # type: ignore[union-attr]
        fwd = self._forwards.to_callee(link, call_id)
        if fwd is None:
            return False
        is_item = type(msg) is m.StreamItem
        if not is_item:
            self._forwards.remove(fwd)
            _ended(fwd, outcome_name(msg))  # type: ignore[arg-type]  # a reply
        reply: m.Message = dataclasses.replace(msg, id=fwd.caller_id)  # type: ignore[arg-type]
        body: bytes | None = getattr(msg, "body", None)
        limit = fwd.caller_link.session.remote_max_body_size
        if body is not None and len(body) > limit:
            if is_item:  # the consumer would drop it too; dropping here keeps its link safe
                log.warning("dropped a stream item of %d bytes (limit %d)", len(body), limit)
                return True
            text = f"the reply of {len(body)} bytes exceeds max_body_size {limit}"
            reply = _error(fwd.caller_id, ErrorCode.MESSAGE_TOO_LARGE, text)
        await self._outboxes.send(fwd.caller_link, reply)
        return True

    async def forward_control(self, link: Link, msg: m.Cancel | m.Credit) -> bool:
        """A Cancel or Credit from the caller's side: send it on with the callee's id."""
        fwd = self._forwards.from_caller(link, msg.id)
        if fwd is None:
            return False
        if type(msg) is m.Cancel:
            fwd.callee_link.session.call_input(fwd.callee_id, CallInput.ABANDON)
        await self._outboxes.send(fwd.callee_link, dataclasses.replace(msg, id=fwd.callee_id))
        return True

    async def link_lost(self, link: Link, reason: str) -> None:
        """``link`` ended: answer the callers of what went out on it, cancel what came in."""
        who = link.identity or "the remote"
        self._outboxes.drop(link)
        for fwd in self._forwards.pop_callee(link):
            _ended(fwd, "PeerDisconnectedError")
            await _answer(fwd.caller_link, fwd.caller_id, f"{who}: {reason}")
        for fwd in self._forwards.pop_caller(link):
            _ended(fwd, "cancelled")
            await _cancel(fwd)

    def uplink_opened(self) -> None:
        """The upstream link completed its handshake: announce every name below."""
        self._upstream_open.set()
        self._mark_everything()

    def uplink_lost(self) -> None:
        """The upstream link ended: the relay's identity is its configured one again."""
        self._upstream_open.clear()


class _Side:
    """The ``Forwarder`` the relay plugs into one of its two peers."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    async def forward_call(self, link: Link, msg: m.Call) -> bool:
        raise NotImplementedError

    async def forward_reply(self, link: Link, msg: m.Message) -> bool:
        if FORWARDING[type(msg)] is not Hop.TO_CALLER:
            return False
        return await self._relay.forward_reply(link, msg)

    async def forward_control(self, link: Link, msg: m.Cancel | m.Credit) -> bool:
        if FORWARDING[type(msg)] is not Hop.TO_CALLEE:
            return False
        return await self._relay.forward_control(link, msg)

    async def link_lost(self, link: Link, reason: str) -> None:
        await self._relay.link_lost(link, reason)

    def peer_changed(self, name: str, up: bool, reason: str) -> None:
        """A name appeared or vanished on this side (only the local side announces)."""

    def uplink_opened(self, link: Link) -> None:
        """A connecting peer finished its handshake (only the upstream side has one)."""


class _Below(_Side):
    """On the bound peer: calls from the local peers go up; their names are announced."""

    async def forward_call(self, link: Link, msg: m.Call) -> bool:
        return await self._relay.forward_up(link, msg)

    def peer_changed(self, name: str, up: bool, reason: str) -> None:
        self._relay.mark(name, reason)


class _Above(_Side):
    """On the upstream peer: calls with a target go down."""

    async def forward_call(self, link: Link, msg: m.Call) -> bool:
        if msg.target is None:
            return False  # for the relay itself
        return await self._relay.forward_down(link, msg)

    async def link_lost(self, link: Link, reason: str) -> None:
        self._relay.uplink_lost()
        await super().link_lost(link, reason)

    def uplink_opened(self, link: Link) -> None:
        self._relay.uplink_opened()


async def _next(events: PeerEvents, kind: PeerEventKind) -> bool:
    """Wait for the next event of ``kind``; False if the peer closed first."""
    async for event in events:
        if event.kind is kind:
            return True
    return False


def _ended(fwd: Forward, outcome: str) -> None:
    """Tell the interceptors watching ``fwd`` (once) how it ended."""
    if fwd.done:
        done, fwd.done = fwd.done, None
        forward_ended(done, outcome)


def _error(call_id: int, code: ErrorCode, text: str) -> m.Error:
    return m.Error(id=call_id, code=code, message=text)


async def _answer(link: Link, call_id: int, text: str) -> None:
    """Tell the caller of ``call_id`` that the peer it called is gone."""
    await link.send_quietly(_error(call_id, ErrorCode.PEER_DISCONNECTED, text))


async def _cancel(fwd: Forward) -> None:
    """The caller of ``fwd`` is gone: cancel the call on the callee's side."""
    with contextlib.suppress(ProtocolError):  # already abandoned by its caller
        fwd.callee_link.session.call_input(fwd.callee_id, CallInput.ABANDON)
    await fwd.callee_link.send_quietly(m.Cancel(id=fwd.callee_id))
