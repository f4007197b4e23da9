"""`ErgateCelery`: installs workflows into a Celery app and submits, reads and cancels jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from weakref import WeakKeyDictionary

from celery import Celery
from celery.app import app_or_default
from celery.signals import worker_init

from ergate_celery import job_result
from ergate_celery.exceptions import ErgateError
from ergate_celery.model.job import Job
from ergate_celery.model.workflow import Workflow
from ergate_celery.model.workflow_step import WorkflowStep
from ergate_celery.operations import (
    cancelling,
    children,
    pausing,
    reading,
    retrying,
    signalling,
)
from ergate_celery.operations.listing import StatusFilter
from ergate_celery.operations.submission import new_job, submit
from ergate_celery.registry import Packages, WorkflowRegistry
from ergate_celery.scheduling import beat, overdue
from ergate_celery.settings import ErgateSettings
from ergate_celery.stores import JobStore, store_for_backend
from ergate_celery.stores.listing import JobPage, job_query
from ergate_celery.worker import unknown_steps
from ergate_celery.worker.announcer import Announcer
from ergate_celery.worker.one_trip import collector, step_options
from ergate_celery.worker.pausing import PausedWorkflows
from ergate_celery.worker.runtime import Runtime
from ergate_celery.worker.step_message import step_message
from ergate_celery.worker.step_results import step_task_id
from ergate_celery.worker.step_task import install_step

_bindings: WeakKeyDictionary[Celery, ErgateCelery] = WeakKeyDictionary()


class ErgateCelery:
    """The Ergate layer of one Celery app: `ErgateCelery(app)`, then register workflows."""

    def __init__(self, app: Celery) -> None:
        if not isinstance(app, Celery):
            raise TypeError(f"ErgateCelery(app) takes a Celery app, got {type(app).__name__}")
        if app in _bindings:
            raise ErgateError(f"Celery app {app.main!r} already has an ErgateCelery")
        self.app = app
        self._settings: ErgateSettings | None = None
        self._runtime: Runtime | None = None
        self.registry = WorkflowRegistry(app, lambda step: install_step(self, step))
        _bindings[app] = self
        self.announcer = Announcer(app, bool(app.conf.get("worker_send_task_events")))
        # The runtime and the settings are made at first use, after the app is configured:
        # what is installed now is handed functions that give them.
        beat.install(app, lambda: self.runtime, lambda: self.settings, self.submit_job)
        job_result.install(app, lambda: self.runtime)
        overdue.install(app, lambda: self.runtime)
        unknown_steps.install(self)
        worker_init.connect(self._on_worker_init, weak=False)
        self.registry.autodiscover_django(if_ready=True)

    @classmethod
    def of(cls, app: Celery | None = None) -> ErgateCelery:
        """The binding of `app` (default: Celery's current app)."""
        given = app
        app = app_or_default(app)
        try:
            return _bindings[app]
        except KeyError:
            pass
        if given is not None:
            raise ErgateError(
                f"Celery app {app.main!r} has no ErgateCelery; create ErgateCelery(app) in the "
                "module that creates your Celery app"
            )
        bound = ", ".join(repr(other.main) for other in _bindings) or "none"
        raise ErgateError(
            f"Celery's current app {app.main!r} has no ErgateCelery (apps with one: {bound}). "
            "Import the module that creates your Celery app and its ErgateCelery before this "
            "call (e.g. `import proj.celery`; a Django project does it in proj/__init__.py), or "
            "make that app current with app.set_current(); if there is none yet, create "
            "ErgateCelery(app) in the module that creates your Celery app"
        )

    @property
    def settings(self) -> ErgateSettings:
        """The `ergate_*` settings of the app, read once."""
        if self._settings is None:
            self._settings = ErgateSettings.from_conf(self.app.conf)
        return self._settings

    @property
    def events_enabled(self) -> bool:
        """Send job lifecycle events too; follows the worker's -E / worker_send_task_events."""
        return self.announcer.events_enabled

    @property
    def runtime(self) -> Runtime:
        """What the step tasks, release, sweep and operations work with."""
        if self._runtime is None:
            settings = self.settings
            store = store_for_backend(
                self.app.backend,
                settings.max_payload_bytes,
                settings.expires_by_status,
                settings.index_name_of(self.app.main),
            )

            def publish(job: Job) -> None:
                # Looked up at each call: a subclass's or a patched publish() is honoured.
                self.publish(job)

            paused = PausedWorkflows(store, settings.pause_refresh)
            collect = collector(self.app, store, settings, self._current_step)
            self._runtime = Runtime(
                store,
                settings,
                self.announcer,
                publish,
                paused,
                workflow_of=self.workflow,
                collect=collect,
            )
        return self._runtime

    def _here(self) -> Runtime:
        """The runtime, for an operation in this thread."""
        rt = self.runtime
        # A backend made before ErgateCelery(app) gave the app its backend factory (which
        # adapts every later one) learns job statuses here (once per backend).
        job_result.adapt_backend(self.app.backend, lambda: rt)
        return rt

    @property
    def store(self) -> JobStore:
        """Where jobs live: the store for the app's result backend."""
        return self._here().store

    def register_workflow(self, workflow: Workflow) -> None:
        """Check `workflow` and install one Celery task per step."""
        self.registry.register(workflow)

    def autodiscover_workflows(
        self, packages: Packages, related_name: str = "workflows", force: bool = False
    ) -> None:
        """Register the workflows of `<package>.workflows` modules, as Celery finds tasks.

        Unless `force`, modules are imported when a worker or beat starts (an import error
        stops it there, as with Celery's `autodiscover_tasks`), when the app is finalized, or
        when a workflow is first looked up. The current folder is on `sys.path` meanwhile,
        as for Celery's `include`, so `celery -A proj worker` finds them from the project
        folder. A package without a `workflows` module is skipped.
        """
        self.registry.autodiscover(packages, related_name, force)

    def workflow(self, name: Any) -> Workflow:
        """The registered workflow called `name`, or `UnknownWorkflowError`."""
        return self.registry.get(name)

    @property
    def workflows(self) -> dict[str, Workflow]:
        """The registered workflows by unique name."""
        return self.registry.all()

    def _on_worker_init(self, sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "app", None) is self.app:
            self.announcer.events_enabled = bool(
                getattr(sender, "task_events", self.events_enabled)
            )

    def submit_job(
        self,
        workflow_name: str | Job,
        *,
        initial_input_value: Any = None,
        user_context: Any = None,
        requested_start_time: datetime | None = None,
        id: str | None = None,
        priority: int | None = None,
        deadline: datetime | None = None,
        tags: dict[str, str] | None = None,
        if_exists: str = "raise",
    ) -> Job:
        """Store a new job and publish its first step; returns the job as stored.

        Pass a workflow name with keywords, or a `Job`. A future `requested_start_time`
        stores the job SCHEDULED for beat to release. `priority` applies to every step
        message; a job not started by `deadline` ends FAILED; `tags` (str to str) are stored
        on the job for `list_jobs`. Nothing is stored or published when the workflow is
        unknown or the input is invalid. When `id` is taken, `if_exists="return"` returns
        the stored job (however many callers race, one job is stored and started) and
        `"raise"` raises `DuplicateJobError`. A job of a paused workflow is stored parked.
        """
        if isinstance(workflow_name, Job):
            given = workflow_name
            workflow_name = given.workflow_name
            initial_input_value, user_context = given.initial_input_value, given.user_context
            requested_start_time, id = given.requested_start_time, given.id
            priority, deadline = given.priority, given.deadline
            tags = given.tags or tags
        rt = self._here()
        job = new_job(
            self.workflow(workflow_name),
            initial_input_value=initial_input_value,
            user_context=user_context,
            requested_start_time=requested_start_time,
            job_id=id,
            priority=priority,
            deadline=deadline,
            # The store's clock: a job due soon is not run early by a web host running ahead.
            now=rt.clock(),
            tags=tags,
        )
        return submit(rt, job, if_exists=if_exists)

    def _current_step(self, job: Job) -> WorkflowStep[Any, Any]:
        return self.workflow(job.workflow_name).current_step_of(job)

    def publish(self, job: Job) -> None:
        """Send the message of the job's current step, found by its name."""
        step = self._current_step(job)
        task = self.app.tasks[step.task_name]
        options = step_options(job, step, self.settings.show_task_args)
        body = step_message(job, self.settings.show_task_args)
        task.apply_async(args=(body,), task_id=step_task_id(job), **options)

    def add_periodic_job(
        self,
        workflow_name: str,
        schedule: Any,
        *,
        name: str | None = None,
        initial_input_value: Any = None,
        user_context: Any = None,
    ) -> str:
        """Have beat submit a new job of `workflow_name` on `schedule` (seconds, timedelta,
        crontab or solar); returns the `beat_schedule` key. The input is checked now, as
        `submit_job` would check it, so a bad entry fails here and not at every firing."""
        return beat.add_periodic_job(
            self.app,
            self.workflow(workflow_name),
            schedule,
            name=name,
            initial_input_value=initial_input_value,
            user_context=user_context,
        )

    def close(self) -> None:
        """Release the connections of the job store (call it before `app.close()`)."""
        if self._runtime is not None:
            self._runtime.store.close()

    def get_job(self, job_id: str) -> Job:
        """The stored job, or `JobNotFoundError`."""
        return reading.get_job(self._here(), job_id)

    def cancel_job(self, job_id: str) -> Job:
        """Cancel a job; returns it as it is now (a finished job is left as it was).

        SCHEDULED or QUEUED become CANCELLED and run no step; RUNNING becomes CANCELLING and
        CANCELLED at the end of the running step. Inside a Django transaction, the job that
        takes the concurrency slot it frees is published when it commits (on a backend other
        than django-db, the cancel is written then too, and the job returned as it will be).
        """
        return cancelling.cancel_job(self._here(), job_id)

    def signal_job(self, job_id: str, name: str, payload: Any = None) -> Job:
        """Send signal `name` with a JSON `payload` to a job; returns it as stored.

        A job waiting for `name` (a step raised `WaitForSignal(name)`) is released at once;
        otherwise the signal is kept on the job for a later wait. Its first payload wins.
        `JobNotFoundError` for an unknown job, `JobStateError` for a finished one. Inside a
        Django transaction the signal is written, and the job released, when it commits.
        """
        return signalling.signal_job(self._here(), job_id, name, payload)

    def wait_for_job(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job is final and return it; `JobTimeoutError` (both Python's and
        Celery's `TimeoutError`) after `timeout` s."""
        return reading.wait_for_job(self._here(), job_id, timeout)

    # Operations ---------------------------------------------------------------------------

    def list_jobs(
        self,
        *,
        status: StatusFilter = None,
        workflow: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        tags: dict[str, str] | None = None,
        limit: int = 100,
        cursor: str | None = None,
        parent: str | None = None,
        concurrency_key: str | None = None,
    ) -> JobPage:
        """Stored jobs, newest first (by `submitted_at`), finished ones until they expire.

        Filters: `status` (one or several), `workflow`, submitted `since`/`until`, `tags`
        (all must match), `concurrency_key` (jobs of that key of their workflow's
        `Concurrency`). Pass the page's `next_cursor` as `cursor` for the next page.
        `parent=job_id` lists that job's fan-out children instead, in input order.
        `InvalidInputError` for a bad filter or cursor, `UnknownWorkflowError` for a
        workflow this app does not have.
        """
        if workflow is not None:
            self.workflow(workflow)
        query = job_query(
            status=status,
            workflow=workflow,
            since=since,
            until=until,
            tags=tags,
            limit=limit,
            concurrency_key=concurrency_key,
        )
        return children.jobs_page(self._here(), query, limit, cursor, parent)

    def retry_job(self, job_id: str) -> Job:
        """Send a FAILED, ABORTED or CANCELLED job back to the step it stopped at, with the
        input that step had; steps before it do not run again. `JobStateError` for a job in
        another status, `JobNotFoundError` for an unknown id, `UnknownStepError` when this
        app no longer has that step (the job is FAILED again). Inside a Django transaction the
        retry is written and published when it commits; asked again after a caller killed
        between its write and its publish, it publishes what that caller left."""
        return retrying.retry_job(self._here(), job_id)

    def retry_jobs(
        self,
        *,
        status: StatusFilter = None,
        workflow: str | None = None,
        since: datetime | None = None,
    ) -> int:
        """Retry every job of `status` (default: FAILED, ABORTED and CANCELLED) matching the
        filters; returns how many were retried."""
        if workflow is not None:
            self.workflow(workflow)
        query = retrying.retry_query(status, workflow, since)
        return retrying.retry_jobs(self._here(), query)

    def pause_workflow(self, workflow_name: str) -> bool:
        """Start no step of `workflow_name` until it is resumed (every worker, across
        restarts); submissions are still accepted. Whether it was running before."""
        self.workflow(workflow_name)
        return pausing.pause_workflow(self._here(), workflow_name)

    def resume_workflow(self, workflow_name: str) -> int:
        """Resume `workflow_name`: publish the jobs parked while it was paused; how many."""
        self.workflow(workflow_name)
        return pausing.resume_workflow(self._here(), workflow_name)

    def paused_workflows(self) -> set[str]:
        """The names of the paused workflows, as stored now."""
        return self.store.paused_workflows()


def all_bindings() -> list[ErgateCelery]:
    """Every ErgateCelery of this process."""
    return list(_bindings.values())
