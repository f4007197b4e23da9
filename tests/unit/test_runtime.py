"""`Runtime` on the memory store, its broker and announcer recorded: `apply` stores one
transition and announces what it wrote, once; `retrying` outlasts a blip of the broker or the
backend, but not an error in the data."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ergate_celery import ErgateCelery, InvalidInputError, Job, JobStatus
from ergate_celery.lifecycle.events import Cancel
from ergate_celery.worker.runtime import Runtime

from ..support import Recorder
from ..workflows import echo_workflow


def _queued(ergate: ErgateCelery) -> Job:
    ergate.register_workflow(echo_workflow("solo"))
    return ergate.submit_job("solo", initial_input_value=1)


def test_apply_stores_the_transition_and_announces_what_it_wrote(
    runtime: Runtime, recorder: Recorder, memory_ergate: ErgateCelery
) -> None:
    job = _queued(memory_ergate)
    before, after = runtime.apply(str(job.id), Cancel(), sender="test")
    assert before is not None
    assert after is not None
    assert (before.status, after.status) == (JobStatus.QUEUED, JobStatus.CANCELLED)
    assert memory_ergate.get_job(str(job.id)) == after
    assert recorder.announced == [(before, after, "test")]


def test_an_event_that_does_not_apply_stores_and_announces_nothing(
    runtime: Runtime, recorder: Recorder, memory_ergate: ErgateCelery
) -> None:
    job = _queued(memory_ergate)
    cancelled = runtime.apply(str(job.id), Cancel(), sender="test").after
    # A final job is left as it is: the stored job comes back as `before`, nothing is written.
    assert tuple(runtime.apply(str(job.id), Cancel(), sender="again")) == (cancelled, None)
    assert memory_ergate.get_job(str(job.id)) == cancelled
    assert recorder.changes == [("QUEUED", "CANCELLED")]


def test_apply_to_a_job_that_is_not_stored_finds_nothing(
    runtime: Runtime, recorder: Recorder
) -> None:
    assert tuple(runtime.apply("no-such-job", Cancel(), sender="test")) == (None, None)
    assert recorder.announced == []


def _raising(errors: list[Exception]) -> Callable[[], str]:
    """An action that raises `errors` in turn (taking them off the list), then says "sent"."""

    def action() -> str:
        if errors:
            raise errors.pop(0)
        return "sent"

    return action


def test_retrying_outlasts_a_blip_with_growing_pauses(
    runtime: Runtime, backoffs: list[float]
) -> None:
    blip: list[Exception] = [ConnectionError("broker down"), ConnectionError("broker down")]
    assert runtime.retrying("publishing", _raising(blip)) == "sent"
    assert backoffs == [0.25, 0.5]


def test_retrying_gives_up_after_its_attempts_with_the_last_error(
    runtime: Runtime, backoffs: list[float]
) -> None:
    outage: list[Exception] = [ConnectionError(f"down {n}") for n in range(1, 6)]
    with pytest.raises(ConnectionError, match="down 3"):  # ergate_after_step_attempts=3
        runtime.retrying("publishing", _raising(outage))
    assert (len(backoffs), len(outage)) == (2, 2)


def test_retrying_does_not_retry_an_error_in_the_data(
    runtime: Runtime, backoffs: list[float]
) -> None:
    errors: list[Exception] = [InvalidInputError("larger than ergate_max_payload_bytes")]
    with pytest.raises(InvalidInputError):
        runtime.retrying("storing", _raising([*errors, ConnectionError("never reached")]))
    assert backoffs == []
