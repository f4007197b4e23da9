"""One trace per job across processes: the test (the web process) submits inside a request
span, a `celery worker` and `celery beat` subprocess run and release the job, each exporting
its spans and metrics to files (`tests/telemetry.py`); every span lands in the request's trace.
The pure parts (attributes, operations, fan-out children, the waiting gauge) are in
`tests/unit/test_opentelemetry.py`."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Span

from ergate_celery import JobStatus
from ergate_celery.contrib.opentelemetry import ErgateInstrumentor

from .apps import otel_app
from .support import Setup, wait_until
from .telemetry import JsonLinesSpanExporter, read_lines

WAIT = 90
APP = "tests.apps.otel_app"


@contextmanager
def _traced_here(folder: Path, celery: bool = False) -> Iterator[TracerProvider]:
    """This process instrumented as a web app would be, its spans written into `folder`."""
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(JsonLinesSpanExporter(folder / "spans-web.jsonl"))
    )
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    ErgateInstrumentor().instrument(tracer_provider=provider, meter_provider=meter_provider)
    instrumentors: list[Any] = [ErgateInstrumentor()]
    if celery:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument(tracer_provider=provider)
        instrumentors.append(CeleryInstrumentor())
    try:
        yield provider
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()


@contextmanager
def _worker(setup: Setup, env: dict[str, str]) -> Iterator[Popen[bytes]]:
    args = ["worker", "-P", "threads", "-c", "2", "--without-gossip", "--without-mingle"]
    args += ["--without-heartbeat", "-Q", setup.conf["task_default_queue"], "-l", "INFO"]
    args += ["-n", f"otel-{uuid.uuid4().hex[:6]}@%h"]
    with setup.celery(*args, env=env, module=APP) as process:
        yield process


def _setup(make_setup: Callable[..., Setup]) -> tuple[Setup, Path]:
    setup = make_setup("redis", ergate_schedule_interval=0.3)
    for workflow in otel_app.WORKFLOWS:
        setup.ergate.register_workflow(workflow)
    folder = setup.tmp_path / "telemetry"
    folder.mkdir()
    return setup, folder


def _beat_started(setup: Setup) -> bool:
    logs = setup.tmp_path.glob("celery-beat-*.log")
    return any("beat: Starting" in log.read_text(errors="replace") for log in logs)


def _trace_id(span: Span) -> str:
    return f"{span.get_span_context().trace_id:032x}"


@pytest.mark.setup("redis")
def test_a_job_with_a_retry_a_sleep_a_failure_and_retry_job_is_one_trace(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup, folder = _setup(make_setup)
    ship_ok = setup.tmp_path / "ship-ok"
    env = {"ERGATE_OTEL_OUT": str(folder), "ERGATE_OTEL_SHIP_OK": str(ship_ok)}
    beat = ("beat", "-l", "INFO", "-s", str(setup.tmp_path / "beat-schedule"))
    with (
        _traced_here(folder) as provider,
        _worker(setup, env),
        setup.celery(*beat, env=env, module=APP),
    ):
        # Beat counts the waiting jobs from its start: up before the job sleeps.
        wait_until(lambda: _beat_started(setup), WAIT, what="beat started")
        with provider.get_tracer("web").start_as_current_span("POST /orders") as request:
            job = setup.ergate.submit_job("traced_order", initial_input_value=10)
        failed = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
        assert failed.status is JobStatus.FAILED, failed.error
        ship_ok.touch()
        setup.ergate.retry_job(str(job.id))
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
        assert done.status is JobStatus.COMPLETED, done.error

        def beat_counted_the_sleep() -> bool:
            return any(
                point["name"] == "ergate.jobs.waiting"
                and point["attributes"]
                == {"ergate.workflow": "traced_order", "ergate.wait.reason": "sleep"}
                and point["value"] == 1
                for point in read_lines(folder, "metrics")
            )

        wait_until(beat_counted_the_sleep, WAIT, what="beat's count of the sleeping job")
        # The worker exports its metrics every 0.2 s: wait for the last step's.
        wait_until(
            lambda: any(
                p["name"] == "ergate.jobs.finished"
                and p["attributes"].get("ergate.job.status") == "COMPLETED"
                for p in read_lines(folder, "metrics")
            ),
            WAIT,
            what="the worker's metrics",
        )

    spans = read_lines(folder, "spans")
    trace_id = _trace_id(request)
    assert {span["trace_id"] for span in spans} == {trace_id}, spans
    by_name = [span["name"] for span in spans]
    assert by_name.count("ergate submit traced_order") == 1
    assert by_name.count("ergate release traced_order") == 1
    assert by_name.count("ergate retry traced_order") == 1
    steps = sorted(
        (
            span["start"],
            span["attributes"]["ergate.step"],
            span["attributes"]["ergate.attempt"],
            span["attributes"]["ergate.job.status"],
            span["status"],
            span["exceptions"],
        )
        for span in spans
        if span["name"].startswith("ergate step traced_order.")
    )
    assert [step[1:] for step in steps] == [
        ("charge", 1, "RUNNING", "ERROR", ["ConnectionError"]),
        ("charge", 2, "QUEUED", "UNSET", []),
        ("nap", 1, "SCHEDULED", "UNSET", []),
        ("ship", 1, "FAILED", "ERROR", ["RuntimeError"]),
        ("ship", 2, "COMPLETED", "UNSET", []),
    ]
    for span in spans:
        if span["name"].startswith("ergate step"):
            assert span["attributes"]["ergate.job.id"] == str(job.id)
            assert span["attributes"]["ergate.workflow"] == "traced_order"

    points = read_lines(folder, "metrics")
    names = {point["name"] for point in points}
    assert {"ergate.step.duration", "ergate.step.wait", "ergate.jobs.finished"} <= names
    finished = {
        point["attributes"]["ergate.job.status"]: point["value"]
        for point in points
        if point["name"] == "ergate.jobs.finished"
    }
    assert finished == {"FAILED": 1, "COMPLETED": 1}
    durations = {
        point["attributes"]["ergate.step"]
        for point in points
        if point["name"] == "ergate.step.duration"
    }
    assert durations == {"charge", "nap", "ship"}


@pytest.mark.setup("redis")
def test_beside_celerys_instrumentation_each_step_span_is_a_child_of_its_task_span(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup, folder = _setup(make_setup)
    env = {"ERGATE_OTEL_OUT": str(folder), "ERGATE_OTEL_CELERY": "1"}
    with _traced_here(folder, celery=True) as provider, _worker(setup, env):
        with provider.get_tracer("web").start_as_current_span("POST /pay") as request:
            job = setup.ergate.submit_job("traced_pair", initial_input_value=5)
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
        assert done.status is JobStatus.COMPLETED, done.error

    spans = read_lines(folder, "spans")
    assert {span["trace_id"] for span in spans} == {_trace_id(request)}, spans
    by_id = {span["span_id"]: span for span in spans}
    steps = [span for span in spans if span["name"].startswith("ergate step")]
    runs = [span for span in spans if span["name"].startswith("run/ergate.traced_pair.")]
    assert sorted(
        (s["attributes"]["ergate.step"], s["attributes"]["ergate.attempt"]) for s in steps
    ) == [
        ("confirm", 1),
        ("pay", 1),
        ("pay", 2),
    ]
    # One step span per Celery task run, each the child of its run.
    assert len(runs) == len(steps)
    parents = [by_id[step["parent_id"]] for step in steps]
    assert sorted(parent["span_id"] for parent in parents) == sorted(run["span_id"] for run in runs)
    for step, parent in zip(steps, parents, strict=True):
        assert parent["name"] == f"run/ergate.traced_pair.{step['attributes']['ergate.step']}"
        assert parent["kind"] == "CONSUMER"
    # Each run's message was published inside a span of the job: the submit, or a step.
    assert [span["name"] for span in spans].count("ergate submit traced_pair") == 1
    publishers = {by_id[by_id[run["parent_id"]]["parent_id"]]["name"] for run in runs}
    assert publishers == {"ergate submit traced_pair", "ergate step traced_pair.pay"}


@pytest.mark.setup("redis")
def test_a_fan_outs_children_are_in_their_parents_trace(
    setup_name: str, make_setup: Callable[..., Setup]
) -> None:
    setup, folder = _setup(make_setup)
    with _traced_here(folder) as provider, _worker(setup, {"ERGATE_OTEL_OUT": str(folder)}):
        with provider.get_tracer("web").start_as_current_span("POST /uploads") as request:
            job = setup.ergate.submit_job("traced_split", initial_input_value=[1, 2, 3])
        done = setup.ergate.wait_for_job(str(job.id), timeout=WAIT)
        assert done.status is JobStatus.COMPLETED, done.error
        assert done.last_return_value == 12

    spans = read_lines(folder, "spans")
    assert {span["trace_id"] for span in spans} == {_trace_id(request)}, spans
    children = sorted(
        span["attributes"]["ergate.job.id"]
        for span in spans
        if span["name"] == "ergate step traced_piece.cut"
    )
    assert children == [f"{job.id}.{n}" for n in range(3)]
    steps = [span["name"] for span in spans if span["name"].startswith("ergate step traced_split")]
    assert sorted(steps) == ["ergate step traced_split.gather", "ergate step traced_split.spread"]
