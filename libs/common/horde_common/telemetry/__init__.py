"""Logs, traces, metrics and system events: everything a service tells the outside about itself."""

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
from horde_common.telemetry.metrics import configure_metrics, get_meter, render_metrics, shutdown_metrics
from horde_common.telemetry.tracing import configure_tracing, get_tracer, shutdown_tracing


def shutdown_telemetry() -> None:
    """Flush spans and stop metric readers; called once when a service process exits."""
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
