"""Fan-out on a worker: making a step's children, counting their ends on the parent, holding
children back for `max_in_flight`, cancelling them, and reading their results for the join.

The rules are pure (`lifecycle/fan_out.py`); this module does what they need done around
them, through the `Runtime` it is handed:

- The children are made while the step still holds its claim, in batches, each with an id
  of its position (`<parent id>.<n>`): a step run again after its worker was lost, or the
  sweep's requeue, finds the children made before and makes only the rest. Their end is
  counted on the parent from the start (`FanOutStarted` is written first).
- Every write that makes a child final (whoever makes it) is followed by `ChildEnded` on
  its parent, from `Runtime.apply`; the write that counts the last child releases the
  parent, once. A redelivered message of a child that has ended counts it again (no
  change when it was counted), and beat's release counts a waiting parent's children every
  `check_every` seconds, so a notice lost with its worker delays the join, never loses it.
- With `max_in_flight = M`, children from position M on are made SCHEDULED (held, no
  message); the write that counts the d-th end starts child M + d - 1, so each held child
  is started by exactly one end. A batch just made is checked against the ends counted
  meanwhile, so a child made after the end that was its turn still starts.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from ergate_celery.exceptions import (
    InvalidInputError,
    ReverseGoToError,
    UnknownStepError,
    UnknownWorkflowError,
)
from ergate_celery.lifecycle import fan_out as rules
from ergate_celery.lifecycle.advance import FannedOut, Raised, StepOutcome
from ergate_celery.lifecycle.events import Cancel, ChildEnded, FanOutStarted, TurnCame
from ergate_celery.model.children import ChildResult
from ergate_celery.model.job import FanOutState, Job
from ergate_celery.model.job_status import JobStatus
from ergate_celery.model.workflow_step import WorkflowStep

if TYPE_CHECKING:
    from ergate_celery.worker.runtime import Runtime

logger = logging.getLogger(__name__)

#: Children made between two looks at the ends counted on the parent.
BATCH = 500
#: The `sender` of what the fan-out changes on the parent and the children.
FAN_OUT_SENDER = "ergate.fan_out"


def start(
    rt: Runtime, job: Job, step: WorkflowStep[Any, Any], outcome: FannedOut
) -> tuple[Job, StepOutcome]:
    """Make the children the step asked for; the parent as stored then, and the step's
    outcome: the fan-out with its state, or the reason no child could be made."""
    request = outcome.request
    token = job.claim
    assert token is not None
    try:
        then = rules.then_step(step.workflow, step.index, request.then)
        if rt.workflow_of is None:
            raise UnknownWorkflowError("This runtime runs no fan-out (it knows no workflows)")
        workflow = rt.workflow_of(request.workflow)
        context = job.user_context if request.user_context is ... else request.user_context
        inputs = rules.child_inputs(workflow, request.inputs, context)
    except (InvalidInputError, UnknownWorkflowError, UnknownStepError, ReverseGoToError) as exc:
        return job, Raised(exc)
    state = rules.plan(job, step.name, request, then.name, rt.settings.stuck_after)
    before, after = rt.retrying(
        f"starting the fan-out of {step} for job {job.id}",
        lambda: rt.apply(str(job.id), FanOutStarted(token, state), sender=step.task_name),
    )
    parent = after or before
    if parent is None or parent.claim != token or parent.fan_out is None:
        # Another run took the job over: it makes the children; this outcome is dropped.
        return job, Raised(RuntimeError(f"Job {job.id} was taken over while fanning out"))
    state = parent.fan_out
    now = rt.clock()
    for first in range(0, state.count, BATCH):
        batch = range(first, min(first + BATCH, state.count))
        children = [
            rules.child_job(parent, state, n, inputs[n], context, workflow, now) for n in batch
        ]
        # In one round trip where the store can (Redis, PostgreSQL).
        made = rt.retrying(
            f"making children of job {job.id}", partial(rt.store.create_many, children)
        )
        for child, new in zip(children, made, strict=True):
            _send(rt, child, new)
        if state.max_in_flight is not None:
            _start_turns_due(rt, str(job.id), batch)
    return parent, dataclasses.replace(outcome, state=state)


def _send(rt: Runtime, child: Job, new: bool) -> None:
    if not new:
        # Made by an earlier run of the step, whose worker may have died before sending
        # its first message: a duplicate message is dropped at its claim, a missing one is not.
        stored = rt.store.get(str(child.id))
        if stored is None or stored.status is not JobStatus.QUEUED or stored.parked:
            return
        if stored.steps_completed > 0 or stored.attempt > 0:
            return
        child = stored
    if child.status is JobStatus.QUEUED:
        rt.publish_current_step(child, FAN_OUT_SENDER)


def _start_turns_due(rt: Runtime, parent_id: str, positions: range) -> None:
    parent = rt.store.get(parent_id)
    state = None if parent is None else parent.fan_out
    if parent is None or state is None or state.max_in_flight is None:
        return
    if parent.status not in (JobStatus.RUNNING, JobStatus.SCHEDULED):
        return  # cancelled: held children are cancelled, not started
    due = state.max_in_flight + state.ended_count
    for n in positions:
        if state.max_in_flight <= n < due and not state.has_ended(n):
            _start_turn(rt, state.child_id(parent_id, n))


def _start_turn(rt: Runtime, child_id: str) -> None:
    child = rt.apply(child_id, TurnCame(), sender=FAN_OUT_SENDER).after
    if child is not None and child.status is JobStatus.QUEUED:
        rt.publish_current_step(child, FAN_OUT_SENDER)


def child_ended(rt: Runtime, child: Job, sender: str) -> None:
    """Count the end of `child` (just written final) on its parent; release the parent if it
    was the last, or start the next held child."""
    found = rules.parent_position(child)
    if found is not None:
        _count(rt, *found, sender)


def _count(rt: Runtime, parent_id: str, position: int, sender: str) -> None:
    parent = rt.apply(parent_id, ChildEnded(position), sender=sender).after
    if parent is None:
        return
    if parent.status is JobStatus.QUEUED:
        rt.publish_current_step(parent, sender)
        return
    state = parent.fan_out
    if state is None or state.max_in_flight is None:
        return
    if parent.status in (JobStatus.SCHEDULED, JobStatus.RUNNING):
        n = state.max_in_flight + state.ended_count - 1
        if n < state.count:
            _start_turn(rt, state.child_id(parent_id, n))


def recount(rt: Runtime, parent: Job) -> None:
    """Count again the children of a waiting parent (beat reaches it every `check_every`
    seconds): any end whose notice was lost is counted, and held children due start."""
    state = parent.fan_out
    if state is None or not rules.waits_for_children(parent):
        return
    parent_id = str(parent.id)
    unended = [n for n in range(state.count) if not state.has_ended(n)]
    for first in range(0, len(unended), BATCH):
        batch = unended[first : first + BATCH]
        children = read_many(rt, [state.child_id(parent_id, n) for n in batch])
        for n, child in zip(batch, children, strict=True):
            if child is None or child.is_final:
                logger.warning("Counting the end of child %s of job %s late", n, parent_id)
                _count(rt, parent_id, state.first + n, FAN_OUT_SENDER)
    if state.max_in_flight is not None:
        _start_turns_due(rt, parent_id, range(state.count))


def cancel_children(rt: Runtime, parent: Job, sender: str) -> None:
    """Cancel every unfinished child of a parent being cancelled; it ends CANCELLED when the
    last has ended (held and queued ones at once, running ones at their step's end)."""
    state = parent.fan_out
    if state is None or parent.status is not JobStatus.CANCELLING:
        return
    parent_id = str(parent.id)
    for n in range(state.count):
        if not state.has_ended(n):
            rt.apply(state.child_id(parent_id, n), Cancel(), sender=sender)


def after_step(rt: Runtime, finished: Job, sender: str) -> None:
    """What follows the stored outcome of a step that fanned out while being cancelled."""
    if finished.status is JobStatus.CANCELLING and rules.waits_for_children(finished):
        cancel_children(rt, finished, sender)


def step_input(rt: Runtime, job: Job, step_name: str) -> Any:
    """The input of the job's current step: the children's results, in input order, for the
    join of a fan-out; otherwise the job's own (a deep copy)."""
    state = job.fan_out
    if state is None or not rules.is_join(job, step_name):
        return job.get_input_value()
    return children_results(rt, str(job.id), state)


def children_results(rt: Runtime, parent_id: str, state: FanOutState) -> list[ChildResult]:
    """One `ChildResult` per child of the fan-out `state`, in input order."""
    ids = [state.child_id(parent_id, n) for n in range(state.count)]
    results = []
    for first in range(0, len(ids), BATCH):
        batch = ids[first : first + BATCH]
        for child_id, child in zip(batch, read_many(rt, batch), strict=True):
            results.append(ChildResult.of(child_id, child))
    return results


def read_many(rt: Runtime, job_ids: list[str]) -> list[Job | None]:
    """The stored jobs of `job_ids`, in order: in one round trip where the store can read
    many records at once (Redis, SQL, django-db), else one by one."""
    return rt.store.get_many(job_ids)
