"""OpenTelemetry tracing: one TracerProvider per process, exported over OTLP/HTTP only when configured.

Spans are always created (so log lines carry trace ids and the bus can propagate context in AMQP
headers) even without a collector; the exporter is added only when `OTEL_EXPORTER_OTLP_ENDPOINT`
is set, so a service without a collector never blocks or logs export errors.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_provider: TracerProvider | None = None


def _traces_url(endpoint: str) -> str:
    """`OTEL_EXPORTER_OTLP_ENDPOINT` is the collector's base URL; the OTLP/HTTP signal path is appended."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def configure_tracing(service: str, otlp_endpoint: str | None = None) -> TracerProvider:
    """Install the process-wide TracerProvider (idempotent: the OTel global can be set only once)."""
    global _provider
    if _provider is not None:
        return _provider
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.namespace": "horde"})
    )
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=_traces_url(otlp_endpoint))))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def get_tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def shutdown_tracing() -> None:
    """Flush pending spans (called once at process exit)."""
    if _provider is not None:
        _provider.shutdown()
