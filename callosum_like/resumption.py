"""Which sessions a Peer keeps for resumption, and whether a resumption may take one.

Theory of operation (docs/PROTOCOL.md, "Resumption"): with ``Peer(resume_timeout=t)`` the
connecting side asks for a resumable session in its first ``Hello`` (``session``: a new
random id, ``received: None``), and the bound side, if it resumes too, says so in its
``Welcome`` (the same ``session``). Both then number their messages (``replay.Replay``).
When the connection is lost, each side *suspends* the link instead of ending it and keeps
it here for ``t`` seconds. The connecting side's next ``Hello`` names the session and what it
received; the bound side checks it (``check``) and answers with what it received; each then
sends again what the other lacks. A session that is not resumed within ``t`` ends
(``expired``) and its calls fail as without resumption.

A resumption is only granted to the Peer that opened the session: the same identity (the
authenticated one where the transport proves it) and the same reconnect token, for a session
that is still kept. Anything else is refused without touching the session.

This module decides; ``remotes`` acts (sends, moves the link to its new connection, ends
it). It does no I/O.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from typing import Final

from .errors import ProtocolError
from .link import Link
from .options import PeerOptions
from .replay import Replay
from .session import LinkState
from .wire import messages as m
from .wire.codec import Frame

__all__ = ["Resumption", "MAX_SESSION_ID_LENGTH", "RESUME_REFUSED"]

log = logging.getLogger(__name__)

#: How the reason of the ``Goodbye`` that refuses a resumption starts (docs/PROTOCOL.md §14).
RESUME_REFUSED: Final = "cannot resume"
#: The longest session id a Hello may carry (ours are 32 hex digits).
MAX_SESSION_ID_LENGTH: Final = 64


class Resumption:
    """The resumable sessions of one Peer.

    Args:
        options: The Peer's options (``resume_timeout``, ``max_unacked_bytes``).
    """

    def __init__(self, options: PeerOptions) -> None:
        self._timeout = options.resume_timeout
        self._heartbeat_timeout = options.heartbeat_timeout
        self._max_unacked = options.max_unacked_bytes
        self._bound = options.bound
        #: Bound side: every resumable link, open or suspended, by session id.
        self._sessions: dict[str, Link] = {}
        #: Connecting side: our resumable link, open or suspended.
        self.current: Link | None = None

    @property
    def on(self) -> bool:
        """Whether this Peer resumes sessions at all."""
        return self._timeout > 0

    def kept(self) -> Iterator[Link]:
        """The suspended links."""
        links = self._sessions.values() if self._bound else filter(None, [self.current])
        return (link for link in list(links) if link.session.state is LinkState.SUSPENDED)

    def owed_ack(self) -> list[Link]:
        """The open resumable links that received messages they did not acknowledge yet."""
        links = self._sessions.values() if self._bound else filter(None, [self.current])
        return [
            link
            for link in links
            if link.session.is_open and link.replay is not None and link.replay.ack_pending()
        ]

    def suspends(self, link: Link) -> bool:
        """Whether ``link``, whose connection was lost, is suspended rather than ended."""
        return link.replay is not None and link.resumable and link.session.is_open

    # -- connecting side -----------------------------------------------------------------

    def hello(self, link: Link, hello: m.Hello) -> m.Hello:
        """The Hello a connecting side sends on the new connection ``link``."""
        if not self.on:
            return hello
        old = self.current
        if old is not None and old.replay is not None and old.session.state is LinkState.SUSPENDED:
            return _with(hello, session=old.replay.session, received=old.replay.received)
        link.asked_session = secrets.token_hex(16)
        return _with(hello, session=link.asked_session, received=None)

    def welcomed(self, link: Link, msg: m.Welcome) -> tuple[Link | None, list[list[Frame]]]:
        """A Welcome came on the new connection ``link``.

        Returns:
            The suspended link the bound side resumed and what to send again on it; or
            ``(None, [])`` when this Welcome opens a session of its own (or none).

        Raises:
            ProtocolError: The Welcome names a session we did not ask for, or resumes from
                a count that is not ours.
        """
        old = self.current
        if old is not None and old is not link and old.session.state is LinkState.SUSPENDED:
            assert old.replay is not None
            if msg.session == old.replay.session and msg.received is not None:
                return old, old.replay.resend_after(msg.received)
        if msg.session is None:
            return None, []
        if msg.received is not None or msg.session != link.asked_session:
            raise ProtocolError(f"a Welcome for session {msg.session[:80]!r}, not ours")
        link.replay = Replay(msg.session, self._max_unacked)
        self.current = link
        return None, []

    # -- bound side ----------------------------------------------------------------------

    def open(self, link: Link, session: str) -> str | None:
        """A Hello asks for a new resumable ``session`` on ``link``; the id to welcome it with.

        Returns:
            The session id, or ``None`` when this Peer does not resume.

        Raises:
            ProtocolError: The id is malformed or already in use.
        """
        if not self.on:
            return None
        if not session or len(session) > MAX_SESSION_ID_LENGTH or session in self._sessions:
            raise ProtocolError(f"a new session with an unusable id ({len(session)} characters)")
        link.replay = Replay(session, self._max_unacked)
        self._sessions[session] = link
        return session

    def check(self, msg: m.Hello, identity: str) -> tuple[Link, list[list[Frame]]]:
        """A Hello asks to resume a session: the link kept for it, and what to send again.

        Raises:
            ProtocolError: Not granted (unknown or expired session, another peer's, or a
                count that is not the session's), with the reason.
        """
        assert msg.session is not None
        assert msg.received is not None
        link = self._sessions.get(msg.session) if self.on else None
        if link is None or link.replay is None:
            raise ProtocolError("an unknown or expired session")
        if link.identity != identity or link.token is None or link.token != msg.token:
            raise ProtocolError(f"a session of another peer (asked as {identity!r})")
        if not link.resumable or link.session.state not in (LinkState.OPEN, LinkState.SUSPENDED):
            raise ProtocolError("a session that ended")
        return link, link.replay.resend_after(msg.received)

    # -- both ----------------------------------------------------------------------------

    def expired(self, now: float) -> list[Link]:
        """The suspended links whose ``resume_timeout`` passed."""
        return [link for link in self.kept() if now - link.suspended_at >= self._timeout]

    def suspended(self, link: Link, now: float, *, silent: bool) -> None:
        """``link`` was suspended at ``now``; ``silent``: because the heartbeat expired it.

        Its ``resume_timeout`` counts from when its connection was lost: for a silent one,
        from ``heartbeat_timeout`` after it was last heard, so that a remote gone for good
        fails the calls within ``resume_timeout + heartbeat_timeout`` of going.
        """
        link.suspended_at = (
            min(now, link.session.heard + self._heartbeat_timeout) if silent else now
        )

    def next_expiry(self) -> float | None:
        """When the first suspended link's ``resume_timeout`` passes, or ``None``."""
        return min((link.suspended_at + self._timeout for link in self.kept()), default=None)

    def forget(self, link: Link) -> None:
        """``link`` ended: it can no longer be resumed."""
        if link.replay is not None and self._sessions.get(link.replay.session) is link:
            del self._sessions[link.replay.session]
        if self.current is link:
            self.current = None

    def clear(self) -> None:
        """The Peer closed."""
        self._sessions.clear()
        self.current = None


def _with(hello: m.Hello, *, session: str, received: int | None) -> m.Hello:
    return m.Hello(
        identity=hello.identity,
        max_body_size=hello.max_body_size,
        token=hello.token,
        session=session,
        received=received,
    )
