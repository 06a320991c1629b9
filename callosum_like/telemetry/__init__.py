"""Telemetry for callosum_like: OpenTelemetry traces, Prometheus metrics, a live console.

Each is an ``Interceptor`` (``cl.Peer(..., interceptors=[...])``); see docs/observability.md.

Theory of operation: the names are imported on first use, so that ``callosum_like`` needs
neither ``opentelemetry`` nor ``prometheus_client``: ``OpenTelemetry`` needs the extra
``otel`` and ``Prometheus`` the extra ``prometheus``; without it, importing the name raises
an ``ImportError`` that names the extra to install. ``Console`` needs nothing more.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .console import Console as Console
    from .otel import OpenTelemetry as OpenTelemetry
    from .prometheus import Prometheus as Prometheus

__all__ = ["OpenTelemetry", "Prometheus", "Console"]

#: Each name: its module, and the extra that brings what the module needs.
_LAZY: Final = {
    "OpenTelemetry": ("otel", "otel"),
    "Prometheus": ("prometheus", "prometheus"),
    "Console": ("console", None),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, extra = _LAZY[name]
    try:
        loaded = importlib.import_module(f"{__name__}.{module}")
    except ImportError as exc:
        if extra is None:
            raise
        raise ImportError(
            f"callosum_like.telemetry.{name} needs the {extra!r} extra: "
            f"pip install 'callosum-like[{extra}]' ({exc})",
            name=exc.name,
        ) from exc
    return getattr(loaded, name)
