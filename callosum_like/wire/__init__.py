"""The sans-IO wire protocol: message classes, codec and stream framing.

Internal users import from the defining modules (``wire.messages``, ``wire.codec``,
``wire.framing``); this package module only documents the split.
"""

__all__: list[str] = []
