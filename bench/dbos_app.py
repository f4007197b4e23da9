"""The DBOS side of the benchmark: a DBOS Transact application process of its own.

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

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import apps, pgtrace

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
