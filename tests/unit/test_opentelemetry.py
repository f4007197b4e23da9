"""OpenTelemetry without a server: `ErgateInstrumentor` on a `WorkflowTester` (the real step
body, release and operations) and on the memory store, with the SDK's in-memory exporter and
metric reader. A real worker and beat carry the same trace across processes in
`tests/test_opentelemetry.py`."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from ergate_celery import (
    ChildResult,
    ErgateCelery,
    FanOut,
    FanOutPath,
    Job,
    JobStatus,
    Sleep,
    Wait,
    WaitForSignal,
    Workflow,
)
from ergate_celery.contrib.opentelemetry import ErgateInstrumentor
from ergate_celery.operations.retrying import retry_job
from ergate_celery.operations.submission import new_job, submit
from ergate_celery.scheduling.beat import recover_stuck_jobs
from ergate_celery.testing import WorkflowTester
from ergate_celery.worker import observing

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [span for span in self.finished() if span.name.startswith(prefix)]

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Each metric's data points: (attributes, sum or count or value)."""
        found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = [
                        (dict(point.attributes or {}), _value(point))
                        for point in metric.data.data_points
                    ]
        return found


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _value(point: Any) -> Any:
    for name in ("count", "value"):
        if hasattr(point, name):
            return getattr(point, name)
    return None


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    instrumentor = ErgateInstrumentor()
    instrumentor.instrument(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    try:
        yield Telemetry(spans, reader, tracer_provider)
    finally:
        instrumentor.uninstrument()


def _order_workflow(fail_boom: list[bool]) -> Workflow:
    workflow = Workflow(unique_name="order")
    tries: list[int] = []

    @workflow.step(autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=5)
    def charge(order: int) -> int:
        tries.append(order)
        if len(tries) == 1:
            raise ConnectionError("the card service is down")
        return order

    @workflow.step
    def nap(order: int) -> int:
        raise Sleep(seconds=60, retval=order)

    @workflow.step
    def ship(order: int) -> int:
        if fail_boom[0]:
            raise RuntimeError("no courier")
        return order + 1

    return workflow


def test_one_trace_from_the_request_through_retries_a_sleep_a_failure_and_retry_job(
    telemetry: Telemetry,
) -> None:
    fail = [True]
    tester = WorkflowTester(_order_workflow(fail), now=NOW)
    tracer = telemetry.tracer_provider.get_tracer("web")
    with tracer.start_as_current_span("POST /orders") as request:
        job = tester.submit("order", initial_input_value=7)
    tester.run()
    tester.advance(seconds=120)  # the retry's countdown, then the sleep
    assert tester.get_job(job.id).status is JobStatus.FAILED
    fail[0] = False
    retry_job(tester.runtime, job.id)
    tester.run()
    assert tester.get_job(job.id).status is JobStatus.COMPLETED

    trace_id = request.get_span_context().trace_id
    spans = telemetry.finished()
    assert {span.context.trace_id for span in spans} == {trace_id}
    (submit,) = telemetry.named("ergate submit")
    assert submit.name == "ergate submit order"
    assert _parent_id(submit) == request.get_span_context().span_id
    stored = tester.get_job(job.id).trace_context
    assert f"{submit.context.span_id:016x}" in (stored or {})["traceparent"]

    steps = [
        (
            span.name,
            span.attributes["ergate.attempt"],
            span.attributes["ergate.job.status"],
            span.status.status_code,
        )
        for span in telemetry.named("ergate step")
    ]
    assert steps == [
        # The Celery retry: the claim is given back, the job RUNNING until the retry claims it.
        ("ergate step order.charge", 1, "RUNNING", StatusCode.ERROR),
        ("ergate step order.charge", 2, "QUEUED", StatusCode.UNSET),
        ("ergate step order.nap", 1, "SCHEDULED", StatusCode.UNSET),
        ("ergate step order.ship", 1, "FAILED", StatusCode.ERROR),
        ("ergate step order.ship", 2, "COMPLETED", StatusCode.UNSET),
    ]
    for span in telemetry.named("ergate step"):
        assert span.attributes["ergate.job.id"] == job.id
        assert span.attributes["ergate.workflow"] == "order"
        assert span.name.endswith(f".{span.attributes['ergate.step']}")
        assert _parent_id(span) == submit.context.span_id
    failed = [span for span in telemetry.named("ergate step") if span.status.is_ok is False]
    errors = [
        event.attributes["exception.type"]
        for s in failed
        for event in s.events
        if event.name == "exception"
    ]
    assert errors == ["ConnectionError", "RuntimeError"]
    operations = [
        (span.name, span.attributes["ergate.job.status"])
        for span in telemetry.finished()
        if span.name.split()[1] in {"release", "retry"}
    ]
    assert operations == [("ergate release order", "QUEUED"), ("ergate retry order", "QUEUED")]

    metrics = telemetry.metrics()
    durations = {point[0]["ergate.step"]: point[1] for point in metrics["ergate.step.duration"]}
    assert durations == {"charge": 2, "nap": 1, "ship": 2}
    finished = {
        point[0]["ergate.job.status"]: point[1] for point in metrics["ergate.jobs.finished"]
    }
    assert finished == {"FAILED": 1, "COMPLETED": 1}


def test_a_job_submitted_outside_any_span_starts_its_own_trace(telemetry: Telemetry) -> None:
    tester = WorkflowTester(_order_workflow([False]), now=NOW)
    job = tester.submit("order", initial_input_value=1)
    tester.run()
    (submit,) = telemetry.named("ergate submit")
    assert submit.parent is None
    assert {s.context.trace_id for s in telemetry.finished()} == {submit.context.trace_id}
    assert tester.get_job(job.id).trace_context is not None


def test_a_child_job_given_its_parents_trace_context_is_in_its_parents_trace(
    telemetry: Telemetry,
) -> None:
    child_workflow = Workflow(unique_name="resize")

    @child_workflow.step
    def resize(url: str) -> str:
        return url

    tester = WorkflowTester(_order_workflow([False]), child_workflow, now=NOW)
    parent = tester.submit("order", initial_input_value=1)
    # What a fan-out does: the child is stored and published with the parent's context.
    child = tester.get_job(parent.id).model_copy(
        update={
            "id": f"{parent.id}.0",
            "workflow_name": "resize",
            "current_step_name": "resize",
            "initial_input_value": "a.png",
            "submitted_at": NOW,
        }
    )
    tester.runtime.store.create(child)
    tester.runtime.publish(child)
    tester.run()
    assert tester.get_job(child.id).status is JobStatus.COMPLETED
    (submit,) = telemetry.named("ergate submit")
    (resized,) = telemetry.named("ergate step resize.resize")
    assert resized.context.trace_id == submit.context.trace_id
    assert _parent_id(resized) == submit.context.span_id


def test_signal_and_cancel_make_spans_in_the_job_trace_and_a_cancel_that_changes_nothing_none(
    telemetry: Telemetry,
) -> None:
    workflow = Workflow(unique_name="approval")

    @workflow.step
    def ask(x: int) -> int:
        raise WaitForSignal("approved", retval=x)

    @workflow.step
    def done(x: int) -> int:
        return x

    tester = WorkflowTester(workflow, now=NOW)
    signalled = tester.submit("approval", initial_input_value=1)
    waiting = tester.submit("approval", initial_input_value=2)
    tester.run()
    tester.signal(signalled.id, "approved")
    tester.run()
    tester.cancel(waiting.id)
    tester.cancel(signalled.id)  # COMPLETED already: nothing changes, no span
    by_job: dict[str, list[str]] = {}
    for span in telemetry.finished():
        by_job.setdefault(str(span.attributes["ergate.job.id"]), []).append(span.name)
    assert by_job[signalled.id] == [
        "ergate submit approval",
        "ergate step approval.ask",
        "ergate signal approval",
        "ergate step approval.done",
    ]
    assert by_job[waiting.id] == [
        "ergate submit approval",
        "ergate step approval.ask",
        "ergate cancel approval",
    ]
    traces = {
        s.context.trace_id
        for s in telemetry.finished()
        if s.attributes["ergate.job.id"] == waiting.id
    }
    assert len(traces) == 1


def test_waiting_jobs_are_counted_by_reason_from_the_store(
    telemetry: Telemetry, memory_ergate: ErgateCelery
) -> None:
    ErgateInstrumentor().uninstrument()
    reader = InMemoryMetricReader()
    ErgateInstrumentor().instrument(
        meter_provider=MeterProvider(metric_readers=[reader]), count_waiting=True
    )
    telemetry.reader = reader
    store = memory_ergate.store
    since = NOW - timedelta(hours=1)
    waits = {
        "scheduled": {"status": JobStatus.SCHEDULED, "requested_start_time": NOW},
        "sleep": {"status": JobStatus.SCHEDULED, "wait": Wait(step="a", since=since, until=NOW)},
        "signal": {"status": JobStatus.SCHEDULED, "wait": Wait(step="a", since=since, signal="s")},
        "paused": {"status": JobStatus.QUEUED, "parked": True},
        "queued": {"status": JobStatus.QUEUED},
        "running": {"status": JobStatus.RUNNING},
    }
    for name, fields in waits.items():
        store.create(Job(id=name, workflow_name="counted", submitted_at=since, **fields))
    # An app whose jobs cannot be read (it has no result backend) hides nobody's count.
    unreadable = ErgateCelery(Celery(f"no-backend-{uuid.uuid4().hex[:6]}", set_as_current=False))
    # Every ErgateCelery of the process is counted: other tests' apps may still be alive.
    points = telemetry.metrics()["ergate.jobs.waiting"]
    assert unreadable.app.conf.result_backend is None
    assert sorted(
        (p[0]["ergate.wait.reason"], p[1]) for p in points if p[0]["ergate.workflow"] == "counted"
    ) == [("paused", 1), ("scheduled", 1), ("signal", 1), ("sleep", 1)]


def test_uninstrument_takes_the_hook_out() -> None:
    instrumentor = ErgateInstrumentor()
    instrumentor.instrument()
    assert observing.observer is not None
    instrumentor.uninstrument()
    assert observing.observer is None


def test_nothing_of_opentelemetry_is_imported_until_instrumented() -> None:
    code = (
        "import sys\n"
        "from ergate_celery import Workflow, submit_job\n"
        "from ergate_celery.testing import WorkflowTester\n"
        "w = Workflow(unique_name='w')\n"
        "w.step(lambda x: x)\n"
        "t = WorkflowTester(w); t.submit('w', initial_input_value=1); t.run()\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_a_child_submitted_with_its_parents_trace_context_is_in_its_parents_trace(
    telemetry: Telemetry,
) -> None:
    workflow = _order_workflow([False])
    tester = WorkflowTester(workflow, now=NOW)
    parent = tester.get_job(tester.submit("order", initial_input_value=1).id)
    child = new_job(
        workflow,
        initial_input_value=2,
        user_context=None,
        requested_start_time=None,
        job_id=f"{parent.id}.0",
        now=NOW,
    ).model_copy(update={"trace_context": parent.trace_context})
    submit(tester.runtime, child)
    submits = {span.attributes["ergate.job.id"]: span for span in telemetry.named("ergate submit")}
    assert submits[child.id].context.trace_id == submits[parent.id].context.trace_id
    assert _parent_id(submits[child.id]) == submits[parent.id].context.span_id


def test_the_sweep_makes_a_span_in_the_job_trace(
    telemetry: Telemetry, memory_ergate: ErgateCelery
) -> None:
    workflow = Workflow(unique_name="swept")

    @workflow.step
    def only(x: int) -> int:
        return x

    memory_ergate.register_workflow(workflow)
    with telemetry.tracer_provider.get_tracer("web").start_as_current_span("POST /swept"):
        job = memory_ergate.submit_job("swept", initial_input_value=1)
    # No worker takes the message: past `ergate_stuck_after`, the sweep requeues the job.
    later = datetime.now(UTC) + timedelta(seconds=memory_ergate.settings.stuck_after + 60)
    assert recover_stuck_jobs(memory_ergate, now=later) == 1
    (swept,) = telemetry.named("ergate sweep")
    (submitted,) = telemetry.named("ergate submit")
    assert swept.name == "ergate sweep swept"
    assert swept.context.trace_id == submitted.context.trace_id
    assert _parent_id(swept) == submitted.context.span_id
    assert swept.attributes["ergate.job.id"] == job.id
    assert swept.attributes["ergate.job.status"] == "QUEUED"


def test_a_fan_outs_children_are_in_the_parents_trace(telemetry: Telemetry) -> None:
    parent = Workflow(unique_name="split_order")
    child = Workflow(unique_name="pack_line")

    @child.step
    def pack(line: int) -> int:
        return line * 2

    @parent.step(paths=[FanOutPath("collect")])
    def split(lines: list[int]) -> None:
        raise FanOut("pack_line", inputs=lines, then=collect)

    @parent.step
    def collect(results: list[ChildResult]) -> int:
        return sum(result.value for result in results)

    tester = WorkflowTester(parent, child, now=NOW)
    tracer = telemetry.tracer_provider.get_tracer("web")
    with tracer.start_as_current_span("POST /orders") as request:
        job = tester.submit("split_order", initial_input_value=[1, 2, 3])
    tester.run()

    assert tester.get_job(job.id).last_return_value == 12
    steps = telemetry.named("ergate step pack_line.pack")
    assert len(steps) == 3
    trace_ids = {span.context.trace_id for span in telemetry.finished()}
    assert trace_ids == {request.get_span_context().trace_id}
    children = {span.attributes["ergate.job.id"] for span in steps if span.attributes}
    assert children == {f"{job.id}.{n}" for n in range(3)}
