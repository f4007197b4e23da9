"""The job model: a step message rebuilds exactly the job that was stored, and a status
prints as the README says.

Workers compare-and-set against the record they rebuild from the message, without reading it
first; that is only a saving if the rebuilt record is byte for byte the stored one.
"""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ergate_celery import Job, JobStatus
from ergate_celery.model.job import JobError, StepTiming
from ergate_celery.stores.base import job_document

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
_timings = st.builds(
    StepTiming,
    step=st.text(min_size=1, max_size=10),
    index=st.integers(0, 50),
    started_at=_times,
    finished_at=_times,
    attempt=st.integers(0, 5),
    outcome=st.sampled_from([s.name for s in JobStatus]),
)
_jobs = st.builds(
    Job,
    id=st.uuids().map(str),
    workflow_name=st.text(min_size=1, max_size=20),
    status=st.sampled_from(list(JobStatus)),
    current_step=st.integers(0, 50),
    steps_completed=st.integers(0, 50),
    percent_completed=st.floats(0, 100),
    initial_input_value=_json_values,
    last_return_value=_json_values,
    user_context=_json_values,
    requested_start_time=st.none() | _times,
    error=st.none() | st.builds(JobError, type=st.text(max_size=10), message=st.text()),
    priority=st.none() | st.integers(0, 255),
    attempt=st.integers(0, 10),
    recoveries=st.lists(st.text(max_size=10), max_size=2),
    submitted_at=st.none() | _times,
    started_at=st.none() | _times,
    step_started_at=st.none() | _times,
    timings=st.lists(_timings, max_size=4),
    deadline=st.none() | _times.map(lambda t: t + timedelta(days=1)),
)


def _through_the_broker(document: dict[str, Any]) -> Any:
    return json.loads(json.dumps(document))


@settings(max_examples=300, deadline=None)
@given(_jobs)
def test_the_message_rebuilds_the_stored_document(job: Job) -> None:
    rebuilt = Job.model_validate(_through_the_broker(job_document(job)))
    assert rebuilt == job
    assert json.dumps(job_document(rebuilt)) == json.dumps(job_document(job))


def test_status_prints_its_value_and_its_name_is_the_name() -> None:
    # As the README says: an IntEnum with Ergate's values, str() is the number.
    assert str(JobStatus.QUEUED) == "2"
    assert JobStatus.QUEUED.name == "QUEUED"
