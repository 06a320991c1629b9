"""The ``authorization`` block of a nats-server that makes identities proven.

Theory of operation: the NATS transport's subjects carry the connecting side's identity
token (``lower.nats_envelope``): it publishes on ``S.in.<identity>.…`` and receives on
``S.out.<identity>.…``. When the server lets each NATS user publish and subscribe only under
its own token, no user can speak as, or listen as, another; the bound side may then take the
token for a proven identity (``NATSTransport(trust_subjects=True)``). ``authorization_block``
writes those permissions for a list of users, in the server's configuration format, ready to
be included in (or pasted into) a server's configuration (docs/nats.md).

Every string is written as a JSON string, which the server's format reads as it is: a
password cannot end the block early or add settings of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from ..addresses import NATSAddress, is_nats_token

__all__ = ["NATSUser", "authorization_block", "serving_permissions", "connecting_permissions"]


@dataclass(frozen=True, slots=True)
class NATSUser:
    """A NATS user, whose name is also its identity token.

    Args:
        name: The user name and identity token (letters, digits, ``_``, ``-``).
        password: Its password (plain; the server also reads bcrypt hashes, ``$2a$…``).
        nkey: Its NKey public key (``U…``) instead of a password.

    Raises:
        ValueError: The name is not one subject token, or not exactly one of ``password``
            and ``nkey`` is given.
    """

    name: str
    password: str | None = None
    nkey: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not is_nats_token(self.name):
            raise ValueError(
                f"name must be one subject token (letters, digits, '_', '-'), got {self.name!r}"
            )
        if (self.password is None) == (self.nkey is None):
            raise ValueError(f"{self.name}: give exactly one of password and nkey")

    def credentials(self) -> dict[str, str]:
        """The user's entry without its permissions."""
        if self.nkey is not None:
            return {"nkey": self.nkey}
        assert self.password is not None
        return {"user": self.name, "password": self.password}


def _subject(subject: str) -> str:
    NATSAddress("nats://check", subject)  # validates, or raises ValueError naming it
    return subject


def serving_permissions(subject: str) -> dict[str, object]:
    """What a bound (serving) peer of ``subject`` may publish and subscribe to."""
    subject = _subject(subject)
    return {
        "publish": {"allow": [f"{subject}.out.>"]},
        "subscribe": {"allow": [f"{subject}.in.>"]},
    }


def connecting_permissions(subject: str, identity: str) -> dict[str, object]:
    """What the connecting peer ``identity`` of ``subject`` may publish and subscribe to."""
    subject = _subject(subject)
    return {
        "publish": {"allow": [f"{subject}.in.{identity}.>"]},
        "subscribe": {"allow": [f"{subject}.out.{identity}.>"]},
    }


def authorization_block(
    subject: str, *, serving: Iterable[NATSUser], connecting: Iterable[NATSUser]
) -> str:
    """The server's ``authorization { users = [...] }`` block for one service subject.

    Args:
        subject: The service subject (``NATSAddress.subject``).
        serving: The users that bind (serve) ``subject``: they may receive from every
            identity and answer each.
        connecting: The users that connect: each may send only as itself
            (``<subject>.in.<name>.…``) and receive only its own replies
            (``<subject>.out.<name>.…``). Give each the ``NATSTransport(identity=name)``.

    Returns:
        The block, in the server's configuration format (JSON strings inside).

    Raises:
        ValueError: A bad subject, a user name given twice, or no users at all.
    """
    users: list[dict[str, object]] = []
    names: set[str] = set()
    everyone = [(user, True) for user in serving] + [(user, False) for user in connecting]
    for user, serves in everyone:
        if user.name in names:
            raise ValueError(f"user {user.name!r} is given twice")
        names.add(user.name)
        allowed = (
            serving_permissions(subject) if serves else connecting_permissions(subject, user.name)
        )
        users.append({**user.credentials(), "permissions": allowed})
    if not users:
        raise ValueError("an authorization block needs at least one user")
    lines = ",\n".join(f"    {json.dumps(entry)}" for entry in users)
    return f"authorization {{\n  users = [\n{lines}\n  ]\n}}\n"
