"""One job per firing of a periodic entry, however many beats fire it.

Each firing's job id is `<entry name>@<scheduled time, ISO 8601>`, submitted with
`if_exists="return"`: two beats, a restarted beat, or beat on django-celery-beat's
`DatabaseScheduler` submitting the same firing find the job the first one stored. The
scheduled time is read when beat sends the message (`FiringTask.apply_async`, in the beat
process), not when a worker runs it, so a message that waits in the broker keeps its firing:
for an interval of `every` seconds it is the start of its slot (whole multiples of `every`
since the Unix epoch), otherwise (a crontab) its minute.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import Task

from ergate_celery.operations.submission import MAX_JOB_ID_LENGTH

#: The keyword of the submit task's message that holds the moment beat sent it.
FIRED_AT = "fired_at"


class FiringTask(Task):  # type: ignore[type-arg]
    """The periodic submit task: a message sent for a beat entry carries the moment it was
    sent. An entry is known by what `periodic_entry` puts in its kwargs (`entry`, `every`)
    or by the header django-celery-beat adds (`periodic_task_name`); a call of the task from
    code gets a new job each time, as `submit_job` does."""

    def apply_async(self, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        stamped = dict(kwargs or {})
        headers = options.get("headers") or {}
        periodic = "entry" in stamped or "every" in stamped or "periodic_task_name" in headers
        if periodic:
            stamped.setdefault(FIRED_AT, datetime.now(UTC).isoformat())
        return super().apply_async(args, stamped, *rest, **options)


def scheduled_time(fired_at: str, every: float | None) -> datetime:
    """The scheduled time of a firing sent at `fired_at`: the start of its slot of `every`
    seconds, or its minute."""
    moment = datetime.fromisoformat(fired_at).astimezone(UTC)
    if every is not None and every > 0:
        start = (moment.timestamp() // every) * every
        return datetime.fromtimestamp(start, UTC)
    return moment.replace(second=0, microsecond=0)


def firing_id(entry: str, fired_at: str, every: float | None) -> str:
    """The job id of a firing of beat entry `entry`: `<entry>@<scheduled time>`, with the
    entry name's spaces as underscores (an id has none), cut to fit an id's length."""
    moment = scheduled_time(fired_at, every).isoformat()
    name = "_".join(entry.split()) or "periodic"
    return f"{name[: MAX_JOB_ID_LENGTH - len(moment) - 1]}@{moment}"
