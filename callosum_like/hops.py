"""How each message kind crosses a relay, derived from the kinds' declared traits.

Theory of operation: a relay forwards at the message level (``relay``). What it does with
a kind follows from the traits the kind declares (``wire.messages.Trait``), so a new kind
gets a rule by declaring its traits, and ``tests/test_message_kinds.py`` fails for a kind
that has none, or more than one:

* ``ROUTED``: a call goes down by its target, or up when the relay does not serve it;
* ``TO_CALLER``: replies and stream items of a forwarded call go back to its caller;
* ``TO_CALLEE``: cancels and credit from the caller go on to the callee;
* ``REFUSED``: a streamed call body does not cross a relay yet (the call is refused);
* ``LOCAL``: the handshake, pings, goodbyes, chunks and name announcements belong to one
  hop; the relay's own peers answer them (and it announces names itself).
"""

from __future__ import annotations

import enum
from typing import Final

from .wire import messages as m

__all__ = ["Hop", "FORWARDING", "rule_for"]


class Hop(enum.Enum):
    """What a relay does with a message kind (see the module doc)."""

    ROUTED = "routed"
    TO_CALLER = "to the caller"
    TO_CALLEE = "to the callee"
    REFUSED = "refused"
    LOCAL = "local"


#: The rule each trait that says where a kind goes brings (``BODY`` says nothing of that).
_RULES: Final[dict[m.Trait, Hop]] = {
    m.Trait.CALL: Hop.ROUTED,
    m.Trait.REPLY: Hop.TO_CALLER,
    m.Trait.STREAM: Hop.TO_CALLER,
    m.Trait.CONTROL: Hop.TO_CALLEE,
    m.Trait.UPLOAD: Hop.REFUSED,
    m.Trait.HANDSHAKE: Hop.LOCAL,
    m.Trait.LINK: Hop.LOCAL,
    m.Trait.TRANSFER: Hop.LOCAL,
    m.Trait.ROUTES: Hop.LOCAL,
}


def rule_for(cls: type[m.Message]) -> Hop:
    """The one rule of message class ``cls``.

    Raises:
        LookupError: Its traits give it no rule, or more than one.
    """
    rules = {_RULES[trait] for trait in cls.TRAITS if trait in _RULES}
    if len(rules) != 1:
        raise LookupError(
            f"{cls.__name__} has {len(rules)} relay rules: {sorted(r.value for r in rules)}"
        )
    return rules.pop()


#: The rule of every message class.
FORWARDING: Final[dict[type, Hop]] = {cls: rule_for(cls) for cls in m.MESSAGE_CLASSES}
