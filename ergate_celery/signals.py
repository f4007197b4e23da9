"""Celery signals for the job lifecycle; connect with `@job_completed.connect`.

Each is sent with `sender` set to the step's task name and `job` (the job as stored after the
change). A receiver that raises is logged by Celery and does not affect the job.
"""

from celery.utils.dispatch import Signal

job_started = Signal(name="ergate.job_started")
"""The job's first step began running."""

step_started = Signal(name="ergate.step_started")
"""A step began running (also when a retried or redelivered step runs again)."""

step_completed = Signal(name="ergate.step_completed")
"""A step's outcome was stored; `job` holds the status and progress after it."""

job_completed = Signal(name="ergate.job_completed")
"""The job reached COMPLETED."""

job_failed = Signal(name="ergate.job_failed")
"""The job reached FAILED; `job.error` says why."""

job_aborted = Signal(name="ergate.job_aborted")
"""A step raised AbortJob."""

job_cancelled = Signal(name="ergate.job_cancelled")
"""The job reached CANCELLED."""

job_waiting = Signal(name="ergate.job_waiting")
"""A step raised Sleep or WaitForSignal and the job now waits SCHEDULED; `job.wait` says
for what and until when."""

job_signalled = Signal(name="ergate.job_signalled")
"""`signal_job` stored a signal on the job (`job.signals`); the job is QUEUED when it was
waiting for it."""

job_parked = Signal(name="ergate.job_parked")
"""The job waits QUEUED without a message: its workflow is paused, or (`job.waiting_for_slot`)
`Concurrency.limit` jobs of its key (`job.concurrency_key`) are in progress."""

job_unparked = Signal(name="ergate.job_unparked")
"""A parked job's step was sent again: its workflow was resumed, or a slot of its key was
freed (its start then sends `job_started`)."""
