"""Every `ergate_*` setting, read once from `app.conf` (Django: `CELERY_ERGATE_*`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from dataclasses import field as default_factory_field
from typing import Any

from ergate_celery.exceptions import ImproperlyConfiguredError
from ergate_celery.model.job_status import FINAL_STATUSES

STUCK_ACTIONS = ("requeue", "fail")


@dataclass(frozen=True, slots=True)
class ErgateSettings:
    """The settings with their defaults; see the settings page of the docs."""

    #: Acknowledge a step's message only after the step ran, so a lost worker's step reruns
    #: when its message comes back; early acknowledgement leaves it to the sweep.
    acks_late: bool = True
    #: With acks_late, requeue the step when its worker process dies (SIGKILL, OOM).
    reject_on_worker_lost: bool = True
    #: Show input and user context in task args (logs, Flower), sending the whole job in each
    #: step message; off: a message names the job's place, as the input may be personal data.
    show_task_args: bool = False
    #: The largest job record or step message, in bytes, as JSON.
    max_payload_bytes: int = 1_000_000
    #: How often `wait_for_job` reads the job, in seconds.
    wait_poll_interval: float = 0.05
    #: Install `ergate.release_scheduled_jobs` into `beat_schedule`.
    beat_enabled: bool = True
    #: Most seconds between two looks of beat at the scheduled index (a release task is sent
    #: only when a job is due).
    schedule_interval: float = 1.0
    #: Due jobs read from the index per query by one release run.
    release_batch_size: int = 500
    #: A QUEUED job unclaimed, or a RUNNING one unrenewed, for this many seconds is looked at
    #: by the sweep: a QUEUED one's message is published again (not counted as a run), a
    #: RUNNING one is requeued only once its claim's lease has expired.
    stuck_after: float = 3600.0
    #: What the sweep does with a stuck job: "requeue" its current step, or "fail" it.
    stuck_action: str = "requeue"
    #: Most seconds between two looks of beat at the active index (a sweep is sent only when
    #: a job is idle past stuck_after; installed with beat_enabled).
    stuck_check_interval: float = 60.0
    #: Seconds a step's claim holds without its worker renewing it: the worker renews it every
    #: third of this (or of stuck_after, if shorter) while the step runs, whatever the step
    #: does. A claim whose lease expired (its worker is gone) is taken over.
    lease_seconds: float = 30.0
    #: A hard time limit, in seconds, for every step without a `time_limit` of its own; None:
    #: none, and a step that hangs while its worker lives holds its job until the worker ends.
    step_time_limit: float | None = None
    #: Least seconds between two stored progress reports of a step.
    progress_interval: float = 1.0
    #: Tries for storing a step's outcome and publishing the next step before the job fails.
    after_step_attempts: int = 5
    #: Starts of one step without an outcome (its worker lost, or requeued by the sweep)
    #: before the job ends FAILED with `WorkerLost`. Celery `retry()`s count against
    #: `max_retries` instead.
    max_step_attempts: int = 3
    #: Seconds a finished job of a status is kept, by status name (`{"FAILED": 2592000}`);
    #: the statuses not named follow `result_expires`.
    expires_by_status: dict[str, int] = default_factory_field(default_factory=dict)
    #: Seconds a worker trusts its copy of the paused workflows before reading them again.
    pause_refresh: float = 1.0
    #: Seconds a step message that reaches workers without its step task (a worker that
    #: never imported the workflows module, or an old worker during a deploy that adds the
    #: workflow) is handed back to the queue for a worker that has it, before its job ends
    #: FAILED with `UnknownStep`.
    unknown_step_wait: float = 300.0
    #: Step runs kept in `job.timings`, the latest ones: the list travels in every step
    #: message and record write, so a long job would otherwise pay for all its past steps.
    timings_kept: int = 10
    #: When the broker is the result backend's Redis (same server and db): write a step's
    #: outcome and the next step's message in one script, and a submission with its first
    #: message; off: the message is published by kombu after the write.
    redis_one_trip: bool = True

    #: The name of this app's job index (on Redis, its keys `ergate:<name>:scheduled|active`
    #: after `global_keyprefix`); None: the app's main name. Every process of one app (web,
    #: workers, beat) must use the same one; "" is the index shared by all apps.
    index_name: str | None = None

    def expires_for(self, status_name: str, default: float | None) -> float | None:
        """Seconds a finished job of `status_name` is kept (`default`: `result_expires`)."""
        return self.expires_by_status.get(status_name, default)

    def index_name_of(self, main: str | None) -> str:
        """The job index name of an app whose main name is `main`."""
        if self.index_name is not None:
            return self.index_name
        return "" if main in (None, "__main__") else str(main)

    @classmethod
    def from_conf(cls, conf: Any) -> ErgateSettings:
        """Read `ergate_<name>` for every field, checking each value's type."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            key = f"ergate_{field.name}"
            value = conf.get(key)
            if value is None:
                continue
            default = field.default
            if field.name == "expires_by_status":
                values[field.name] = _expires_by_status(key, value)
                continue
            if field.name == "index_name":
                if not isinstance(value, str) or any(c.isspace() for c in value):
                    raise ImproperlyConfiguredError(
                        f"{key} must be a string without whitespace, got {value!r}"
                    )
            elif isinstance(default, str):
                if value not in STUCK_ACTIONS:
                    raise ImproperlyConfiguredError(
                        f"{key} must be one of {', '.join(STUCK_ACTIONS)}, got {value!r}"
                    )
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ImproperlyConfiguredError(f"{key} must be True or False, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ImproperlyConfiguredError(f"{key} must be a positive number, got {value!r}")
            elif isinstance(default, int) and not isinstance(value, int):
                raise ImproperlyConfiguredError(f"{key} must be a whole number, got {value!r}")
            values[field.name] = value
        return cls(**values)


_FINAL_NAMES = tuple(status.name for status in sorted(FINAL_STATUSES))


def _expires_by_status(key: str, value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ImproperlyConfiguredError(
            f'{key} must be a dict of status name to seconds, e.g. {{"FAILED": 2592000}}, '
            f"got {value!r}"
        )
    for name, seconds in value.items():
        if name not in _FINAL_NAMES:
            raise ImproperlyConfiguredError(
                f"{key}: {name!r} is not a final status; use one of {', '.join(_FINAL_NAMES)} "
                "(unfinished jobs never expire)"
            )
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
            raise ImproperlyConfiguredError(
                f"{key}[{name!r}] must be a positive whole number of seconds, got {seconds!r}"
            )
    return dict(value)
