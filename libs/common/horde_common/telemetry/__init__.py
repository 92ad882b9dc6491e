"""Logs, traces, metrics and system events: everything a service tells the outside about itself.

The names below are re-exported lazily (PEP 562 `__getattr__`): importing `horde_common.telemetry`
or one of its modules does not import OpenTelemetry, SQLAlchemy and structlog until a name that
needs them is used, so that the CLI and the debug command do not pay ~0.5 s for them up front.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from horde_common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from horde_common.telemetry.events import (
        SystemEventRecord,
        SystemEventSubtype,
        SystemEventType,
        record_event,
        record_event_detached,
        record_events_bulk,
    )
    from horde_common.telemetry.logs import (
        bind_context,
        configure_logging,
        current_service,
        get_logger,
        mask_secrets,
        mask_value,
        masked,
        unbind_context,
    )
    from horde_common.telemetry.metrics import configure_metrics, get_meter, render_metrics
    from horde_common.telemetry.metrics import shutdown_metrics as shutdown_metrics
    from horde_common.telemetry.tracing import configure_tracing, get_tracer
    from horde_common.telemetry.tracing import shutdown_tracing as shutdown_tracing

# Which submodule defines each re-exported name.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "SystemEventRecord",
            "SystemEventSubtype",
            "SystemEventType",
            "record_event",
            "record_event_detached",
            "record_events_bulk",
        ),
        "events",
    ),
    **dict.fromkeys(
        (
            "bind_context",
            "configure_logging",
            "current_service",
            "get_logger",
            "mask_secrets",
            "mask_value",
            "masked",
            "unbind_context",
        ),
        "logs",
    ),
    **dict.fromkeys(("configure_metrics", "get_meter", "render_metrics", "shutdown_metrics"), "metrics"),
    **dict.fromkeys(("configure_tracing", "get_tracer", "shutdown_tracing"), "tracing"),
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


def shutdown_telemetry() -> None:
    """Flush spans and stop metric readers; called once when a service process exits."""
    from horde_common.telemetry.metrics import shutdown_metrics
    from horde_common.telemetry.tracing import shutdown_tracing

    shutdown_tracing()
    shutdown_metrics()


__all__ = [
    "SystemEventRecord",
    "SystemEventSubtype",
    "SystemEventType",
    "bind_context",
    "configure_logging",
    "configure_metrics",
    "configure_tracing",
    "current_service",
    "get_logger",
    "get_meter",
    "get_tracer",
    "mask_secrets",
    "mask_value",
    "masked",
    "record_event",
    "record_event_detached",
    "record_events_bulk",
    "render_metrics",
    "shutdown_telemetry",
    "unbind_context",
]
