"""A Celery app for `celery -A tests.apps.fault_app worker` subprocesses of the fault tests.

Its configuration comes as JSON in ERGATE_TEST_CONF, as for `beat_app`. What the steps do is
made visible across processes, so that a test can watch a worker it is about to kill:

- ERGATE_FAULT_MARKS: a file to which every step run appends one line
  `<workflow> <step> <job id> <hop> <attempt> <pid>` as it starts (one `write` on an
  O_APPEND descriptor, so lines of concurrent processes do not mix);
- ERGATE_FAULT_REDIS: a Redis URL on which the soak workflow counts, per job and step, the
  step starts, the stored step outcomes and the published step messages (HINCRBY);
- ERGATE_FAULT_REDIS also holds, for `fault_overlap`, the pool processes running each step
  now (a set per job and step), and counts the step runs that began while another live
  process was still running the same step;
- ERGATE_FAULT_KILL_AFTER_COMMIT: a file path; the first `fault_window` job whose first step
  has been stored kills its own worker process (SIGKILL) before the next step is published,
  and creates that file to say so;
- ERGATE_FAULT_KILL_IN_RELEASE: a file path; the first release run (beat's
  `ergate.release_scheduled_jobs`) about to publish a `fault_window` step kills its own
  worker process (SIGKILL) after writing the job QUEUED, and creates that file to say so;
- ERGATE_FAULT_OUTAGE_GATE: a file path; the first run of `fault_outage`'s third step holds
  until that file exists, so a test can stop Redis while the step runs and let it end then.
"""

from __future__ import annotations

import os
import signal
import time
import zlib
from typing import Annotated, Any

from celery import current_task
from celery.signals import after_task_publish, before_task_publish

from ergate_celery import CurrentRun, Progress, ProgressReporter, StepRun, Workflow
from ergate_celery import signals as ergate_signals

from . import app_from_env

#: How long the first run of a "slow" step sleeps: far longer than a test waits to kill it.
FIRST_RUN_SLEEP = 30.0
#: How long `fault_outage`'s gated step waits for its gate before failing.
GATE_TIMEOUT = 60.0
#: In the soak workflow, a step raises when crc32("<input>:<step>") % SOAK_FAIL_MODULUS == 0.
SOAK_FAIL_MODULUS = 100
SOAK_STEPS = 5

# Counting hashes of the soak, in the tests' Redis database.
STARTED_KEY = "faults:started"
COMPLETED_KEY = "faults:completed"
PUBLISHED_KEY = "faults:published"
#: Publishes made while handling a redelivered message (a successor handed on again).
REPUBLISHED_KEY = "faults:republished"


def mark(run: StepRun) -> None:
    """Append `run` to the marks file, if the test asked for one."""
    path = os.environ.get("ERGATE_FAULT_MARKS")
    if not path:
        return
    line = (
        f"{run.workflow_name} {run.step_name} {run.job_id} {run.hop} {run.attempt} {os.getpid()}\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_marks(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The marks written so far, oldest first."""
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return []
    marks = []
    for line in lines:
        workflow, step, job_id, hop, attempt, pid = line.split(" ")
        marks.append(
            {
                "workflow": workflow,
                "step": step,
                "job_id": job_id,
                "hop": int(hop),
                "attempt": int(attempt),
                "pid": int(pid),
            }
        )
    return marks


Run = Annotated[StepRun, CurrentRun()]

# A step that, on its first run, sleeps until the test kills its worker.
slow = Workflow(unique_name="fault_slow")


@slow.step
def first(x: int, run: Run) -> int:
    mark(run)
    return x + 1


@slow.step
def second(x: int, run: Run) -> int:
    mark(run)
    if run.attempt == 1:
        time.sleep(FIRST_RUN_SLEEP)
    return x * 10


@slow.step
def third(x: int, run: Run) -> int:
    mark(run)
    return x + 3


# Five steps; the third is running when the test stops Redis, and ends while Redis is down.
outage = Workflow(unique_name="fault_outage")


def _outage_step(name: str, gated: bool = False) -> None:
    def step(x: list[str], run: Run) -> list[str]:
        mark(run)
        gate = os.environ.get("ERGATE_FAULT_OUTAGE_GATE")
        if gated and gate and run.attempt == 1:
            _wait_for_file(gate)
        return [*x, name]

    step.__name__ = step.__qualname__ = name
    outage.step(step)


# A step reporting progress until the gate file exists, while the test stops the backend.
progressing = Workflow(unique_name="fault_progress")


@progressing.step
def crunch(x: int, run: Run, progress: Annotated[ProgressReporter, Progress()]) -> int:
    mark(run)
    gate = os.environ.get("ERGATE_FAULT_OUTAGE_GATE", "")
    deadline = time.monotonic() + GATE_TIMEOUT
    tick = 0
    while not os.path.exists(gate) and time.monotonic() < deadline:
        tick += 1
        progress.report(min(99.0, tick / 10))
        time.sleep(0.02)
    return x + 1


@progressing.step
def settle(x: int, run: Run) -> int:
    mark(run)
    return x * 2


# A step that hangs (input "hang") until the gate file exists, on every run.
hanging = Workflow(unique_name="fault_hang")


@hanging.step
def hangs(x: str, run: Run) -> str:
    mark(run)
    if x == "hang":
        _wait_for_file(os.environ["ERGATE_FAULT_OUTAGE_GATE"])
    return x


def _wait_for_file(path: str) -> None:
    deadline = time.monotonic() + GATE_TIMEOUT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was never created")
        time.sleep(0.02)


for _i in range(5):
    _outage_step(f"outage_{_i}", gated=_i == 2)


# Three quick steps; the worker dies between storing the first one and publishing the second.
window = Workflow(unique_name="fault_window")


@window.step
def commit(x: int, run: Run) -> int:
    mark(run)
    return x + 1


@window.step
def publish(x: int, run: Run) -> int:
    mark(run)
    return x + 1


@window.step
def done(x: int, run: Run) -> int:
    mark(run)
    return x + 1


# The soak: five steps, each failing deterministically for ~1 % of inputs.
soak = Workflow(unique_name="fault_soak")


class PlannedFailureError(RuntimeError):
    """What a soak step raises for the inputs chosen to fail."""


def soak_fails(x: int, step_index: int) -> bool:
    """Whether step `step_index` of the soak job with input `x` raises."""
    return zlib.crc32(f"{x}:{step_index}".encode()) % SOAK_FAIL_MODULUS == 0


def _soak_step(index: int) -> None:
    def step(x: int, run: Run) -> int:
        if soak_fails(x, index):
            raise PlannedFailureError(f"input {x} fails at step {index}")
        return x

    step.__name__ = step.__qualname__ = f"soak_{index}"
    soak.step(step)


for _i in range(SOAK_STEPS):
    _soak_step(_i)


# The kill soak on PostgreSQL: steps that take a while, each noticing whether another live
# process is running the same step of the same job at the same time.
overlap = Workflow(unique_name="fault_overlap")
OVERLAP_STEPS = 4
#: How long each `fault_overlap` step runs: long enough for kills and cut connections to
#: land inside steps.
OVERLAP_STEP_SECONDS = 0.25
#: How long one step in `OVERLAP_LONG_ONE_IN` runs: longer than the soak's lease, so that only
#: its renewals keep another run off it.
OVERLAP_LONG_SECONDS = 4.0
OVERLAP_LONG_ONE_IN = 20


def overlap_long(x: int, step_index: int) -> bool:
    """Whether step `step_index` of the `fault_overlap` job with input `x` runs long."""
    return zlib.crc32(f"{x}:{step_index}".encode()) % OVERLAP_LONG_ONE_IN == 0


#: `fault_overlap` step runs that began while another live process ran the same step.
OVERLAPS_KEY = "faults:overlaps"


def running_key(job_id: str, step: str) -> str:
    """The Redis set of the pids running `step` of the job now (a killed one stays in it)."""
    return f"faults:running:{job_id}:{step}"


def _overlap_step(index: int) -> None:
    def step(x: int, run: Run) -> int:
        client = _counter()
        key = running_key(run.job_id, run.step_name)
        me = os.getpid()
        if client is not None:
            # Add first, then look: of two runs starting together, at least one sees the other.
            client.sadd(key, me)
            others = [int(pid) for pid in client.smembers(key) if int(pid) != me]
            if any(_running(pid) for pid in others):
                client.hincrby(OVERLAPS_KEY, f"{run.job_id}:{run.step_name}", 1)
        time.sleep(OVERLAP_LONG_SECONDS if overlap_long(x, index) else OVERLAP_STEP_SECONDS)
        if client is not None:
            client.srem(key, me)
        return x + 1

    step.__name__ = step.__qualname__ = f"overlap_{index}"
    overlap.step(step)


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (not a zombie a killed pool process leaves)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


for _i in range(OVERLAP_STEPS):
    _overlap_step(_i)


app, ergate = app_from_env("fault_app", slow, outage, window, soak, progressing, hanging, overlap)


# Cross-process observation -----------------------------------------------------------------

_redis: tuple[int, Any] | None = None


def _counter() -> Any:
    """A Redis client of this process (prefork children must not share their parent's)."""
    global _redis
    url = os.environ.get("ERGATE_FAULT_REDIS")
    if not url:
        return None
    if _redis is None or _redis[0] != os.getpid():
        import redis

        _redis = (os.getpid(), redis.Redis.from_url(url))
    return _redis[1]


def _count(key: str, field: str) -> None:
    client = _counter()
    if client is not None:
        client.hincrby(key, field, 1)


#: The workflows whose step starts, outcomes and publishes are counted.
_COUNTED = ("ergate.fault_soak.", "ergate.fault_overlap.")


@ergate_signals.step_started.connect(weak=False)
def _on_step_started(sender: str, job: Any, **kwargs: Any) -> None:
    if sender.startswith(_COUNTED):
        _count(STARTED_KEY, f"{job.id}:{sender.rsplit('.', 1)[1]}")


@ergate_signals.step_completed.connect(weak=False)
def _on_step_completed(sender: str, job: Any, **kwargs: Any) -> None:
    if sender.startswith(_COUNTED):
        _count(COMPLETED_KEY, f"{job.id}:{sender.rsplit('.', 1)[1]}")
    flag = os.environ.get("ERGATE_FAULT_KILL_AFTER_COMMIT")
    if flag and sender == "ergate.fault_window.commit":
        try:
            os.close(os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return
        # The first step's outcome is stored; its successor is not published yet.
        os.kill(os.getpid(), signal.SIGKILL)


@after_task_publish.connect(weak=False)
def _on_published(sender: str | None = None, headers: Any = None, **kwargs: Any) -> None:
    if sender and sender.startswith(_COUNTED) and headers:
        _count(PUBLISHED_KEY, str(headers.get("id")))
        delivery = getattr(current_task, "request", None)
        if delivery is not None and (delivery.delivery_info or {}).get("redelivered"):
            _count(REPUBLISHED_KEY, str(headers.get("id")))


@before_task_publish.connect(weak=False)
def _on_publishing(sender: str | None = None, **kwargs: Any) -> None:
    flag = os.environ.get("ERGATE_FAULT_KILL_IN_RELEASE")
    if not (flag and sender and sender.startswith("ergate.fault_window.")):
        return
    running = getattr(current_task, "name", None)
    if running != "ergate.release_scheduled_jobs":
        return
    try:
        os.close(os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return
    # The release wrote the job QUEUED; its step is not published yet.
    os.kill(os.getpid(), signal.SIGKILL)
