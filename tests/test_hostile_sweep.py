"""The sweep and a hung step (issue 12, point 6): a step that hangs looks like a lost one, so
the sweep requeues it, but at most `ergate_max_step_attempts` starts in all; then the job ends
FAILED (`WorkerLost`), each requeue written in `job.recoveries`, and the other pool slots
serve other jobs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ergate_celery import JobStatus
from ergate_celery.scheduling.beat import recover_stuck_jobs

from .apps import fault_app
from .faults import _runs, _worker
from .support import Setup, wait_until

WAIT = 60


def test_the_sweep_requeues_a_hung_step_a_bounded_number_of_times(
    make_setup: Callable[..., Setup], tmp_path: Path
) -> None:
    setup = make_setup("redis", ergate_stuck_after=1, ergate_max_step_attempts=2)
    setup.ergate.register_workflow(fault_app.hanging)
    gate = tmp_path / "hang-gate"
    with _worker(setup, "hang", concurrency=3, env={"ERGATE_FAULT_OUTAGE_GATE": str(gate)}):
        hung = str(setup.ergate.submit_job("fault_hang", initial_input_value="hang").id)
        wait_until(lambda: _runs(setup, hung), what="the hung step started")

        def swept_to_the_end() -> bool:
            recover_stuck_jobs(setup.ergate)
            return setup.ergate.get_job(hung).is_final

        wait_until(swept_to_the_end, 30, 0.3, what="the sweep gave up on the hung job")
        # Two slots hold the hung runs; the third still serves other jobs.
        healthy = setup.ergate.submit_job("fault_hang", initial_input_value="ok")
        assert setup.ergate.wait_for_job(healthy.id, timeout=WAIT).status is JobStatus.COMPLETED
        time.sleep(2)  # more sweeps: nothing more is requeued
        assert recover_stuck_jobs(setup.ergate) == 0
        starts = len(_runs(setup, hung))
        gate.touch()  # the hung runs end; their outcomes are dropped (another run took over)
        time.sleep(1)
    failed = setup.ergate.get_job(hung)
    assert starts == 2
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.type == "WorkerLost"
    assert len(failed.recoveries) == 2
    assert "requeue: RUNNING" in failed.recoveries[0]
