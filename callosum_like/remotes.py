"""The registry of a Peer's remotes: links coming and going, identities, names, sessions.

Theory of operation: ``Remotes`` owns every ``Link`` of one Peer, by transport key, and on
the bound side by identity too, with the names that relays below announce (a ``RouteTable``).

* A transport's ``Connected`` makes a link (``connected``); on the connecting side it says
  ``Hello`` at once, with the Peer's random reconnect token. The bound side registers the link
  under the remote's identity when its ``Hello`` arrives (the identity the transport proved
  wins over the one claimed). One identity may have several open links (several connections
  of one principal): all are served, calls ``to`` it take the most recently opened one, and
  replies go back on the link their request came on. Only a Hello carrying the token of an
  open link of the *same* identity replaces that link (the same Peer reconnected; the old
  link is told so with ``Goodbye``); a token that belongs to another identity is refused.
* Links that never complete their handshake are bounded: at most ``MAX_HANDSHAKES`` at once
  (a newer one pushes the oldest out) and each for at most ``heartbeat_timeout``.
* A link ends only through its session: ``lose`` applies the input (lost, expired, goodbye)
  and ends the link exactly when the session says BROKEN (calls fail, handlers are
  cancelled, names vanish, listeners hear of it), or, for a resumable link, SUSPENDED: it
  waits in ``resumption`` for its Peer to resume it on a new connection (``_resume``).
* ``heartbeats`` expires silent links through ``lost``; a ``Forwarder`` (the relay's) hears
  of names appearing and vanishing, of links lost and of the uplink opening.

Only ``peer`` and ``receiving`` use this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .errors import PeerClosedError, PeerDisconnectedError, ProtocolError, UnknownPeerError
from .events import EventHub, PeerEvent, PeerEventKind
from .forwarding import Forwarder
from .link import Link, Spawn
from .lower.base import CONNECTED_KEY, Connected, Connection
from .options import PeerOptions
from .resumption import RESUME_REFUSED, Resumption
from .routing import RouteTable
from .session import LinkInput, LinkState, Session
from .stats import Counters
from .wire import messages as m
from .wire.messages import ROUTE_SEPARATOR

if TYPE_CHECKING:
    from .dispatch import Dispatcher

__all__ = ["Remotes", "Forwarder", "REPLACED", "MAX_HANDSHAKES", "MAX_TOKEN_LENGTH"]

log = logging.getLogger(__name__)

#: The Goodbye reason a bound peer gives the older link of a Peer that reconnected (a Hello
#: with the same identity and reconnect token arrived on a new link).
REPLACED: Final = "replaced by a newer connection"
#: Links of a bound peer that may wait for their Hello at once; one more pushes out the
#: oldest. Honest remotes say Hello within a round trip, so only a flood of half-open
#: connections comes near it.
MAX_HANDSHAKES: Final = 4096
#: The longest reconnect token a Hello may carry (ours are 32 hex digits).
MAX_TOKEN_LENGTH: Final = 64
#: The link states a link is in until we close it (CLOSE applies to them).
_LIVE: Final = frozenset({LinkState.CONNECTING, LinkState.OPEN})


class Remotes:
    """The links of one Peer and what happens as they come and go.

    Args:
        options: The Peer's options.
        counters: Where reconnections and disconnections are counted.
        dispatcher: The serving side, which forgets the handlers of a lost link.
        events: Where ``PeerEvent``s go.
        forwarder: The relay's hooks, or ``None``.
        spawn: Runs a coroutine in the background, owned by the Peer.
        drop: Counts and logs a message dropped, with the reason.
    """

    def __init__(
        self,
        *,
        options: PeerOptions,
        counters: Counters,
        dispatcher: Dispatcher,
        events: EventHub,
        forwarder: Forwarder | None,
        spawn: Spawn,
        drop: Callable[[str], None],
    ) -> None:
        self.options = options
        self.identity = options.identity  # ours; the bound side may assign another
        #: By transport key, the least recently heard from first (``heard`` keeps the order,
        #: so the heartbeat visits only the links that went quiet).
        self.links: OrderedDict[bytes, Link] = OrderedDict()
        #: Open links by identity (bound side), each identity's oldest first.
        self.by_identity: dict[str, dict[bytes, Link]] = {}
        #: Our reconnect token (connecting side): the same in each Hello of this Peer.
        self.token = secrets.token_hex(16)
        self.routes = RouteTable()  # names announced by relays below us, bound side
        self.forwarder = forwarder
        #: Set on the connecting side while ``__aenter__`` waits for the first Welcome.
        self.welcomed: asyncio.Future[None] | None = None
        self._counters = counters
        self._dispatcher = dispatcher
        self._events = events
        self._spawn = spawn
        self._drop = drop
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._tokens: dict[str, Link] = {}  # the open links' reconnect tokens (bound side)
        self._handshaking: dict[bytes, Link] = {}  # links awaiting their Hello (bound side)
        self._over_announced: set[Link] = set()  # links that announced too much (logged)
        self.resumption = Resumption(options)
        self._serials = itertools.count(1)
        self._connection: Connection | None = None
        self._clock: Callable[[], float] = lambda: 0.0

    def start(self, connection: Connection, clock: Callable[[], float]) -> None:
        """The Peer opened ``connection``: links are made on it from now on."""
        self._connection = connection
        self._clock = clock

    def heard(self, link: Link) -> None:
        """A message from ``link`` (on its connection now) was accepted: it is the newest heard."""
        self.links.move_to_end(link.key)

    def awaits_hello(self, link: Link) -> bool:
        """Whether ``link`` (bound side) has not said Hello yet."""
        return link.key in self._handshaking

    # -- looking remotes up -----------------------------------------------------------------------

    @property
    def peers(self) -> frozenset[str]:
        """Identities of the connected remotes with a completed handshake."""
        if self.options.bound:
            return frozenset(self.by_identity).union(self.routes)
        link = self.uplink
        return frozenset() if link is None else frozenset({link.identity})

    def all_links(self) -> list[Link]:
        """Every link: those on a connection, and those suspended for resumption."""
        return [*self.links.values(), *self.resumption.kept()]

    @property
    def calls_in_flight(self) -> int:
        """Our calls and streams that await their reply, on every link."""
        return sum(len(link.pending) + len(link.streams) for link in self.all_links())

    @property
    def uplink(self) -> Link | None:
        """The open link of a connecting peer, or ``None`` (always, on the bound side).

        A session suspended for resumption counts as open: what is sent on it goes out
        when it is resumed.
        """
        link = self.links.get(CONNECTED_KEY)
        if link is not None and link.session.is_open:
            return link
        kept = self.resumption.current
        return kept if kept is not None and kept.session.state is LinkState.SUSPENDED else None

    def route(self, to: str | None) -> tuple[Link, str | None]:
        """The link a call ``to`` goes out on, and the ``Call.target`` to send with it.

        Raises:
            TypeError: ``to`` is not a str or None.
            PeerDisconnectedError: A connecting peer has no open link.
            UnknownPeerError: ``to`` names no connected remote (bound side).
        """
        if to is not None and not isinstance(to, str):
            raise TypeError(f"to must be a str or None, not {type(to).__name__}")
        if not self.options.bound:
            link = self.uplink
            if link is None:
                raise PeerDisconnectedError("not connected to the remote")
            return link, None
        if to is None:
            count = len(self.by_identity) + len(self.routes)
            if count != 1:
                text = f"to=None needs exactly one connected peer, there are {count}"
                raise UnknownPeerError(text)
            (links,) = self.by_identity.values()
            return _newest(links), None
        found = self.lookup(to)
        if found is None:
            raise UnknownPeerError(f"no connected peer is named {to!r}")
        return found

    def lookup(self, name: str) -> tuple[Link, str | None] | None:
        """The link that reaches ``name`` (direct or announced) and the target to send with.

        An identity with several open links is reached on the most recently opened one.
        """
        links = self.by_identity.get(name)
        if links:
            return _newest(links), None
        found = self.routes.lookup(name)
        if found is None:
            return None
        link, target = found
        return link, target  # type: ignore[return-value]

    async def wait_for(self, identity: str, timeout: float | None) -> None:
        """Wait until a remote named ``identity`` has connected (see ``Peer.wait_for_peer``)."""
        known = self.by_identity if self.options.bound else self.peers  # not 10,000 built
        if identity in known or identity in self.routes:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(identity, []).append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        finally:
            waiters = self._waiters.get(identity, [])
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(identity, None)

    # -- links coming ------------------------------------------------------------------------------

    async def connected(self, event: Connected) -> None:
        """The transport connected a remote: make its link (on the connecting side, say Hello)."""
        if event.peer in self.links:
            await self.lost(event.peer, LinkInput.LOST, "reconnected")
        options, connection = self.options, self._connection
        assert connection is not None
        interval, timeout = options.heartbeat_interval, options.heartbeat_timeout
        link = Link(
            event.peer,
            Session(heartbeat_interval=interval, heartbeat_timeout=timeout, now=self._clock()),
            connection=connection,
            counters=self._counters,
            max_body_size=options.max_body_size,
            chunk_size=options.chunk_size,
            compress=options.compress,
            clock=self._clock,
            spawn=self._spawn,
            user_id=event.user_id,
            serial=next(self._serials),
        )
        self.links[event.peer] = link
        if options.bound:
            self._handshaking[link.key] = link
            if len(self._handshaking) > MAX_HANDSHAKES:
                oldest = next(iter(self._handshaking.values()))
                await self.refuse(oldest, f"more than {MAX_HANDSHAKES} links without a Hello")
        else:
            # In the background: a ZeroMQ DEALER holds the send until its security handshake
            # completes, and the receive loop must stay free to hear that it failed.
            hello = m.Hello(
                identity=self.identity, max_body_size=options.max_body_size, token=self.token
            )
            link.send_in_background(self.resumption.hello(link, hello))

    async def hello(self, link: Link, msg: m.Hello) -> None:
        """The bound side's half of the handshake: register the remote, and welcome it."""
        if not self.options.bound:
            raise ProtocolError("Hello sent to a connecting peer")
        if not msg.identity or msg.max_body_size < 1:
            raise ProtocolError(f"bad Hello: {msg!r}")
        identity = link.user_id or msg.identity
        try:
            previous = self._check_hello(identity, msg.token)
        except ProtocolError as exc:
            await self.refuse(link, str(exc))
            return
        if msg.session is not None and msg.received is not None:
            await self._resume(link, msg, identity)
            return
        link.token = token = msg.token
        try:
            session = None if msg.session is None else self.resumption.open(link, msg.session)
        except ProtocolError as exc:
            await self.refuse(link, str(exc))
            return
        welcome = m.Welcome(
            identity=self.identity,
            assigned=identity,
            max_body_size=self.options.max_body_size,
            session=session,
        )
        try:  # before the link counts as open: one that left meanwhile never appears
            await link.send(welcome)
        except PeerDisconnectedError as exc:
            await self.lose(link, LinkInput.LOST, str(exc))
            await self.disconnect(link.key)
            return
        self._handshaking.pop(link.key, None)
        link.session.handshake(identity, msg.max_body_size)
        links = self.by_identity.setdefault(identity, {})
        links[link.key] = link
        if token is not None:
            self._tokens[token] = link
        if len(links) == 1:
            self.appeared(identity, link)
        else:
            self._emit(PeerEventKind.CONNECTED, identity, "", link)
        if previous is not None and previous is not link:
            # The same Peer reconnected before we noticed that its old link broke.
            log.info("%r reconnected; its older link is dropped", identity)
            await previous.send_quietly(m.Goodbye(reason=REPLACED))
            previous.resumable = False  # a new session replaces it
            await self.lose(previous, LinkInput.LOST, REPLACED)
            await self.disconnect(previous.key)

    def _check_hello(self, identity: str, token: str | None) -> Link | None:
        """Check a Hello's identity and token; return the open link it replaces, if any.

        Raises:
            ProtocolError: The Hello is refused, with the reason.
        """
        if ROUTE_SEPARATOR in identity:
            raise ProtocolError(f"identity {identity!r} contains {ROUTE_SEPARATOR!r}")
        if token is None:
            return None
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise ProtocolError(f"a reconnect token of {len(token)} characters")
        previous = self._tokens.get(token)
        if previous is not None and previous.identity != identity:
            # Only the Peer that holds the token can have sent it, and it cannot have
            # changed its identity: whoever sent this is not that Peer.
            raise ProtocolError(f"the reconnect token of another identity ({identity!r})")
        return previous

    async def _resume(self, link: Link, msg: m.Hello, identity: str) -> None:
        """The bound side's half of a resumption: the kept link takes the new connection."""
        try:
            kept, resend = self.resumption.check(msg, identity)
        except ProtocolError as exc:
            self._counters.resumes_refused += 1
            await self.refuse(link, f"{RESUME_REFUSED} {exc}")
            return
        if kept.session.is_open:  # we had not noticed that its connection died (ZeroMQ)
            old_key = kept.key
            await self.lose(kept, LinkInput.LOST, "resumed on a new connection")
            await self.disconnect(old_key)
        del self.links[link.key]  # the new connection's own link is not needed
        self._handshaking.pop(link.key, None)
        self._move(kept, link.key)
        kept.session.resume(self._clock())
        assert kept.replay is not None
        welcome = m.Welcome(
            identity=self.identity,
            assigned=identity,
            max_body_size=self.options.max_body_size,
            session=kept.replay.session,
            received=kept.replay.received,
        )
        await kept.send(welcome)
        await kept.resend(resend)
        self._counters.sessions_resumed += 1
        log.info("%r resumed its session (%d messages sent again)", identity, len(resend))

    def _move(self, link: Link, key: bytes) -> None:
        """A kept link goes on the connection ``key``, as its identity's newest link."""
        old_key = link.key
        link.key = key
        self.links[key] = link
        links = self.by_identity.get(link.identity)
        if links is not None:
            links.pop(old_key, None)
            links[key] = link

    async def refuse(self, link: Link, reason: str) -> None:
        """Turn a remote away during the handshake, telling it why (counted, logged)."""
        self._counters.links_refused += 1
        self._drop(f"refused a link: {reason}")
        await link.send_quietly(m.Goodbye(reason=reason))
        await self.lost(link.key, LinkInput.LOST, reason)
        await self.disconnect(link.key)

    async def welcome(self, link: Link, msg: m.Welcome) -> None:
        """The connecting side's half of the handshake: the link is open (or resumed)."""
        if self.options.bound:
            raise ProtocolError("Welcome sent to a bound peer")
        if not msg.assigned or msg.max_body_size < 1:
            raise ProtocolError(f"bad Welcome: {msg!r}")
        kept = self.resumption.current
        try:
            resumed, resend = self.resumption.welcomed(link, msg)
        except ProtocolError:
            await self.disconnect(link.key)  # start over on a new connection
            raise
        if resumed is not None:
            del self.links[link.key]
            self._move(resumed, link.key)
            resumed.session.resume(self._clock())
            await resumed.resend(resend)
            self._counters.sessions_resumed += 1
            log.info(
                "resumed the session with %r (%d messages sent again)", msg.identity, len(resend)
            )
            return
        if kept is not None and kept is not link and kept.session.state is LinkState.SUSPENDED:
            await self.lose(kept, LinkInput.LOST, "the remote did not resume the session")
        link.session.handshake(msg.identity, msg.max_body_size)
        self.identity = msg.assigned
        if self.welcomed is not None and not self.welcomed.done():
            self.welcomed.set_result(None)
        else:
            self._counters.reconnects += 1
            log.info("reconnected to %r", msg.identity)
        self._opened(msg.identity, link)
        if self.forwarder is not None:
            self.forwarder.uplink_opened(link)

    def appeared(self, name: str, link: Link) -> None:
        """``name`` (direct or announced, reached through ``link``) is in ``peers`` now."""
        self._opened(name, link)
        if self.forwarder is not None:
            self.forwarder.peer_changed(name, True, "")

    def vanished(self, name: str, reason: str, link: Link) -> None:
        """``name`` (last reached through ``link``) is no longer in ``peers``."""
        self._emit(PeerEventKind.DISCONNECTED, name, reason, link, links=0)
        if self.forwarder is not None:
            self.forwarder.peer_changed(name, False, reason)

    def _opened(self, identity: str, link: Link) -> None:
        for waiter in self._waiters.pop(identity, []):
            if not waiter.done():
                waiter.set_result(None)
        self._emit(PeerEventKind.CONNECTED, identity, "", link, links=1)

    def _emit(
        self, kind: PeerEventKind, name: str, reason: str, link: Link, links: int | None = None
    ) -> None:
        if links is None:
            links = len(self.by_identity.get(name, ()))
        self._events.emit(PeerEvent(kind, name, reason, link=link.serial, links=links))

    # -- links going -------------------------------------------------------------------------------

    async def goodbye(self, link: Link, msg: m.Goodbye) -> None:
        """The remote closed on purpose: end its link (a connecting peer reconnects)."""
        reason = f"the remote closed ({msg.reason})"
        kept = self.resumption.current
        if not await self.lost(link.key, LinkInput.GOODBYE, reason):
            return  # we are closing too
        assert self._connection is not None
        refused = msg.reason.startswith(RESUME_REFUSED)  # not some other, older Goodbye
        if refused and kept is not None and kept.session.state is LinkState.SUSPENDED:
            # Our resumption was refused (the remote restarted, or the session expired
            # there): the kept session is over, and the next connection opens a new one.
            await self.lose(kept, LinkInput.LOST, reason)
        if not self.options.bound and msg.reason == REPLACED:
            # A newer link with our reconnect token replaced this one while we still use it:
            # someone else holds our token. Reconnecting would replace it in turn, and the two
            # would take turns for ever: this link stays down.
            log.warning("a newer connection took this peer's place; not reconnecting")
            await self._connection.aclose()
            return
        await self._connection.disconnect(link.key)

    async def lost(self, key: bytes, why: LinkInput, reason: str) -> bool:
        """Apply ``why`` (lost, expired, goodbye) to the link of ``key``; see ``lose``."""
        link = self.links.get(key)
        return False if link is None else await self.lose(link, why, reason)

    async def lose(self, link: Link, why: LinkInput, reason: str) -> bool:
        """Suspend ``link`` if resumable, else end it if ``why`` takes its session to BROKEN.

        Returns whether it left its connection now (not a link we are closing ourselves).
        """
        if why is not LinkInput.GOODBYE and self.resumption.suspends(link):
            link.session.transition(LinkInput.SUSPEND)  # its calls and handlers carry on
            if self.links.get(link.key) is link:
                del self.links[link.key]
            self.resumption.suspended(link, self._clock(), silent=why is LinkInput.EXPIRE)
            log.info("%r: %s; its session is kept for resumption", link.identity, reason)
            return True
        was_open = link.session.is_open
        if link.session.transition(why) is not LinkState.BROKEN:
            return False
        self._forget(link)
        link.fail(PeerDisconnectedError(f"{link.identity or 'remote'}: {reason}"))
        if self.forwarder is not None:
            await self.forwarder.link_lost(link, reason)
        link.session.forget_calls()
        await self._dispatcher.drop_link(link)
        # A transport that reconnects gets another try, within connect_timeout; but a remote
        # that turned us away on purpose (Goodbye before its Welcome) gets no retry.
        connection = self._connection
        retry = why is not LinkInput.GOODBYE and connection is not None and connection.reconnects
        if self.welcomed is not None and not self.welcomed.done() and not retry:
            self.welcomed.set_exception(PeerDisconnectedError(reason))
        for name in self.routes.drop_link(link):
            self.vanished(name, reason, link)
        if was_open or link.replay is not None:  # open, or suspended
            self._counters.disconnects += 1
            if link.identity in self.by_identity:  # it has other links still
                self._emit(PeerEventKind.DISCONNECTED, link.identity, reason, link)
            else:
                self.vanished(link.identity, reason, link)
        return True

    def _forget(self, link: Link) -> None:
        """Take an ended link out of every table."""
        key = link.key
        if self.links.get(key) is link:
            del self.links[key]
        self.resumption.forget(link)
        self._handshaking.pop(key, None)
        self._over_announced.discard(link)
        links = self.by_identity.get(link.identity)
        if links is not None and links.get(key) is link:
            del links[key]
            if not links:
                del self.by_identity[link.identity]
        if link.token is not None and self._tokens.get(link.token) is link:
            del self._tokens[link.token]

    async def end_all(self, reason: str) -> None:
        """No event will come again: end every link, and a handshake still awaited."""
        for link in self.all_links():
            link.resumable = False  # nothing could resume it
            await self.lose(link, LinkInput.LOST, reason)
        if self.welcomed is not None and not self.welcomed.done():
            self.welcomed.set_exception(PeerDisconnectedError(reason))

    async def disconnect(self, key: bytes) -> None:
        """Have the transport drop the connection ``key`` (a connecting side reconnects)."""
        assert self._connection is not None
        await self._connection.disconnect(key)

    # -- closing -----------------------------------------------------------------------------------

    def fail_all(self, error: Exception) -> None:
        """We close: fail every call, stream and transfer of ours, on every link."""
        for link in self.all_links():
            link.fail(error)
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(PeerClosedError("the peer was closed"))
        if self.welcomed is not None and not self.welcomed.done():
            self.welcomed.cancel()

    async def say_goodbye(self) -> None:
        """Tell each open remote that we close (CLOSE takes its link to CLOSING)."""
        for link in list(self.links.values()):
            if link.session.transition(LinkInput.CLOSE) is LinkState.CLOSING:  # it was open
                with contextlib.suppress(Exception):
                    await link.send(m.Goodbye(reason="closing"))

    def end_links(self) -> None:
        """Our connection is closed: every link ends (CLOSED), and listeners hear of it."""
        closed = "this peer closed"
        for link in self.all_links():
            for name in self.routes.drop_link(link):
                self._emit(PeerEventKind.DISCONNECTED, name, closed, link, links=0)
            if link.session.state in _LIVE:  # it connected while we said our goodbyes
                link.session.transition(LinkInput.CLOSE)
            if link.session.state is LinkState.SUSPENDED:
                link.session.transition(LinkInput.CLOSE)  # nobody to say goodbye to
                self._emit(PeerEventKind.DISCONNECTED, link.identity, closed, link, 0)
            if link.session.state is LinkState.CLOSING:
                links = self.by_identity.get(link.identity, {})
                links.pop(link.key, None)
                self._emit(PeerEventKind.DISCONNECTED, link.identity, closed, link, len(links))
                link.session.transition(LinkInput.CLOSED)
        self.links.clear()
        self.by_identity.clear()
        self._tokens.clear()
        self.resumption.clear()
        self._handshaking.clear()
        self._events.close()

    def announced(self, link: Link, msg: m.PeerUp | m.PeerDown) -> None:
        """A relay below announced a name appearing (``PeerUp``) or vanishing (``PeerDown``)."""
        if not self.options.bound:
            raise ProtocolError(f"{type(msg).__name__} sent to a connecting peer")
        if type(msg) is m.PeerUp:
            try:
                name = self.routes.announce(link, link.identity, msg.peer)
            except ProtocolError as exc:  # counted each time, logged once per link
                self._counters.dropped_messages += 1
                if link not in self._over_announced:
                    self._over_announced.add(link)
                    log.warning("refused a PeerUp of %r: %s (logged once)", link.identity, exc)
                return
            if name is not None:
                self.appeared(name, link)
        else:
            name = self.routes.withdraw(link, link.identity, msg.peer)
            if name is not None:
                self.vanished(name, msg.reason or "gone", link)  # type: ignore[union-attr]


def _newest(links: dict[bytes, Link]) -> Link:
    """The most recently opened of one identity's open links, else of its suspended ones."""
    for link in reversed(links.values()):
        if link.session.is_open:
            return link
    return next(reversed(links.values()))
