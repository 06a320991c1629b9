"""Hierarchical peer names: which link of a bound peer reaches which announced name.

Theory of operation: a relay connects to a bound peer as one link, under its own
(authenticated) identity, and announces the peers behind it with ``PeerUp(peer)`` and
``PeerDown(peer)``. The bound peer keeps them here, each *scoped* under the identity of the
link that announced it: ``PeerUp("agent-3")`` on the link ``cluster-b`` makes the name
``cluster-b/agent-3``, reached through that link with ``Call.target = "agent-3"``.

Rules this table enforces:

* Scoping is not optional: ``announce`` always prefixes the announcing link's identity, so a
  link can never claim a name outside its own subtree (``PeerUp("cluster-c/agent-1")`` from
  ``cluster-b`` is ``cluster-b/cluster-c/agent-1``, not ``cluster-c``'s agent).
* Direct identities never contain ``/`` (the Peer refuses them in ``Hello``), so a relayed
  name never collides with a directly connected peer.
* Each link may announce at most ``max_per_link`` names; past that, announcements raise
  ``ProtocolError`` (the Peer drops and counts them), so a remote cannot grow this table
  without bound. A name whose scoped form is longer than ``MAX_ROUTE_LENGTH`` is refused
  the same way, so every name here is a route we can send on.
* Everything a link announced goes with it: ``drop_link`` returns the names that vanished.

Sans-IO: no loop, no sockets; the Peer feeds it what arrived and acts on what it answers.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Final

from .errors import ProtocolError
from .wire.messages import MAX_ROUTE_LENGTH, ROUTE_SEPARATOR

__all__ = ["MAX_ANNOUNCED_PEERS", "RouteTable", "scoped"]

#: Names one link may announce. A relay in front of a whole cluster announces one per agent
#: (and per nested relay); 64 Ki is far beyond a cluster and bounds the table at a few MiB.
MAX_ANNOUNCED_PEERS: Final = 65_536


def scoped(via: str, route: str | None) -> str:
    """The name by which we know ``route`` below the link named ``via`` (``via`` if None)."""
    return via if route is None else f"{via}{ROUTE_SEPARATOR}{route}"


class RouteTable:
    """The names announced by the links of one bound peer.

    Args:
        max_per_link: Names one link may announce at once (default ``MAX_ANNOUNCED_PEERS``).
    """

    def __init__(self, max_per_link: int | None = None) -> None:
        self._max_per_link = MAX_ANNOUNCED_PEERS if max_per_link is None else max_per_link
        self._routes: dict[str, tuple[Hashable, str]] = {}  # name -> (link key, target)
        self._by_link: dict[Hashable, set[str]] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._routes

    def __len__(self) -> int:
        return len(self._routes)

    def __iter__(self) -> Iterator[str]:
        return iter(self._routes)

    def announce(self, key: Hashable, via: str, route: str) -> str | None:
        """Link ``key``, known as ``via``, reaches ``route``.

        Returns:
            The scoped name if it is new, ``None`` if it was already announced.

        Raises:
            ProtocolError: The link already announced ``max_per_link`` names, or the scoped
                name is longer than ``MAX_ROUTE_LENGTH``.
        """
        name = scoped(via, route)
        if name in self._routes:
            return None
        if len(name) > MAX_ROUTE_LENGTH:
            raise ProtocolError(f"{name[:80]!r}... is longer than {MAX_ROUTE_LENGTH} characters")
        names = self._by_link.setdefault(key, set())
        if len(names) >= self._max_per_link:
            raise ProtocolError(f"{via!r} announced more than {self._max_per_link} peers")
        names.add(name)
        self._routes[name] = (key, route)
        return name

    def withdraw(self, key: Hashable, via: str, route: str) -> str | None:
        """Link ``key`` no longer reaches ``route``; return the scoped name if it was known."""
        name = scoped(via, route)
        names = self._by_link.get(key)
        if names is None or name not in names:
            return None
        names.discard(name)
        if not names:
            del self._by_link[key]
        del self._routes[name]
        return name

    def drop_link(self, key: Hashable) -> list[str]:
        """Link ``key`` ended: forget everything it announced and return those names."""
        names = sorted(self._by_link.pop(key, ()))
        for name in names:
            del self._routes[name]
        return names

    def lookup(self, name: str) -> tuple[Hashable, str] | None:
        """The link key and the target to send with, for announced ``name``; else ``None``."""
        return self._routes.get(name)
