"""OpenTelemetry across processes for the tests: a `celery` subprocess writes its spans and
metric points as JSON lines into a folder (ERGATE_OTEL_OUT), one file per process, and the
test reads them back. No collector, no network."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

_lock = threading.Lock()


def _append(path: Path, records: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(record) + "\n" for record in records)
    with _lock, path.open("a") as out:
        out.write(lines)


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """What a test asks of a span, as JSON."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "exceptions": [
            (event.attributes or {}).get("exception.type")
            for event in span.events
            if event.name == "exception"
        ],
        "links": [f"{link.context.trace_id:032x}" for link in span.links],
        "start": span.start_time,
        "end": span.end_time,
        "pid": os.getpid(),
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span to a file, one JSON object a line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        _append(self.path, [span_record(span) for span in spans])
        return SpanExportResult.SUCCESS


class JsonLinesMetricExporter(MetricExporter):
    """Appends each exported data point (name, attributes, sum/count/value) to a file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        records = []
        for resource in metrics_data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = next(
                            getattr(point, name)
                            for name in ("count", "value")
                            if hasattr(point, name)
                        )
                        records.append(
                            {
                                "name": metric.name,
                                "attributes": dict(point.attributes or {}),
                                "value": value,
                                "pid": os.getpid(),
                            }
                        )
        _append(self.path, records)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to release: every export is written at once."""


def file_providers(folder: Path) -> tuple[TracerProvider, MeterProvider]:
    """Providers that write this process's spans and metrics into `folder`."""
    tracer_provider = TracerProvider()
    spans = folder / f"spans-{os.getpid()}.jsonl"
    tracer_provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(spans)))
    metrics = JsonLinesMetricExporter(folder / f"metrics-{os.getpid()}.jsonl")
    reader = PeriodicExportingMetricReader(metrics, export_interval_millis=200)
    return tracer_provider, MeterProvider(metric_readers=[reader])


def read_lines(folder: Path, kind: str) -> list[dict[str, Any]]:
    """Every record the processes wrote into `folder` (`kind`: "spans" or "metrics")."""
    records = []
    for path in sorted(folder.glob(f"{kind}-*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records
