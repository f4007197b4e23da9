"""`AsyncResult(job.id)` for a job: `.ready()`, `.get()`, `.successful()`, `.failed()`.

A job's record is a task result whose state is the job's status name (`"RUNNING"`,
`"COMPLETED"`...), which Celery's own ready states do not include: a plain `AsyncResult`
would call a finished job not ready and wait for it forever. Two things make it right:

- `JobResult`, an `AsyncResult` subclass, is the app's `app.AsyncResult` (what tasks, the
  `celery result` command and `task.AsyncResult` create): for a job it is ready once the job
  is final, `successful()` when COMPLETED, `failed()` when FAILED, and `get()` waits for the
  job's end and returns the job as JSON (raising `JobFailedError` for a FAILED job). For any
  other task it is Celery's `AsyncResult` unchanged.
- Every result backend instance the app makes (Celery makes one per thread) knows the final
  statuses as ready states and waits for a job by its record: `ErgateCelery(app)` gives the
  app a backend factory (Celery's `backend_cls`) that makes the backend its configuration
  names and adapts it; the app becomes Celery's default app for every thread unless there is
  one. So a plain `celery.result.AsyncResult(job.id)`, in any process and thread that
  imported the app (a script, `manage.py shell`, a web worker's thread), is ready once the job
  is final and its `get()` returns. (`successful()` and `failed()` of the plain class compare
  with Celery's own SUCCESS and FAILURE: use `app.AsyncResult` for those.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery, _state, states
from celery.app.backends import by_url
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult, assert_will_not_block  # type: ignore[attr-defined]

from ergate_celery.exceptions import ErgateError, JobFailedError, JobTimeoutError
from ergate_celery.model.job_status import FINAL_STATUSES, JobStatus
from ergate_celery.worker.runtime import Runtime

#: The statuses a job record can show that Celery has no state of that name for.
JOB_STATES = frozenset(s.name for s in JobStatus) - {"PENDING"}
FINAL_STATES = frozenset(status.name for status in FINAL_STATUSES)


class JobResult(AsyncResult):  # type: ignore[type-arg]
    """An `AsyncResult` that understands job records (and any task's result as Celery does)."""

    #: The runtime of the app whose `app.AsyncResult` this is (given by `install`).
    ergate_runtime: Callable[[], Runtime] | None = None

    def ready(self) -> bool:
        """Whether the job is final (COMPLETED, FAILED, ABORTED, CANCELLED)."""
        state = self.state
        if state in JOB_STATES:
            return state in FINAL_STATES
        return bool(super().ready())

    def successful(self) -> bool:
        """Whether the job COMPLETED."""
        state: str = self.state
        return state == "COMPLETED" if state in JOB_STATES else bool(super().successful())

    def failed(self) -> bool:
        """Whether the job ended FAILED (ABORTED and CANCELLED are not failures)."""
        state: str = self.state
        return state == "FAILED" if state in JOB_STATES else bool(super().failed())

    def get(  # type: ignore[override]
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
        **options: Any,
    ) -> Any:
        """The job as JSON once it is final, waiting at most `timeout` s; for a FAILED job
        `JobFailedError` unless `propagate=False`. Other tasks: Celery's `get()`."""
        if self.state not in JOB_STATES:
            return super().get(
                timeout=timeout,
                propagate=propagate,
                interval=interval,
                disable_sync_subtasks=disable_sync_subtasks,
                **options,
            )
        if disable_sync_subtasks:
            assert_will_not_block()
        # A JobResult made directly (not as app.AsyncResult) reads through the app's one.
        runtime = self.ergate_runtime or getattr(self.app.AsyncResult, "ergate_runtime", None)
        if runtime is None:
            raise ErgateError(
                f"{self.id!r} is a job, and Celery app {self.app.main!r} has no ErgateCelery "
                "to read it: create ErgateCelery(app) in the module that creates the app"
            )
        return wait_for_record(runtime(), self.id, timeout, propagate)


def wait_for_record(rt: Runtime, job_id: str, timeout: float | None, propagate: bool) -> Any:
    """What `get()` returns for a job: its JSON once final; `JobTimeoutError` (Celery's
    TimeoutError, and Python's) after `timeout` seconds."""
    job = rt.store.wait_final(job_id, timeout, rt.settings.wait_poll_interval)
    if job is None:
        raise CeleryTimeoutError(f"Job {job_id!r} is gone (deleted, or expired)")
    if not job.is_final:
        raise JobTimeoutError(
            f"Job {job_id!r} is still {job.status.name} after {timeout} s "
            "(AsyncResult.get() of a job waits as ergate_celery's wait_for_job does)"
        )
    if propagate and job.status is JobStatus.FAILED:
        error = job.error.message if job.error is not None else "no error recorded"
        raise JobFailedError(f"Job {job_id!r} FAILED: {error}", job)
    return job.model_dump(mode="json")


def adapt_backend(backend: Any, runtime: Callable[[], Runtime]) -> None:
    """Make `backend` (an instance) treat final job statuses as ready, and wait for a job by
    its record (read through `runtime()`), so that a plain `AsyncResult` using it never
    waits forever for a job."""
    if getattr(backend, "_ergate_adapted", False):
        return
    celery_wait = backend.wait_for_pending

    def wait_for_pending(result: Any, timeout: float | None = None, **options: Any) -> Any:
        if result.state not in JOB_STATES:
            return celery_wait(result, timeout=timeout, **options)
        remove = getattr(backend, "remove_pending_result", None)
        if remove is not None:
            remove(result)  # get() subscribed to the key; the record is read instead
        return wait_for_record(runtime(), result.id, timeout, options.get("propagate", True))

    backend.READY_STATES = states.READY_STATES | FINAL_STATES
    backend.wait_for_pending = wait_for_pending
    backend._ergate_adapted = True


class JobBackendFactory:
    """What `ErgateCelery(app)` sets as the app's `backend_cls`: Celery calls it for each
    backend instance it makes (one per thread); it makes the backend the app's configuration
    names (or the `backend_cls` the app had) and adapts it to job records, read through the
    runtime of the app's `JobResult`. It holds no more than that `backend_cls`, so an app
    pickles as before."""

    def __init__(self, given: Any = None) -> None:
        #: The app's own `backend_cls`, if it had one (a class or its dotted name).
        self.given = given

    def __call__(self, app: Celery, url: str | None = None, **options: Any) -> Any:
        found: Any = by_url(self.given or app.conf.result_backend, app.loader)
        backend_class, configured_url = found
        backend = backend_class(app=app, url=url or configured_url, **options)
        runtime = getattr(app.AsyncResult, "ergate_runtime", None)
        if runtime is not None:  # an app unpickled elsewhere has no ErgateCelery
            adapt_backend(backend, runtime)
        return backend


def install(app: Celery, runtime: Callable[[], Runtime]) -> None:
    """Make `JobResult`, reading jobs through `runtime()`, the app's `app.AsyncResult`, and
    every backend instance the app makes know job records."""
    app.AsyncResult = app.subclass_with_self(  # type: ignore[misc]
        JobResult, reverse="AsyncResult", ergate_runtime=staticmethod(runtime)
    )
    configurable: Any = app  # the stubs know `backend_cls` as a name only
    configurable.backend_cls = JobBackendFactory(configurable.backend_cls)
    # Another thread's current app is Celery's default app: as Celery's Django fixup does,
    # the first current app becomes the default, so `AsyncResult(job_id)` (and the module-
    # level functions) find it in every thread.
    if configurable.set_as_current and getattr(_state, "default_app", None) is None:
        app.set_default()
