"""`submit_job`: validation at the edge (everything checked before anything is stored), then
storing the job and publishing its first step."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from weakref import WeakKeyDictionary

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_json, to_jsonable_python

from ergate_celery.exceptions import DuplicateJobError, InvalidInputError, RedactedValidationError
from ergate_celery.lifecycle.events import HandOver
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.model.json_values import non_json, parses_back
from ergate_celery.model.workflow import Workflow
from ergate_celery.model.workflow_step import WorkflowStep
from ergate_celery.stores.listing import check_tags, utc_moment
from ergate_celery.stores.redis_publish import sending
from ergate_celery.transactions import in_django_transaction, on_commit
from ergate_celery.worker import observing
from ergate_celery.worker.runtime import Runtime
from ergate_celery.worker.step_results import STEP_TASK_ID_PREFIX

MAX_JOB_ID_LENGTH = 100
#: What `submit_job(if_exists=...)` accepts.
IF_EXISTS = ("raise", "return")
#: The `sender` of the announcements of a submission handed over when its transaction commits.
SUBMIT_SENDER = "ergate.submit_job"


def new_job(
    workflow: Workflow,
    *,
    initial_input_value: Any,
    user_context: Any,
    requested_start_time: Any,
    job_id: Any,
    now: datetime,
    priority: Any = None,
    deadline: Any = None,
    tags: Any = None,
) -> Job:
    """The job to store for a submission, in its JSON form, or `InvalidInputError`."""
    start = utc_moment("requested_start_time", requested_start_time)
    end = utc_moment("deadline", deadline)
    if priority is not None and (
        not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 255
    ):
        raise InvalidInputError(
            f"priority must be a whole number from 0 to 255 (Celery's range), got {priority!r}"
        )
    checked_tags = check_tags(tags if tags is not None else {})
    first_parser = workflow[0].plan.input_parser
    input_json = _jsonable("initial_input_value", initial_input_value, first_parser)
    context_json = _jsonable("user_context", user_context, None)
    _check_input_type(workflow, input_json)
    job = Job(
        id=_job_id(job_id),
        workflow_name=workflow.unique_name,
        current_step_name=workflow[0].name,
        workflow_version=workflow.version,
        status=JobStatus.SCHEDULED if start is not None and start > now else JobStatus.QUEUED,
        initial_input_value=input_json,
        user_context=context_json,
        requested_start_time=start,
        priority=priority,
        deadline=end,
        submitted_at=now,
        tags=checked_tags,
    )
    if workflow.concurrency is None:
        return job
    return job.model_copy(update={"concurrency_key": workflow.concurrency.key_of(job)})


def _job_id(job_id: Any) -> str:
    if job_id is None:
        return str(uuid.uuid4())
    if not isinstance(job_id, str):
        raise InvalidInputError(
            f"Job id must be a string, got {type(job_id).__name__} {job_id!r}; "
            "pass id=str(...) or leave it out to get a UUID"
        )
    if not 0 < len(job_id) <= MAX_JOB_ID_LENGTH or not job_id.isprintable() or " " in job_id:
        raise InvalidInputError(
            f"Job id {job_id[:120]!r} must be 1 to {MAX_JOB_ID_LENGTH} printable characters "
            "without spaces"
        )
    if job_id.startswith(STEP_TASK_ID_PREFIX):
        raise InvalidInputError(
            f"Job id {job_id[:120]!r} starts with {STEP_TASK_ID_PREFIX!r}, which names the "
            "results of step tasks; choose another id"
        )
    return job_id


def _jsonable(name: str, value: Any, parse: Any) -> Any:
    """`value` as JSON, refused when the round trip would change it, unless `parse` (the
    receiving step's input type) gives it back."""
    problem = non_json(value, name)
    if problem is None:
        try:
            to_json(value)  # what only encoding finds: a lone surrogate in a string
        except PydanticSerializationError as exc:
            raise InvalidInputError(
                f"{name} is not JSON-serializable ({exc}); pass text as valid Unicode"
            ) from None
        return value
    try:
        json_value = to_jsonable_python(value)
    except (PydanticSerializationError, ValueError, TypeError, RecursionError):
        json_value = None
    else:
        if parses_back(parse, value, json_value):
            return json_value
    raise InvalidInputError(
        f"{problem}; jobs travel as JSON and it would not come back unchanged: pass dicts "
        "with str keys, lists, strings, numbers, booleans and None (a step whose input is "
        "annotated with a type that parses it back, such as datetime or a pydantic model, "
        "may receive such a value as its input)"
    )


def _check_input_type(workflow: Workflow, value: Any) -> None:
    step = workflow[0]
    annotation = step.plan.input_annotation
    if annotation is Any:
        return
    adapter = _adapter_of(step, annotation)
    if adapter is None:
        return
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        raise InvalidInputError(
            f"initial_input_value does not fit the input type of {step} ({annotation!r}): "
            f"{RedactedValidationError.of(exc)}"
        ) from None
    except Exception:
        # A validator that fails otherwise does not refuse the input.
        return


# Building a validator costs more than the rest of a submission's checks: once per step.
_adapters: WeakKeyDictionary[WorkflowStep[Any, Any], TypeAdapter[Any] | None] = WeakKeyDictionary()


def _adapter_of(step: WorkflowStep[Any, Any], annotation: Any) -> TypeAdapter[Any] | None:
    """The validator of the step's input type; None for one pydantic cannot build (then the
    input is not checked)."""
    try:
        return _adapters[step]
    except KeyError:
        pass
    try:
        adapter: TypeAdapter[Any] | None = TypeAdapter(annotation)
    except Exception:
        adapter = None
    _adapters[step] = adapter
    return adapter


def submit(
    rt: Runtime, job: Job, *, publish_on_commit: bool = True, if_exists: str = "raise"
) -> Job:
    """Store `job` (checked by `new_job`) and publish its first step; the job as stored.

    Inside a Django transaction the job is stored PENDING and handed over when the
    transaction commits, so a rollback publishes nothing, unless not `publish_on_commit` (a
    store outside the transaction, as a test's memory store). A publish that fails removes
    the job again. A job of a paused workflow is stored parked, in the same write, and
    published by `resume_workflow`. When the id is taken, `if_exists="return"` returns the
    stored job (nothing is stored or published), `"raise"` raises `DuplicateJobError`.
    """
    if if_exists not in IF_EXISTS:
        raise InvalidInputError(f'if_exists must be "raise" or "return", got {if_exists!r}')
    observer = observing.observer
    if observer is None:
        return _submit(rt, job, publish_on_commit, if_exists)
    with observer.submitting(job) as observed:
        return _submit(rt, observed, publish_on_commit, if_exists)


def _submit(rt: Runtime, job: Job, publish_on_commit: bool, if_exists: str) -> Job:
    try:
        return _store_and_publish(rt, job, publish_on_commit)
    except DuplicateJobError:
        existing = rt.store.get(str(job.id)) if if_exists == "return" else None
        if existing is None:
            raise
        if existing.workflow_name != job.workflow_name:
            raise DuplicateJobError(
                f"A job with id {job.id!r} already exists, of workflow "
                f"{existing.workflow_name!r}, not {job.workflow_name!r}; choose another id"
            ) from None
        return existing


def _store_and_publish(rt: Runtime, job: Job, publish_on_commit: bool) -> Job:
    if publish_on_commit and in_django_transaction():
        pending = job.model_copy(update={"status": JobStatus.PENDING})
        stored = rt.store.create(pending)
        on_commit(lambda: _hand_over(rt, job))
        return stored
    queued = job.status is JobStatus.QUEUED
    # The first message goes with the create, where it can (the script drops it when it
    # stores the job parked).
    send = rt.sending() if queued else None
    with sending(send):
        stored = rt.store.create(job, unless_paused=queued)
    if stored.parked:
        rt.announce(None, stored, SUBMIT_SENDER)  # job_parked: it waits for the resume
    elif stored.status is JobStatus.QUEUED and (send is None or not send.carried(stored)):
        try:
            rt.publish(stored)
        except Exception:
            rt.store.delete(str(job.id))
            raise
    return stored


def _hand_over(rt: Runtime, submitted: Job) -> None:
    # A pause that returned before the commit holds this job: it is handed over parked.
    job_id = str(submitted.id)
    status = submitted.status
    paused = status is JobStatus.QUEUED and submitted.workflow_name in rt.store.paused_workflows()
    with observing.operating(SUBMIT_SENDER, job_id):
        job = rt.apply(job_id, HandOver(status, parked=paused), sender=SUBMIT_SENDER).after
        if job is not None and job.status is JobStatus.QUEUED and not job.parked:
            rt.publish_current_step(job, SUBMIT_SENDER)
