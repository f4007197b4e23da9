"""`ErgateInstrumentor`: OpenTelemetry traces and metrics of jobs, as other instrumentors do it."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from functools import partial
from typing import Any

from celery.signals import beat_init, before_task_publish
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from ergate_celery.binding import ErgateCelery, all_bindings
from ergate_celery.contrib.opentelemetry.metrics import JobMetrics, stamp_publish
from ergate_celery.contrib.opentelemetry.tracing import TracingObserver
from ergate_celery.worker import observing
from ergate_celery.worker.runtime import Runtime

#: The instrumentation scope of the spans and metrics.
SCOPE = "ergate_celery"


class ErgateInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces every job as one trace and records its metrics: `ErgateInstrumentor().instrument()`.

    Keywords of `instrument()`: `tracer_provider` and `meter_provider` (default: the global
    ones), and `count_waiting=True` to count the waiting jobs (`ergate.jobs.waiting`) in this
    process; beat's process counts them without being asked. Call it in every process that
    submits, runs or releases jobs (the web app, the workers, beat), once the providers are
    set up. `uninstrument()` takes it all out again.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        """What the instrumented library needs; checked by `instrument()`."""
        return ("celery >= 5.4, < 6",)

    def _instrument(self, **kwargs: Any) -> None:
        tracer = trace.get_tracer(SCOPE, tracer_provider=kwargs.get("tracer_provider"))
        meter = metrics.get_meter(SCOPE, meter_provider=kwargs.get("meter_provider"))
        job_metrics = JobMetrics(meter, _runtimes)
        job_metrics.count_waiting = bool(kwargs.get("count_waiting", False))

        def in_beat(sender: Any = None, **_: Any) -> None:
            job_metrics.count_waiting = True

        self._in_beat = in_beat
        self._metrics = job_metrics
        beat_init.connect(in_beat, weak=False)
        before_task_publish.connect(stamp_publish, weak=False)
        observing.observer = TracingObserver(tracer, job_metrics)

    def _uninstrument(self, **kwargs: Any) -> None:
        observing.observer = None
        # The meter keeps the gauge's callback: it must count nothing any more.
        self._metrics.count_waiting = False
        before_task_publish.disconnect(stamp_publish)
        beat_init.disconnect(self._in_beat)


def _runtimes() -> Iterator[Callable[[], Runtime]]:
    # Each binding's runtime is made at first use, which may fail (an app without a backend).
    for binding in all_bindings():
        yield partial(_runtime_of, binding)


def _runtime_of(binding: ErgateCelery) -> Runtime:
    return binding.runtime
