"""The DBOS side of the benchmark: a DBOS Transact application process of its own, and the
harness's handle on it (`DbosApp`).

DBOS runs a workflow inside the application process that starts it (a thread of DBOS's own
executor), each step checkpointed in the system database; there is no separate worker. This
process is that application: it launches DBOS on the bench's PostgreSQL, with its system
tables in the schema named by `ERGATE_BENCH_DBOS_SCHEMA`, and starts workflows when the
harness asks, as a web application's request handler would call `DBOS.start_workflow`.

    python -m bench.dbos_app

Protocol, one JSON object a line: it writes `{"ready": true}` once DBOS is launched; each line
read, `{"workflow": "chain20", "count": 3, "input": 7}`, starts `count` workflows with inputs
`input`, `input + 1`, … and is answered with `{"ids": [...]}` once all are started (their
status rows written). The harness waits for the results in the database, as it waits for
ergate_celery's jobs. End of input ends the process.

With `ERGATE_BENCH_PG_PROFILE` (and `ERGATE_BENCH_PG_TRACE`) set, its PostgreSQL connections
are recorded and traced for bench/profile_pg.py (bench/pgtrace.py); with
`ERGATE_BENCH_CPROFILE`, its threads run under cProfile (what they did until DBOS was
launched forgotten).

The workflows mirror the ergate ones of bench/apps.py: `chain20` and `chain5` are 20 and 5
no-op steps, each step's input its predecessor's return value.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from . import apps, pgtrace
from .workers import ROOT

#: Workflow names and their step counts, the same lengths as the ergate and bare sides.
WORKFLOWS = {"chain20": apps.LONG_STEPS, "chain5": apps.SHORT_STEPS}
#: Statuses of DBOS's `workflow_status` rows that end a workflow, and whether in success.
FINAL = {
    "SUCCESS": True,
    "ERROR": False,
    "CANCELLED": False,
    "MAX_RECOVERY_ATTEMPTS_EXCEEDED": False,
}


def schema() -> str:
    """The system schema of this run, from `ERGATE_BENCH_DBOS_SCHEMA`."""
    name = os.environ.get("ERGATE_BENCH_DBOS_SCHEMA", "")
    if not name:
        raise RuntimeError("Set ERGATE_BENCH_DBOS_SCHEMA to the DBOS system schema of the run")
    return name


def launch() -> dict[str, Callable[[Any], Any]]:
    """Register the workflows, launch DBOS; the workflow functions by name."""
    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {
        "name": "ergate-bench",
        "system_database_url": apps.POSTGRES_URL,
        "dbos_system_schema": schema(),
        "application_version": "ergate-bench",
        "log_level": "WARNING",
    }
    DBOS(config=config)

    @DBOS.step()
    def noop(x: Any) -> Any:
        return x

    def chain_of(steps: int) -> Callable[[Any], Any]:
        def chain(x: Any) -> Any:
            for _ in range(steps):
                x = noop(x)
            return x

        return chain

    workflows = {
        name: DBOS.workflow(name=f"bench_{name}")(chain_of(steps))
        for name, steps in WORKFLOWS.items()
    }
    DBOS.launch()
    return workflows


def serve(workflows: dict[str, Callable[[Any], Any]]) -> None:
    """Answer the harness's lines until its end of input."""
    from dbos import DBOS

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        asked = json.loads(line)
        workflow = workflows[asked["workflow"]]
        first = int(asked.get("input", 0))
        ids = [
            DBOS.start_workflow(workflow, first + offset).workflow_id
            for offset in range(int(asked.get("count", 1)))
        ]
        print(json.dumps({"ids": ids}), flush=True)


# The harness's handle on the process ------------------------------------------------------


class DbosApp:
    """bench/dbos_app.py in a session of its own; `start` asks it to start workflows."""

    def __init__(self, schema: str, log_path: Path) -> None:
        self.schema = schema
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.dbos_app"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "ERGATE_BENCH_DBOS_SCHEMA": schema},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        self.log_path = log_path

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        if self.process.stdin is None or self.process.stdout is None:
            raise RuntimeError("the DBOS application has no pipes")
        return self.process.stdin, self.process.stdout

    def _read(self) -> dict[str, Any]:
        _, stdout = self._pipes()
        line = stdout.readline()
        if not line:
            self.process.wait(timeout=20)
            tail = self.log_path.read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError(
                f"The DBOS application exited with {self.process.returncode}:\n" + "\n".join(tail)
            )
        answer: dict[str, Any] = json.loads(line)
        return answer

    def wait_ready(self) -> None:
        """Return once DBOS is launched in the process (its migrations applied)."""
        if not self._read().get("ready"):
            raise RuntimeError("the DBOS application did not say it was ready")

    def start(self, workflow: str, count: int, first: int) -> list[str]:
        """Start `count` workflows with inputs `first`, `first + 1`, …; their ids."""
        stdin, _ = self._pipes()
        stdin.write(json.dumps({"workflow": workflow, "count": count, "input": first}).encode())
        stdin.write(b"\n")
        stdin.flush()
        ids: list[str] = self._read()["ids"]
        return ids

    def close_input(self) -> None:
        """End of input: the process shuts DBOS down and exits."""
        with contextlib.suppress(OSError):
            self._pipes()[0].close()

    def stop(self) -> None:
        """End of input, then SIGKILL to its group if it has not exited within 20 s."""
        self.close_input()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)
        with contextlib.suppress(OSError):
            self._pipes()[1].close()
        self._log.close()


def main() -> None:
    from dbos import DBOS

    pgtrace.install_from_env()
    # Profiled from before the launch, so that the executor's threads are too (an idle one is
    # reused for the next workflow), then cleared of the launch itself.
    folder = os.environ.get("ERGATE_BENCH_CPROFILE", "")
    profiles = pgtrace.ThreadProfiles(Path(folder)) if folder else None
    workflows = launch()
    if profiles is not None:
        profiles.clear()
    try:
        serve(workflows)
    finally:
        DBOS.destroy(workflow_completion_timeout_sec=5)
        pgtrace.flush()
        if profiles is not None:
            profiles.write()


if __name__ == "__main__":
    main()
