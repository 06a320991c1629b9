"""What a relay plugs into a Peer to pass calls on (``Peer(..., forwarder=...)``).

Only ``remotes`` calls these hooks (docs/federation.md); ``relay`` implements them.
"""

from __future__ import annotations

from typing import Protocol

from .link import Link
from .wire import messages as m

__all__ = ["Forwarder"]


class Forwarder(Protocol):
    """What a relay plugs into a Peer (``Peer(..., forwarder=...)``) to pass calls on.

    The Peer calls these from its receive loop; none may raise for a link that is gone.
    """

    async def forward_call(self, link: Link, msg: m.Call) -> bool:
        """Take a call with a ``target``, or one for a method this peer does not serve.

        Returns False to let the peer answer it itself (``MethodNotFoundError`` or, for a
        target, ``PeerDisconnectedError``).
        """
        ...

    async def forward_reply(self, link: Link, msg: m.Message) -> bool:
        """A reply or stream item arrived on ``link`` for a call no local caller made."""
        ...

    async def forward_control(self, link: Link, msg: m.Cancel | m.Credit) -> bool:
        """A Cancel or Credit for a call that arrived on ``link``; False if not forwarded."""
        ...

    async def link_lost(self, link: Link, reason: str) -> None:
        """``link`` ended; fail or cancel what was forwarded through it."""
        ...

    def peer_changed(self, name: str, up: bool, reason: str) -> None:
        """A name (direct or announced) appeared in or vanished from ``peer.peers``."""
        ...

    def uplink_opened(self, link: Link) -> None:
        """A connecting peer completed its handshake (also after a reconnection)."""
        ...
