"""`ErgateCelery`: installs workflows into a Celery app and submits, reads and cancels jobs."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from weakref import WeakKeyDictionary

from billiard.exceptions import TimeLimitExceeded
from celery import Celery, Task
from celery.app import app_or_default
from celery.signals import import_modules, task_unknown, worker_init

from . import beat
from .announce import Announcer
from .exceptions import ErgateError, InvalidDefinitionError, JobNotFoundError, UnknownWorkflowError
from .job import Job, JobError
from .job_status import JobStatus
from .lifecycle import Cancel, HandOver, TimeLimit
from .runtime import Runtime
from .settings import ErgateSettings
from .step_task import execute_step, reject_message
from .stores import JobStore, store_for_backend
from .stores.base import job_document
from .submission import new_job
from .transactions import in_django_transaction, on_commit
from .workflow import RETRY_OPTIONS, STEP_TASK_OPTIONS, Workflow
from .workflow_step import WorkflowStep

logger = logging.getLogger("ergate_celery")

#: The `sender` of the announcements of changes made outside a step (signals.py).
SUBMIT_SENDER = "ergate.submit_job"
CANCEL_SENDER = "ergate.cancel_job"

_bindings: WeakKeyDictionary[Celery, ErgateCelery] = WeakKeyDictionary()

# Retries are decided in the step body (a retry must stay the same step), so these step
# options are not handed to Celery's own autoretry wrapper.
_CELERY_OPTIONS = STEP_TASK_OPTIONS - RETRY_OPTIONS
#: One discovery receiver per app and signal, however often autodiscover_workflows is called.
_DISCOVER_UID = "ergate_celery.autodiscover_workflows"


class StepTask(Task):  # type: ignore[type-arg]
    """The Celery task class of every step; its one argument is the job as JSON."""

    ergate: ErgateCelery
    ergate_step: WorkflowStep[Any, Any]

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Celery calls this in the worker's main process when it kills a step at its hard
        `time_limit`: the job ends FAILED at once instead of waiting for the sweep."""
        if not isinstance(exc, TimeLimitExceeded):
            return
        payload = args[0] if args else None
        try:
            job = Job.model_validate(payload)
        except Exception:
            logger.warning("A step of %s hit its time limit with an unreadable job", self.name)
            return
        step = self.ergate_step
        seconds = float(exc.args[0]) if exc.args else float(self.time_limit or 0)
        event = TimeLimit(step.name, job.steps_completed, seconds)
        try:
            self.ergate.runtime.apply(str(job.id), event, sender=self.name)
        except Exception:
            logger.exception("Could not fail job %s after its step's time limit", job.id)


class ErgateCelery:
    """The Ergate layer of one Celery app: `ErgateCelery(app)`, then register workflows."""

    def __init__(self, app: Celery) -> None:
        if not isinstance(app, Celery):
            raise TypeError(f"ErgateCelery(app) takes a Celery app, got {type(app).__name__}")
        if app in _bindings:
            raise ErgateError(f"Celery app {app.main!r} already has an ErgateCelery")
        self.app = app
        self._workflows: dict[str, Workflow] = {}
        self._store: JobStore | None = None
        self._settings: ErgateSettings | None = None
        self._runtime: Runtime | None = None
        self._pending_discovery: list[Callable[[], None]] = []
        self._lock = threading.RLock()
        _bindings[app] = self
        beat.install(self)
        task_unknown.connect(self._on_unknown_task, weak=False)
        worker_init.connect(self._on_worker_init, weak=False)
        self.announcer = Announcer(app, bool(app.conf.get("worker_send_task_events")))
        _discover_django_workflows(self)

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
        """What the step tasks, release and sweep work with."""
        if self._runtime is None:
            self._runtime = Runtime(self.store, self.settings, self.announcer, self.publish)
        return self._runtime

    @property
    def store(self) -> JobStore:
        """Where jobs live: the store for the app's result backend."""
        if self._store is None:
            self._store = store_for_backend(self.app.backend, self.settings.max_payload_bytes)
        return self._store

    # Workflows ---------------------------------------------------------------------------

    def register_workflow(self, workflow: Workflow) -> None:
        """Check `workflow` and install one Celery task per step."""
        if not isinstance(workflow, Workflow):
            raise TypeError(
                f"register_workflow takes a Workflow, got {type(workflow).__name__}; "
                "create one with Workflow(unique_name=...)"
            )
        with self._lock:
            existing = self._workflows.get(workflow.unique_name)
            if existing is workflow:
                return
            if existing is not None:
                raise InvalidDefinitionError(
                    f"Another workflow named {workflow.unique_name!r} is already registered"
                )
            workflow.validate()
            for step in workflow:
                self._install_step(step)
            self._workflows[workflow.unique_name] = workflow

    def _install_step(self, step: WorkflowStep[Any, Any]) -> None:
        settings = self.settings
        options: dict[str, Any] = {
            "acks_late": settings.acks_late,
            "reject_on_worker_lost": settings.reject_on_worker_lost,
            # The step body stores its summary itself, with the job's outcome in one write
            # where the backend allows; Celery still stores a step's failure.
            "ignore_result": True,
            "store_errors_even_if_ignored": True,
        }
        options.update({k: v for k, v in step.task_options.items() if k in _CELERY_OPTIONS})
        self.app.task(  # type: ignore[no-untyped-call]
            name=step.task_name,
            base=StepTask,
            bind=True,
            shared=False,
            lazy=False,
            ergate=self,
            ergate_step=step,
            **options,
        )(_step_body)

    def autodiscover_workflows(
        self,
        packages: Iterable[str] | Callable[[], Iterable[str]],
        related_name: str = "workflows",
        force: bool = False,
    ) -> None:
        """Register the workflows of `<package>.workflows` modules, as Celery finds tasks.

        Unless `force`, modules are imported when a worker or beat starts (an import error
        stops it there, as with Celery's `autodiscover_tasks`), when the app is finalized, or
        when a workflow is first looked up. The current folder is on `sys.path` meanwhile,
        as for Celery's `include`, so `celery -A proj worker` finds them from the project
        folder. A package without a `workflows` module is skipped.
        """

        def discover() -> None:
            names = packages() if callable(packages) else packages
            for package in names:
                self._register_module(f"{package}.{related_name}")

        # Called while Celery imports the worker's modules (Django's ready() is), or later:
        # the moment to import has come, so import now and let an error stop the start.
        started = getattr(self.app.loader, "worker_initialized", False)
        if force or started or getattr(self.app, "finalized", False):
            discover()
            return
        with self._lock:
            self._pending_discovery.append(discover)
        # Celery's loader raises what an `import_modules` receiver raised, so a worker or beat
        # stops at start; the finalize signal only logs, and a failed discovery stays pending.
        import_modules.connect(
            self._discover_on_signal, sender=self.app, weak=False, dispatch_uid=_DISCOVER_UID
        )
        self.app.on_after_finalize.connect(
            self._discover_on_signal, weak=False, dispatch_uid=_DISCOVER_UID
        )

    def _discover_on_signal(self, **kwargs: Any) -> None:
        self._discover_pending()

    def _discover_pending(self) -> None:
        with self._lock:
            pending, self._pending_discovery = self._pending_discovery, []
            for done, discover in enumerate(pending):
                try:
                    discover()
                except BaseException:
                    # Keep it (and the rest) pending: the next lookup raises the error again
                    # instead of reporting that no workflow is registered.
                    self._pending_discovery[:0] = pending[done:]
                    raise

    def _register_module(self, module_name: str) -> None:
        try:
            module = self.app.loader.import_from_cwd(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return  # the package has no workflows module, as Celery skips a missing tasks.py
            raise
        for value in vars(module).values():
            if isinstance(value, Workflow):
                self.register_workflow(value)

    def workflow(self, name: Any) -> Workflow:
        """The registered workflow called `name`, or `UnknownWorkflowError`."""
        if self._pending_discovery:
            self._discover_pending()
        if not isinstance(name, str):
            raise TypeError(f"A workflow name is a string, got {type(name).__name__}")
        try:
            return self._workflows[name]
        except KeyError:
            known = ", ".join(sorted(self._workflows)) or "none"
            raise UnknownWorkflowError(
                f"No workflow named {name!r} is registered (registered: {known}); register it "
                f"with ErgateCelery.register_workflow() or autodiscover_workflows(){_django_hint()}"
            ) from None

    @property
    def workflows(self) -> dict[str, Workflow]:
        """The registered workflows by unique name."""
        if self._pending_discovery:
            self._discover_pending()
        return dict(self._workflows)

    def _on_worker_init(self, sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "app", None) is self.app:
            self.announcer.events_enabled = bool(
                getattr(sender, "task_events", self.events_enabled)
            )

    def _on_unknown_task(
        self, sender: Any = None, name: str = "", message: Any = None, **kwargs: Any
    ) -> None:
        # A step task this worker does not know (a deploy removed or renamed it): Celery
        # drops the message, so the job would wait forever; fail it with the reason instead.
        if not name.startswith("ergate.") or message is None:
            return
        if getattr(sender, "app", self.app) is not self.app:
            return
        try:
            body = message.decode()
            payload = body[0][0] if isinstance(body, list | tuple) else body["args"][0]
        except Exception:
            logger.error("Dropped an unreadable message for unknown task %s", name)
            return
        known = ", ".join(sorted(self.workflows)) or "none"
        hop = payload.get("steps_completed") if isinstance(payload, dict) else None
        reject_message(
            self.runtime,
            payload,
            JobError(
                type="UnknownStep",
                message=f"This worker has no task {name} (workflows it knows: {known}); "
                "was the workflow or step removed or renamed by a deploy?",
            ),
            name,
            hop if isinstance(hop, int) else None,
        )

    # Jobs --------------------------------------------------------------------------------

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
    ) -> Job:
        """Store a new job and publish its first step; returns the job as stored.

        Pass a workflow name with keywords, or a `Job`. A future `requested_start_time`
        stores the job SCHEDULED for beat to release. `priority` applies to every step
        message; a job not started by `deadline` ends FAILED. Nothing is stored or
        published when the workflow is unknown or the input is invalid.
        """
        if isinstance(workflow_name, Job):
            given = workflow_name
            workflow_name = given.workflow_name
            initial_input_value, user_context = given.initial_input_value, given.user_context
            requested_start_time, id = given.requested_start_time, given.id
            priority, deadline = given.priority, given.deadline
        workflow = self.workflow(workflow_name)
        job = new_job(
            workflow,
            initial_input_value=initial_input_value,
            user_context=user_context,
            requested_start_time=requested_start_time,
            job_id=id,
            priority=priority,
            deadline=deadline,
            now=datetime.now(UTC),
        )
        if in_django_transaction():
            # Stored PENDING until the transaction commits; a rollback publishes nothing.
            pending = job.model_copy(update={"status": JobStatus.PENDING})
            self.store.create(pending)
            on_commit(lambda: self._hand_over(pending, job.status))
            return pending
        self.store.create(job)
        if job.status is JobStatus.QUEUED:
            try:
                self.publish(job)
            except Exception:
                self.store.delete(str(job.id))
                raise
        return job

    def _hand_over(self, pending: Job, status: JobStatus) -> None:
        job = self.runtime.apply(str(pending.id), HandOver(status), sender=SUBMIT_SENDER).after
        if job is not None and job.status is JobStatus.QUEUED:
            self.runtime.hand_on(job, SUBMIT_SENDER)

    def publish(self, job: Job) -> None:
        """Send the message of the job's current step, found by its name."""
        workflow = self.workflow(job.workflow_name)
        name = job.current_step_name
        step = workflow.step_named(name) if name is not None else workflow[job.current_step]
        task = self.app.tasks[step.task_name]
        options = self._display_options(job, step)
        if job.priority is not None:
            options["priority"] = job.priority
        task.apply_async(
            args=(job_document(job),), task_id=f"{job.id}:{job.steps_completed}", **options
        )

    def _display_options(self, job: Job, step: WorkflowStep[Any, Any]) -> dict[str, Any]:
        if self.settings.show_task_args:
            return {}
        return {
            "argsrepr": f"job={job.id} workflow={job.workflow_name} step={step.name}"
            f"#{step.index} [input and context redacted]",
            "kwargsrepr": "{}",
        }

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
        new_job(
            self.workflow(workflow_name),
            initial_input_value=initial_input_value,
            user_context=user_context,
            requested_start_time=None,
            job_id=None,
            now=datetime.now(UTC),
        )
        entry = beat.periodic_entry(
            workflow_name,
            schedule,
            initial_input_value=initial_input_value,
            user_context=user_context,
        )
        key = name or f"ergate: {workflow_name} every {schedule}"

        def add(**kwargs: Any) -> None:
            self.app.conf.beat_schedule[key] = entry

        if getattr(self.app, "configured", False):
            add()
        else:
            self.app.on_after_configure.connect(add, weak=False)
        return key

    def get_job(self, job_id: str) -> Job:
        """The stored job, or `JobNotFoundError`."""
        _check_id(job_id)
        job = self.store.get(job_id)
        if job is None:
            raise _not_found(job_id)
        return job

    def cancel_job(self, job_id: str) -> Job:
        """Cancel a job; returns it as it is now (a finished job is left as it was).

        SCHEDULED or QUEUED become CANCELLED and run no step; RUNNING becomes CANCELLING and
        CANCELLED at the end of the running step.
        """
        current = self.get_job(job_id)
        changed = self.runtime.apply(job_id, Cancel(), sender=CANCEL_SENDER).after
        return changed if changed is not None else self.get_job(current.id)

    def wait_for_job(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job is final and return it; `TimeoutError` after `timeout` s."""
        _check_id(job_id)
        job = self.store.wait_final(job_id, timeout, self.settings.wait_poll_interval)
        if job is None:
            raise _not_found(job_id)
        if not job.is_final:
            raise TimeoutError(f"Job {job_id!r} is still {job.status.name} after {timeout} s")
        return job


def _check_id(job_id: Any) -> None:
    if not isinstance(job_id, str):
        raise TypeError(f"A job id is a string, got {type(job_id).__name__}")


def _not_found(job_id: str) -> JobNotFoundError:
    return JobNotFoundError(f"No job with id {job_id!r} is stored (or it has expired)")


def _step_body(self: StepTask, payload: Any) -> dict[str, Any]:
    return execute_step(self.ergate.runtime, self.ergate_step, self, payload)


def all_bindings() -> list[ErgateCelery]:
    """Every ErgateCelery of this process."""
    return list(_bindings.values())


def _django_hint() -> str:
    """Why the workflows.py of Django apps were not found: the Django app is not installed."""
    if "django.conf" not in sys.modules:
        return ""
    from django.conf import settings

    try:
        if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
            return ""
        installed = list(settings.INSTALLED_APPS)
    except Exception:  # settings that cannot be read are Django's error to report, not ours
        return ""
    app = "ergate_celery.contrib.django"
    if any(entry == app or entry.startswith(f"{app}.") for entry in installed):
        return ""
    return (
        f"; Django is configured but {app!r} is not in INSTALLED_APPS, so the workflows.py "
        "modules of installed apps are not registered: add it to INSTALLED_APPS"
    )


def _discover_django_workflows(binding: ErgateCelery) -> None:
    # When the Celery app is created after Django's apps are ready, the Django app's
    # ready() has already run: register its autodiscovery here instead.
    if "django.apps" not in sys.modules:
        return
    from django.apps import apps

    if apps.ready and apps.is_installed("ergate_celery.contrib.django"):
        from .contrib.django.apps import discover_installed_workflows

        discover_installed_workflows(binding)
