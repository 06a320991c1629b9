"""Typed services over the Peer: Thrift (``upper.thrift``) and msgpack schemas (``upper.schema``).

Import the submodule you need; this package imports nothing, so that thriftpy2 and msgspec
stay optional dependencies (the ``thrift`` and ``schema`` extras).
"""

__all__ = []
