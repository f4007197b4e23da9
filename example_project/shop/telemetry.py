"""OpenTelemetry for the shop, on when OTEL_EXPORTER_OTLP_ENDPOINT is set (Jaeger or an
OpenTelemetry collector, e.g. http://127.0.0.1:4318): traces and metrics of every process
that loads the Celery app — runserver, the worker and beat — go there over OTLP/HTTP.

Needs `pip install "ergate-celery[otel]" opentelemetry-sdk opentelemetry-exporter-otlp-proto-http`,
and opentelemetry-instrumentation-django for the request spans (used when installed). The
exporters' own variables apply (OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS, ...).
"""

from __future__ import annotations

import os


def start_telemetry() -> bool:
    """Send this process's traces and metrics to the OTLP endpoint, if one is set."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    from ergate_celery.contrib.opentelemetry import ErgateInstrumentor
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "shop")})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    ErgateInstrumentor().instrument()
    try:
        from opentelemetry.instrumentation.django import DjangoInstrumentor
    except ImportError:
        return True
    DjangoInstrumentor().instrument()
    return True
