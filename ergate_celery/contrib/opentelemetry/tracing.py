"""One trace per job: the observer the instrumentor installs (`worker/observing.py`).

`submit_job` makes span `ergate submit <workflow>`, a child of the caller's current span, and
stores its W3C context on the job (`job.trace_context`). Every later span of the job is made
in that trace: a step attempt (`ergate step <workflow>.<step>`, from its claim to the end of
its run) and each operation that changes the job (`ergate release|sweep|cancel|signal|retry|
resume <workflow>`). A span starts only once its change is written, with the time its scope
began: a duplicate message that claims nothing, or a cancel of a finished job, makes none.

The parent of such a span is the current span when it is already in the job's trace (the
`run` span of opentelemetry-instrumentation-celery, whose message was published inside one of
this job's spans), else the job's stored context, with a link to the current span if there is
one (a task of beat's, say). While a span is open it is the current span, so the step's own
spans and the publish of the next step's message nest under it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import Retry
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ergate_celery.contrib.opentelemetry.metrics import JobMetrics
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.operations.cancelling import CANCEL_SENDER
from ergate_celery.operations.pausing import RESUME_SENDER
from ergate_celery.operations.retrying import RETRY_SENDER
from ergate_celery.operations.signalling import SIGNAL_SENDER
from ergate_celery.operations.submission import SUBMIT_SENDER
from ergate_celery.scheduling.release import RELEASE_TASK
from ergate_celery.scheduling.sweep import RECOVER_TASK

#: The word of each operation's span name; another sender's is its name without `ergate.`.
OPERATIONS = {
    RELEASE_TASK: "release",
    RECOVER_TASK: "sweep",
    CANCEL_SENDER: "cancel",
    SIGNAL_SENDER: "signal",
    RETRY_SENDER: "retry",
    RESUME_SENDER: "resume",
    SUBMIT_SENDER: "hand over",
}
#: Only the W3C trace context is stored on a job: small, and readable by any OpenTelemetry SDK.
_W3C = TraceContextTextMapPropagator()


@dataclass
class _Scope:
    """A step run or an operation on one job, and its span once a change of it is written."""

    job_id: str
    sender: str
    step: bool
    started_ns: int = field(default_factory=time.time_ns)
    started: float = field(default_factory=time.monotonic)
    span: Span | None = None
    token: object = None
    workflow: str = ""
    step_name: str = ""


_scopes: ContextVar[tuple[_Scope, ...]] = ContextVar("ergate_otel_scopes", default=())


class TracingObserver:
    """Makes the spans of jobs and records their metrics."""

    def __init__(self, tracer: Tracer, metrics: JobMetrics) -> None:
        self.tracer = tracer
        self.metrics = metrics

    @contextmanager
    def submitting(self, job: Job) -> Iterator[Job]:
        """Span `ergate submit <workflow>`; the job to store carries its context."""
        parent = _W3C.extract(job.trace_context) if job.trace_context else None
        attributes = {"ergate.job.id": str(job.id), "ergate.workflow": job.workflow_name}
        name = f"ergate submit {job.workflow_name}"
        with self.tracer.start_as_current_span(name, context=parent, attributes=attributes) as span:
            carrier: dict[str, str] = {}
            _W3C.inject(carrier)
            yield job.model_copy(update={"trace_context": carrier or None})
            span.set_attribute("ergate.job.status", job.status.name)

    @contextmanager
    def running_step(self, job_id: str, step_task: str) -> Iterator[None]:
        """The scope of one step message: a span from its claim, if it claims."""
        with self._scope(_Scope(job_id, step_task, step=True)):
            yield

    @contextmanager
    def operating(self, sender: str, job_id: str) -> Iterator[None]:
        """The scope of an operation: a span if it changes the job."""
        with self._scope(_Scope(job_id, sender, step=False)):
            yield

    def changed(self, before: Job | None, after: Job, sender: str, task: Any) -> None:
        """Count finished jobs; open the span of the scope the change belongs to."""
        self.metrics.changed(before, after)
        scope = _innermost(str(after.id))
        if scope is None:
            return
        if scope.span is None:
            if scope.step and not _claimed(before, after):
                return  # parked, or not this run's: no attempt began
            self._open(scope, after)
            if scope.step and task is not None:
                self.metrics.claimed(after, task.request)
        assert scope.span is not None
        scope.span.set_attribute("ergate.job.status", after.status.name)

    @contextmanager
    def _scope(self, scope: _Scope) -> Iterator[None]:
        reset = _scopes.set((*_scopes.get(), scope))
        try:
            yield
        except BaseException as exc:
            self._close(scope, exc)
            raise
        else:
            self._close(scope, None)
        finally:
            _scopes.reset(reset)

    def _open(self, scope: _Scope, job: Job) -> None:
        parent, links = _parent(job.trace_context)
        attributes: dict[str, str | int] = {
            "ergate.job.id": str(job.id),
            "ergate.workflow": job.workflow_name,
        }
        if scope.step:
            scope.workflow, scope.step_name = job.workflow_name, job.current_step_name or ""
            name = f"ergate step {job.workflow_name}.{scope.step_name}"
            attributes.update({"ergate.step": scope.step_name, "ergate.attempt": job.attempt})
        else:
            word = OPERATIONS.get(scope.sender) or scope.sender.removeprefix("ergate.")
            name = f"ergate {word} {job.workflow_name}"
            if job.current_step_name:
                attributes["ergate.step"] = job.current_step_name
        scope.span = self.tracer.start_span(
            name, context=parent, links=links, attributes=attributes, start_time=scope.started_ns
        )
        scope.token = otel_context.attach(trace.set_span_in_context(scope.span))

    def _close(self, scope: _Scope, error: BaseException | None) -> None:
        span = scope.span
        if span is None:
            return
        if isinstance(error, Retry):
            # A Celery retry of the step: the step's own exception is what went wrong.
            span.add_event("celery retry", {"ergate.retry.when": str(error.when)})
            error = error.exc if isinstance(error.exc, BaseException) else error
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        otel_context.detach(scope.token)  # type: ignore[arg-type]
        span.end()
        if scope.step:
            self.metrics.ran(scope.workflow, scope.step_name, time.monotonic() - scope.started)


def _innermost(job_id: str) -> _Scope | None:
    for scope in reversed(_scopes.get()):
        if scope.job_id == job_id:
            return scope
    return None


def _claimed(before: Job | None, after: Job) -> bool:
    return (
        after.status is JobStatus.RUNNING
        and after.claim is not None
        and (before is None or before.claim != after.claim)
    )


def _parent(carrier: dict[str, str] | None) -> tuple[Context | None, list[Link]]:
    """The parent of a span of the job whose stored context is `carrier` (None: the current
    span), and the links of that span."""
    if not carrier:
        return None, []
    stored = _W3C.extract(carrier)
    job_trace = trace.get_current_span(stored).get_span_context()
    if not job_trace.is_valid:
        return None, []
    current = trace.get_current_span().get_span_context()
    if current.is_valid and current.trace_id == job_trace.trace_id:
        return None, []
    return stored, [Link(current)] if current.is_valid else []
