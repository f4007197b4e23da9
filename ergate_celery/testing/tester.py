"""`WorkflowTester`: run workflows in a test, without a broker, a backend or a worker, on a
virtual clock.

It runs the code a worker runs, not a copy: the step tasks of a private Celery app (their
options, `max_retries` and `autoretry_for` included) run the real step body with a `Runtime`
on the memory store, so every change goes through the same transitions, JSON rules and
injection; each message is serialized as Celery serializes a task's arguments; due scheduled
and waiting jobs are released by beat's own release code. What differs is only what carries
the messages and what time it is: messages wait in the tester's own queue, a Celery `retry()`
is caught (the step runs with an eager request) and its message waits for its countdown on the
virtual clock, and the clock moves only when the test calls `advance`. No socket, thread or
sleep is involved; a tester is used from one thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from celery.exceptions import Retry

from ergate_celery import signals
from ergate_celery.exceptions import JobNotFoundError, UnknownWorkflowError
from ergate_celery.model.job import Job
from ergate_celery.model.workflow import Workflow
from ergate_celery.operations.cancelling import cancel_job
from ergate_celery.operations.children import jobs_page
from ergate_celery.operations.listing import StatusFilter
from ergate_celery.operations.reading import check_id
from ergate_celery.operations.signalling import signal_job
from ergate_celery.operations.submission import new_job, submit
from ergate_celery.registry import WorkflowRegistry
from ergate_celery.scheduling.release import release_due_jobs
from ergate_celery.settings import ErgateSettings
from ergate_celery.stores import SCHEDULED
from ergate_celery.stores.listing import JobPage, job_query
from ergate_celery.stores.memory import MemoryJobStore
from ergate_celery.testing.app import tester_app
from ergate_celery.testing.clock import VirtualClock, duration, moment
from ergate_celery.testing.messages import Message, MessageQueue
from ergate_celery.worker.announcer import Announcer, signals_for
from ergate_celery.worker.runtime import Runtime
from ergate_celery.worker.step_message import step_message
from ergate_celery.worker.step_results import step_task_id
from ergate_celery.worker.step_task import install_step

logger = logging.getLogger(__name__)

#: `run()` stops with an error after delivering this many messages: a step that retries
#: forever without a countdown would otherwise never let the test end.
MAX_MESSAGES_PER_RUN = 100_000
#: Index entries read ahead for the next moment something falls due.
_LOOKAHEAD = 1000


class _RecordingAnnouncer(Announcer):
    """Announces as a worker does, and records each step run that starts."""

    def __init__(self, app: Celery, steps_run: list[tuple[str, str, int]]) -> None:
        super().__init__(app, events_enabled=False)
        self.steps_run = steps_run

    def __call__(self, before: Job | None, after: Job, sender: str, task: Any = None) -> None:
        if signals.step_started in signals_for(before, after):
            self.steps_run.append((str(after.id), after.current_step_name or "", after.attempt))
        super().__call__(before, after, sender, task)


class WorkflowTester:
    """Runs workflows as workers and beat would, in this thread, on a virtual clock.

    `WorkflowTester(*workflows, now=datetime(...))`; `submit()` jobs, `run()` what is due,
    `advance()` the clock, `signal()` jobs, and read them with `get_job()` / `list_jobs()`.
    `settings` are `ergate_*` settings, as your app's (e.g. `ergate_max_payload_bytes`).
    """

    def __init__(
        self,
        *workflows: Workflow,
        now: datetime | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.clock = VirtualClock(now)
        #: The private Celery app whose step tasks run (never started, never connected).
        self.app = tester_app(settings)
        self.settings = ErgateSettings.from_conf(self.app.conf)
        #: Each step run that started, in order: (job id, step name, attempt from 1).
        self.steps_run: list[tuple[str, str, int]] = []
        self.messages = MessageQueue(self.app.conf.task_serializer)
        store = MemoryJobStore(
            self.app.backend,
            self.settings.max_payload_bytes,
            self.settings.expires_by_status,
            self.settings.index_name_of(self.app.main),
        )
        store.clock = self.clock.now
        #: What the step tasks, the release and the operations work with, as on a worker.
        self.runtime = Runtime(
            store,
            self.settings,
            _RecordingAnnouncer(self.app, self.steps_run),
            self._publish,
            clock=self.clock.now,
            workflow_of=self._workflow,
        )
        self._registry = WorkflowRegistry(self.app, lambda step: install_step(self, step))
        for workflow in workflows:
            self.register(workflow)

    @property
    def now(self) -> datetime:
        """The virtual time."""
        return self.clock.now()

    def register(self, workflow: Workflow) -> None:
        """Add `workflow`, as `ErgateCelery.register_workflow` does (the same checks)."""
        if not isinstance(workflow, Workflow):
            raise TypeError(
                f"WorkflowTester takes Workflow objects, got {type(workflow).__name__}; "
                "pass the Workflow your steps are declared on"
            )
        self._registry.register(workflow)

    def submit(
        self,
        workflow_name: str,
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
        """Submit a job as `submit_job` does, with its checks, at the virtual time; returns
        the job as stored. Its first step runs at the next `run()` (or when it is due)."""
        job = new_job(
            self._workflow(workflow_name),
            initial_input_value=initial_input_value,
            user_context=user_context,
            requested_start_time=requested_start_time,
            job_id=id,
            priority=priority,
            deadline=deadline,
            now=self.now,
            tags=tags,
        )
        # Published at once, also inside a Django transaction (a test's, say), as `signal`.
        return submit(self.runtime, job, publish_on_commit=False, if_exists=if_exists)

    def run(self) -> int:
        """Run every step due now, and the steps they lead to, until each job is final or
        waits (for a time, a signal, a retry's countdown); returns how many step messages
        ran. Due scheduled jobs are released first, as beat would."""
        delivered = 0
        while True:
            release_due_jobs(self.runtime, self.now)
            message = self.messages.pop_due(self.now)
            if message is None:
                return delivered
            self._deliver(message)
            delivered += 1
            if delivered >= MAX_MESSAGES_PER_RUN:
                raise RuntimeError(
                    f"run() delivered {delivered} step messages and more are due: does a step "
                    "retry forever without a countdown, or a workflow loop through waits of 0 s?"
                )

    def advance(
        self,
        delta: timedelta | float | None = None,
        *,
        seconds: float = 0,
        minutes: float = 0,
        hours: float = 0,
        days: float = 0,
    ) -> int:
        """Move the virtual clock forward (`advance(seconds=90)`, `advance(timedelta(...))`),
        stopping at each moment something falls due on the way — a sleep's end, a signal's
        timeout, a scheduled start, a retry's countdown — to run what is due then; returns
        how many step messages ran."""
        step = duration(delta, seconds=seconds, minutes=minutes, hours=hours, days=days)
        target = self.now + step
        delivered = self.run()
        while (stop := self._next_stop(target)) is not None:
            self.clock.move_to(stop)
            delivered += self.run()
        self.clock.move_to(target)
        return delivered + self.run()

    def signal(self, job_id: str, name: str, payload: Any = None) -> Job:
        """Send signal `name` with a JSON `payload` to a job, as `signal_job` does; a job
        waiting for it is queued, and runs at the next `run()`."""
        check_id(job_id)
        # Queued at once, also inside a Django transaction (a test's, say): the tester's jobs
        # are not in the database, and a test's transaction never commits.
        return signal_job(self.runtime, job_id, name, payload, publish_on_commit=False)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job, as `cancel_job` does; returns it as it is now."""
        check_id(job_id)
        return cancel_job(self.runtime, job_id, publish_on_commit=False)

    def get_job(self, job_id: str) -> Job:
        """The stored job, or `JobNotFoundError`."""
        check_id(job_id)
        job = self.runtime.store.get(job_id)
        if job is None:
            raise JobNotFoundError(f"No job with id {job_id!r} was submitted to this tester")
        return job

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
        """Jobs newest first, filtered as `ErgateCelery.list_jobs` filters them (`parent=`:
        that job's fan-out children, in input order)."""
        if workflow is not None:
            self._workflow(workflow)
        query = job_query(
            status=status,
            workflow=workflow,
            since=since,
            until=until,
            tags=tags,
            limit=limit,
            concurrency_key=concurrency_key,
        )
        return jobs_page(self.runtime, query, limit, cursor, parent)

    def _workflow(self, name: Any) -> Workflow:
        try:
            return self._registry.get(name)
        except UnknownWorkflowError:
            known = ", ".join(sorted(self._registry.all())) or "none"
            raise UnknownWorkflowError(
                f"No workflow named {name!r} is registered with this WorkflowTester "
                f"(registered: {known}); pass it to WorkflowTester(...) or call register()"
            ) from None

    def _publish(self, job: Job) -> None:
        """Send the message of the job's current step, found by its name (as a publish)."""
        step = self._workflow(job.workflow_name).current_step_of(job)
        body = step_message(job, self.settings.show_task_args)
        self.messages.put(step.task_name, step_task_id(job), body, self.now, 0)

    def _deliver(self, message: Message) -> None:
        """Run one step message as a worker does; a `retry()` waits for its countdown."""
        task = self.app.tasks[message.task_name]
        payload = message.payload()
        # An eager request: a retry() raises Retry, with its countdown, instead of publishing.
        task.push_request(
            id=message.task_id,
            args=[payload],
            kwargs={},
            retries=message.retries,
            is_eager=True,
            called_directly=False,
            delivery_info={"redelivered": False},
        )
        try:
            task.run(payload)
        except Retry as retry:
            when = retry.when
            due = (
                moment("a retry's eta", when)
                if isinstance(when, datetime)
                else self.now + timedelta(seconds=float(when or 0))
            )
            # The message Celery's retry() would send (its signature, untyped in the stubs):
            # the same argument, one retry more.
            sent: Any = vars(retry)["sig"]
            retries = int(sent.options["retries"])
            self.messages.put(message.task_name, message.task_id, sent.args[0], due, retries)
        except Exception as exc:
            # The task failed, as on a worker; the job's record holds the step's error.
            logger.info("Step task %s (%s) raised %r", message.task_name, message.task_id, exc)
        finally:
            task.pop_request()

    def _next_stop(self, target: datetime) -> datetime | None:
        """The next moment after now, up to `target`, at which a message or a scheduled job
        falls due."""
        now = self.now
        stops = [due for due in [self.messages.next_due()] if due is not None and now < due]
        for entry in self.runtime.store.index_entries(SCHEDULED, target, _LOOKAHEAD):
            if entry.at > now:
                stops.append(entry.at)
                break
        earliest = min(stops, default=None)
        return earliest if earliest is not None and earliest <= target else None
