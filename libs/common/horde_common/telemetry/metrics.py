"""OpenTelemetry metrics, read out in the Prometheus text format at `GET /metrics`.

Instruments are created with the OTel API (`get_meter(__name__).create_counter(...)`); the
Prometheus reader turns them into a collector on `prometheus_client`'s default registry, which also
carries the process and GC metrics. Pull-based, so nothing is exported when nobody scrapes.
"""

from __future__ import annotations

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

_provider: MeterProvider | None = None


def configure_metrics(service: str) -> MeterProvider:
    """Install the process-wide MeterProvider with a Prometheus reader (idempotent)."""
    global _provider
    if _provider is not None:
        return _provider
    reader = PrometheusMetricReader()
    provider = MeterProvider(
        resource=Resource.create({"service.name": service, "service.namespace": "horde"}),
        metric_readers=[reader],
    )
    metrics.set_meter_provider(provider)
    _provider = provider
    return provider


def get_meter(name: str) -> metrics.Meter:
    """A meter from the global provider (a no-op meter until `configure_metrics` ran)."""
    return metrics.get_meter(name)


def render_metrics() -> tuple[bytes, str]:
    """The body and content type of a Prometheus scrape."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def shutdown_metrics() -> None:
    if _provider is not None:
        _provider.shutdown()
