"""Fan-out and fan-in, as pure rules: a step raises `FanOut`, its job waits SCHEDULED for its
children, and continues at the join step once every child has ended.

The parent keeps its fan-out on the record (`job.fan_out`): which workflow, how many
children, the join step, and which children have ended, as ranges of positions. Every change
of it is a transition on the parent inside the store's compare-and-set, so the parent is
released exactly once, whichever child ends last and however many end at the same instant:
only the write that records the last child sees every child ended.

- `FanOutStarted` writes the state while the step still runs, before any child exists, so
  a child that ends while its siblings are being made is counted.
- `ChildEnded(position)` records one child's end (again for the same child: no change); the
  parent moves on when it was the last one.
- The step's outcome (`Finish`) keeps the children counted meanwhile, and releases the
  parent at once when they have all ended already.
- Beat's release reaches a waiting parent every `check_every` seconds (its wait's `until`):
  the worker then counts the children again, in case the notice of an end was lost with
  its worker (`worker/fan_out.py`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from ergate_celery.exceptions import FanOut, InvalidInputError, ReverseGoToError, UnknownStepError
from ergate_celery.model.job import FanOutState, Job, Wait
from ergate_celery.model.job_status import RUNNING_STATUSES, JobStatus
from ergate_celery.model.json_values import non_json, parses_back
from ergate_celery.model.workflow import Workflow
from ergate_celery.model.workflow_step import WorkflowStep

S = JobStatus


def then_step(workflow: Workflow, step_index: int, then: Any) -> WorkflowStep[Any, Any]:
    """The join step `then` names (a step or its name), which must come after the fan-out
    step in the same workflow; `UnknownStepError` or `ReverseGoToError` otherwise."""
    source = workflow[step_index]
    if isinstance(then, str):
        target = workflow.step_named(then)
    elif isinstance(then, WorkflowStep) and then.workflow is workflow:
        target = then
    else:
        raise UnknownStepError(
            f"Step {source.name!r} raised FanOut(then={then!r}), which is not a step of "
            f"workflow {workflow.unique_name!r}; pass one of its steps"
        )
    if target.index <= step_index:
        raise ReverseGoToError(
            f"Step {source.name!r} raised FanOut(then={target.name!r}), which is not after it; "
            "the join step must come later in the workflow"
        )
    return target


def child_inputs(workflow: Workflow, inputs: list[Any], context: Any) -> list[Any]:
    """The children's inputs as JSON, checked as `submit_job` checks an input (JSON, and the
    first step's annotated type); `InvalidInputError` naming the first refused position."""
    problem = non_json(context, "FanOut user_context")
    if problem is not None:
        raise InvalidInputError(f"{problem}; a user context travels as JSON")
    first = workflow[0]
    parse = first.plan.input_parser
    annotation = first.plan.input_annotation
    try:
        validate = None if annotation is Any else TypeAdapter(annotation).validate_python
    except Exception:
        validate = None  # an annotation pydantic cannot build a validator for is not checked
    checked = []
    for n, value in enumerate(inputs):
        name = f"FanOut input {n}"
        problem = non_json(value, name)
        if problem is not None:
            try:
                json_value = to_jsonable_python(value)
            except (ValueError, TypeError):
                json_value = None
            if not parses_back(parse, value, json_value):
                raise InvalidInputError(
                    f"Child {n} of the fan-out cannot be made: {problem}; inputs travel as "
                    "JSON (dicts with str keys, lists, strings, numbers, booleans, None)"
                )
            value = json_value
        if validate is not None:
            try:
                validate(value)
            except ValidationError as exc:
                errors = exc.errors(include_url=False, include_input=False)
                raise InvalidInputError(
                    f"Child {n} of the fan-out cannot be made: {name} does not fit the input "
                    f"type of {first} ({annotation!r}): {errors}"
                ) from None
        checked.append(value)
    return checked


def child_job(
    parent: Job, state: FanOutState, n: int, value: Any, context: Any, workflow: Workflow, now: Any
) -> Job:
    """Child `n` of the fan-out `state` of `parent`: QUEUED, or SCHEDULED until its turn when
    `max_in_flight` holds it back; the parent's tags and priority."""
    held = state.max_in_flight is not None and n >= state.max_in_flight
    parent_id = str(parent.id)
    wait = Wait(step=workflow[0].name, since=now, turn_of=parent_id) if held else None
    return Job(
        id=state.child_id(parent_id, n),
        workflow_name=workflow.unique_name,
        current_step_name=workflow[0].name,
        workflow_version=workflow.version,
        status=S.SCHEDULED if held else S.QUEUED,
        wait=wait,
        initial_input_value=value,
        user_context=context,
        priority=parent.priority,
        submitted_at=now,
        tags=parent.tags,
        parent_id=parent_id,
        trace_context=parent.trace_context,  # a fan-out is one trace, the parent's
    )


def plan(job: Job, step_name: str, request: FanOut, then: str, check_every: float) -> FanOutState:
    """The fan-out the running step of `job` asks for: a step run again (its worker was lost,
    or the job was retried) plans the same children as before; a later fan-out of the same
    job numbers its children after those of the one before."""
    hop = job.steps_completed
    earlier = job.fan_out
    first = 0
    if earlier is not None:
        first = earlier.first if earlier.hop == hop else earlier.first + earlier.count
    return FanOutState(
        step=step_name,
        hop=hop,
        workflow=request.workflow,
        first=first,
        count=len(request.inputs),
        then=then,
        max_in_flight=request.max_in_flight,
        percent_from=job.percent_completed,
        check_every=check_every,
    )


def started(stored: Job, token: str, state: FanOutState) -> Job | None:
    """`FanOutStarted`: the state on the job whose step run holds `token`. A re-run of the
    same fan-out keeps the children counted so far."""
    if stored.status not in RUNNING_STATUSES or stored.claim != token:
        return None
    earlier = stored.fan_out
    if earlier is not None and earlier.hop == state.hop and earlier.first == state.first:
        if earlier.count == state.count and earlier.max_in_flight == state.max_in_flight:
            return None
        state = state.model_copy(update={"ended": earlier.ended})
    return stored.model_copy(update={"fan_out": state})


def waiting_for_children(job: Job, after: Job, state: FanOutState, since: datetime) -> Job:
    """The job a step that fanned out leaves (`after` is the step completed towards the join):
    SCHEDULED, waiting for its children, progress at the step's start."""
    state = state.model_copy(
        update={"percent_from": job.percent_completed, "percent_to": after.percent_completed}
    )
    if after.status is not S.QUEUED:
        return after.model_copy(update={"fan_out": state})  # nothing follows the step
    wait = Wait(
        step=state.step,
        since=since,
        until=since + timedelta(seconds=state.check_every),
        children=state.count,
    )
    return after.model_copy(
        update={
            "status": S.SCHEDULED,
            "wait": wait,
            "fan_out": state,
            "last_return_value": None,
            "percent_completed": state.percent(),
        }
    )


def waits_for_children(job: Job) -> bool:
    """Whether the job waits for the children of a fan-out (SCHEDULED, or CANCELLING while
    its children are cancelled)."""
    return job.wait is not None and job.wait.children is not None and job.fan_out is not None


def kept_counts(stored: Job, after: Job) -> Job:
    """The outcome `after` of the step run that fanned out, with the children counted while
    it ran (on the stored record), settled: released when they have all ended."""
    state, counted = after.fan_out, stored.fan_out
    if state is None or counted is None or not waits_for_children(after):
        return after
    if (counted.hop, counted.first) == (state.hop, state.first):
        state = state.model_copy(update={"ended": counted.ended})
        after = after.model_copy(update={"fan_out": state, "percent_completed": state.percent()})
    return settle(after)


def child_ended(stored: Job, position: int) -> Job | None:
    """`ChildEnded`: child `position` counted on its parent; the parent released when it
    was the last. None when it was counted already, or is not a child of the last fan-out."""
    state = stored.fan_out
    if state is None or stored.is_final:
        return None
    n = position - state.first
    if not 0 <= n < state.count or state.has_ended(n):
        return None
    state = state.with_ended(n)
    changed = stored.model_copy(update={"fan_out": state})
    if waits_for_children(stored):
        changed = changed.model_copy(update={"percent_completed": state.percent()})
    return settle(changed)


def settle(job: Job) -> Job:
    """A job waiting for children that have all ended: QUEUED at the join step, or CANCELLED
    when it was being cancelled."""
    state = job.fan_out
    if not waits_for_children(job) or state is None or not state.all_ended:
        return job
    if job.status is S.CANCELLING:
        return job.model_copy(update={"status": S.CANCELLED})
    if job.status is not S.SCHEDULED:
        return job
    return job.model_copy(
        update={"status": S.QUEUED, "wait": None, "percent_completed": state.percent_to}
    )


def recheck(stored: Job, now: datetime) -> Job | None:
    """Beat's release of a job waiting for children: the next count is due `check_every`
    seconds from now (the worker counts the children after this write)."""
    wait, state = stored.wait, stored.fan_out
    if stored.status is not S.SCHEDULED or wait is None or state is None:
        return None
    if wait.until is not None and wait.until > now:
        return None
    until = now + timedelta(seconds=state.check_every)
    return stored.model_copy(update={"wait": wait.model_copy(update={"until": until})})


def cancelled(stored: Job) -> Job:
    """`Cancel` of a job waiting for children: CANCELLING until they have been cancelled."""
    return settle(stored.model_copy(update={"status": S.CANCELLING}))


def retried(stored: Job, wait: Wait, now: datetime) -> tuple[JobStatus, Wait | None]:
    """A retried job that stopped while waiting for children waits for them again (from
    now), or goes on to the join at once when they have all ended; a held child starts."""
    state = stored.fan_out
    if wait.turn_of is not None:
        return S.QUEUED, None
    if state is not None and state.all_ended:
        return S.QUEUED, None
    assert state is not None
    return S.SCHEDULED, wait.model_copy(
        update={"since": now, "until": now + timedelta(seconds=state.check_every)}
    )


def turn_came(stored: Job) -> Job | None:
    """`TurnCame`: a held child becomes QUEUED (its message is sent after this write)."""
    wait = stored.wait
    if stored.status is not S.SCHEDULED or wait is None or wait.turn_of is None:
        return None
    return stored.model_copy(update={"status": S.QUEUED, "wait": None})


def is_join(job: Job, step_name: str) -> bool:
    """Whether the step `step_name` of `job` is the join of its last fan-out (its input is the
    children's results, read from their records)."""
    state = job.fan_out
    return (
        state is not None
        and state.then == step_name
        and job.steps_completed == state.hop + 1
        and job.wait is None
    )


def parent_position(child: Job) -> tuple[str, int] | None:
    """The parent's id and the child's position, for a child job; None for any other."""
    if child.parent_id is None:
        return None
    prefix, _, number = str(child.id).rpartition(".")
    if prefix != child.parent_id or not number.isdigit():
        return None
    return child.parent_id, int(number)
