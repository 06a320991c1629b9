"""The lower layer: message transports behind one small contract (``lower.base``)."""

__all__: list[str] = []
