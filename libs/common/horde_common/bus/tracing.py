"""Trace-context propagation for the bus: the consumer span (child of the publisher's) and the producer span.

Used by the publisher and the consumer (`bus.publisher`, `bus.consumer`). Tests install an SDK
tracer by patching `tracer` and `_sdk_tracing` here.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

tracer = trace.get_tracer("horde_common.bus")


_sdk_tracing = False


def tracing_enabled() -> bool:
    """Whether an SDK tracer provider is installed (without one, every span is a no-op).

    The global provider can be set only once, so a positive answer is final and cached.
    """
    global _sdk_tracing
    if not _sdk_tracing:
        provider = trace.get_tracer_provider()
        _sdk_tracing = not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
    return _sdk_tracing


@contextlib.contextmanager
def consumer_span(
    queue: str, queue_name: str, message_id: uuid.UUID, headers: Mapping[str, Any]
) -> Iterator[None]:
    """The handler's span, a child of the publisher's (trace context from the message headers).

    Without an SDK the no-op tracer would only make the remote parent current; doing that directly
    gives the handler (and what it publishes) the same trace context at a fraction of the cost.
    """
    parent = propagate.extract(headers)
    if not tracing_enabled():
        token = otel_context.attach(trace.set_span_in_context(trace.get_current_span(parent)))
        try:
            yield
        finally:
            otel_context.detach(token)
        return
    with tracer.start_as_current_span(
        f"{queue} process",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={"messaging.message.id": str(message_id), "messaging.destination": queue_name},
    ):
        yield


def producer_span(routing_key: str) -> contextlib.AbstractContextManager[Any]:
    """The publisher's span (only worth starting when `tracing_enabled()`)."""
    return tracer.start_as_current_span(f"{routing_key} publish", kind=SpanKind.PRODUCER)
