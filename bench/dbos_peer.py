"""DBOS Transact as a peer: ergate_celery on Redis and on RabbitMQ + PostgreSQL against DBOS
on the same PostgreSQL, per-step latency and throughput.

How each side runs, as a user would deploy it:

- DBOS: one application process (bench/dbos_app.py), its system tables in a schema of this
  run's own (`<bench schema>_dbos_<run id>`, dropped at the end). DBOS has no worker: a
  workflow runs in a thread of the process that starts it, each step checkpointed in
  PostgreSQL. The harness asks the process to start workflows over a pipe, as a web request
  would, and the process answers once their status rows are written; each workflow gets a
  thread of DBOS's executor (unbounded by default), as with any `DBOS.start_workflow`.
- ergate_celery: `celery worker -P prefork -c 2` on Redis (broker and store) and another on
  RabbitMQ + PostgreSQL (its store in the schema `<bench schema>_peer_<run id>`, dropped at
  the end), started with the bench's own settings (bench/apps.py).

Both PostgreSQL sides are awaited the same way, from the harness, by reading the database:
one workflow or job polled every `apps.WAIT_POLL_INTERVAL` s (DBOS's client handle, ergate's
`wait_for_job`); many read in batches every 0.25 s (`measures.StatusReader`). On Redis
`wait_for_job` is woken by a publish, as in the compare part.

- per-step latency: one 20-step workflow (job), from the request to start it to its result,
  divided by 20; each side's sample in a pair is the median of `latency_runs` runs;
- throughput: `throughput_jobs` workflows (jobs) of 5 no-op steps, started then awaited,
  steps over seconds, start included.

The three sides take their samples in interleaved groups (bench/pairs.py, DBOS in the place of
bare Celery: ergate on Redis and DBOS swap places from group to group, ergate on PostgreSQL
right after DBOS). Ratios are ergate ÷ DBOS: under 1 is better for latency, over 1 for
throughput.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from . import apps
from .apps import Bench, BenchConfig
from .dbos_app import FINAL, DbosApp
from .measures import JOB_FINAL, StatusReader
from .pairs import run_pairs, summary
from .report import aligned, error_text, not_ran
from .storage import flush_redis, postgres
from .workers import workers

Log = Callable[[str], None]
#: The sides beside DBOS: ergate_celery on each setup.
ERGATE_SETUPS = ("redis", "rabbitmq_postgres")
MEASURES = ("step_latency_ms", "throughput_steps_per_s")
#: Workflows (jobs) per side in a warm-up of the throughput measure.
WARM_JOBS = 20


@dataclass(frozen=True)
class PeerSizes:
    """How many interleaved groups, and the work of each side in each."""

    pairs: int = 5
    latency_runs: int = 3
    throughput_jobs: int = 400
    warmup: int = 2
    #: Upper bound, in seconds, on any single wait (a batch, a workflow, a process start).
    timeout: float = 600.0


FULL = PeerSizes()
QUICK = PeerSizes(pairs=2, latency_runs=1, throughput_jobs=20, warmup=1, timeout=120.0)
#: For the smoke test only: one group checks that every measure is reported.
TINY = PeerSizes(pairs=1, latency_runs=1, throughput_jobs=2, warmup=0, timeout=60.0)


class DbosStatusReader(StatusReader):
    """`StatusReader`'s batched polling, on DBOS's `workflow_status` table."""

    def __init__(self, schema: str) -> None:
        import sqlalchemy as sa

        self._engine = sa.create_engine(apps.POSTGRES_URL)
        self._query = sa.text(
            f"SELECT workflow_uuid, status FROM {schema}.workflow_status "
            "WHERE workflow_uuid = ANY(:ids)"
        )

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        with self._engine.connect() as conn:
            rows = conn.execute(self._query, {"ids": list(ids)})
            return {str(workflow_id): str(status) for workflow_id, status in rows}

    def close(self) -> None:
        self._engine.dispose()


# The sides ---------------------------------------------------------------------------------


@dataclass
class Sides:
    """What each side's samples run on."""

    dbos: DbosApp
    client: Any
    dbos_reader: DbosStatusReader
    ergate: dict[str, Bench]
    readers: dict[str, StatusReader]


def _timed_ms(call: Callable[[], None]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def _latency(sides: Sides, side: str, runs: int, timeout: float) -> float:
    """Median over `runs` of one 20-step run, submit to result, in ms per step."""
    steps = apps.LONG_STEPS

    def dbos_run(index: int) -> None:
        (workflow_id,) = sides.dbos.start("chain20", 1, index)
        handle = sides.client.retrieve_workflow(workflow_id)
        value = handle.get_result(polling_interval_sec=apps.WAIT_POLL_INTERVAL)
        if value != index:
            raise RuntimeError(f"wrong outcome: DBOS workflow gave {value!r}")

    def ergate_run(index: int) -> None:
        ergate = sides.ergate[side].ergate
        assert ergate is not None
        job = ergate.submit_job(apps.LONG_WORKFLOW, initial_input_value=index)
        done = ergate.wait_for_job(job.id, timeout=timeout)
        if done.status.name != "COMPLETED" or done.last_return_value != index:
            raise RuntimeError(f"wrong outcome: job {done!r}")

    run = dbos_run if side == "dbos" else ergate_run
    times = [_timed_ms(lambda i=index: run(i)) for index in range(runs)]
    return statistics.median(times) / steps


def _throughput(sides: Sides, side: str, jobs: int, timeout: float) -> float:
    """`jobs` 5-step runs started then awaited: steps per second, start included."""
    start = time.perf_counter()
    if side == "dbos":
        ids = sides.dbos.start("chain5", jobs, 0)
        failed = sides.dbos_reader.wait_all(ids, FINAL, timeout)
    else:
        ergate = sides.ergate[side].ergate
        assert ergate is not None
        ids = [
            str(ergate.submit_job(apps.SHORT_WORKFLOW, initial_input_value=i).id)
            for i in range(jobs)
        ]
        failed = sides.readers[side].wait_all(ids, JOB_FINAL, timeout)
    if failed:
        raise RuntimeError(f"{failed} of {jobs} {side} runs did not succeed")
    return jobs * apps.SHORT_STEPS / (time.perf_counter() - start)


def _versus(dbos: list[float], ergate: list[float], unit: str, better: str) -> dict[str, Any]:
    # pairs.summary names the peer "bare"; here it is DBOS.
    measured = summary(dbos, ergate, unit, better)
    measured["dbos"] = measured.pop("bare")
    detail = measured["detail"]
    detail["dbos_by_pair"] = detail.pop("bare_by_pair")
    return measured


def _groups(
    title: str,
    sample: Callable[[str], float],
    sizes: PeerSizes,
    log: Log,
    warm: Callable[[str], float] | None = None,
) -> dict[str, list[float]]:
    """The warm-up (`warm`, by default `sample`), then `sizes.pairs` interleaved groups of
    the three sides' samples.

    run_pairs's "bare" is the peer and its "ergate" the Redis side; the PostgreSQL side
    follows the peer in every group.
    """
    log(f"dbos: {title}…")
    for _ in range(sizes.warmup):
        for side in ("dbos", *ERGATE_SETUPS):
            (warm or sample)(side)
    taken = run_pairs(
        sizes.pairs,
        {
            "bare": partial(sample, "dbos"),
            "ergate": partial(sample, "redis"),
            "rabbitmq_postgres": partial(sample, "rabbitmq_postgres"),
        },
        lambda message: log(f"dbos: {title}: {message}"),
    )
    return {"dbos": taken["bare"], "redis": taken["ergate"], **taken}


def measure(sides: Sides, sizes: PeerSizes, log: Log) -> dict[str, dict[str, Any]]:
    """Both measures, each in interleaved groups of the three sides."""
    latency = _groups(
        "step_latency_ms",
        lambda side: _latency(sides, side, sizes.latency_runs, sizes.timeout),
        sizes,
        log,
    )
    throughput = _groups(
        "throughput_steps_per_s",
        lambda side: _throughput(sides, side, sizes.throughput_jobs, sizes.timeout),
        sizes,
        log,
        # Warm connections and code, not a full batch.
        warm=lambda side: _throughput(
            sides, side, min(WARM_JOBS, sizes.throughput_jobs), sizes.timeout
        ),
    )
    return {
        "step_latency_ms": {
            setup: _versus(latency["dbos"], latency[setup], "ms/step", "lower")
            for setup in ERGATE_SETUPS
        },
        "throughput_steps_per_s": {
            setup: _versus(throughput["dbos"], throughput[setup], "steps/s", "higher")
            for setup in ERGATE_SETUPS
        },
    }


# The part ----------------------------------------------------------------------------------


def unavailable_here(unavailable: Callable[[str], str | None]) -> str | None:
    """Why the part cannot run here (a service does not answer, DBOS is not installed)."""
    for setup in ERGATE_SETUPS:
        reason = unavailable(setup)
        if reason is not None:
            return reason
    try:
        import dbos  # noqa: F401
    except ImportError as exc:
        return f"DBOS Transact is not installed (pip install -e '.[bench]'): {exc}"
    return None


@contextlib.contextmanager
def _schemas(run: str) -> Iterator[tuple[str, str]]:
    """The ergate and DBOS schemas of this run, dropped before and after."""
    ergate, dbos = f"{apps.POSTGRES_SCHEMA}_peer_{run}", f"{apps.POSTGRES_SCHEMA}_dbos_{run}"
    drop = [f"DROP SCHEMA IF EXISTS {name} CASCADE" for name in (ergate, dbos)]
    postgres(*drop, f"CREATE SCHEMA {ergate}")
    flush_redis()
    try:
        yield ergate, dbos
    finally:
        postgres(*drop)
        flush_redis()


def _delete_queue(bench: Bench) -> None:
    # RabbitMQ keeps a durable queue after its consumers leave.
    with bench.app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        channel.queue_delete(bench.config.queue)


def run_dbos_peer(
    sizes: PeerSizes, unavailable: Callable[[str], str | None], log: Log
) -> dict[str, Any]:
    """The part: skipped when a service or DBOS is missing, else both measures."""
    reason = unavailable_here(unavailable)
    if reason is not None:
        log(f"dbos: skipped ({reason})")
        return {"status": "skipped", "reason": reason}
    from importlib.metadata import version

    run = uuid.uuid4().hex[:8]
    folder = Path(tempfile.mkdtemp(prefix="ergate-bench-dbos-"))
    outcome: dict[str, Any] = {
        "status": "ran",
        "sizes": asdict(sizes),
        "dbos_version": version("dbos"),
        "how": {
            "dbos": "one DBOS application process, workflows started with DBOS.start_workflow "
            "on the harness's request, run in DBOS's executor threads",
            "redis": "celery worker -P prefork -c 2, Redis broker and store",
            "rabbitmq_postgres": "celery worker -P prefork -c 2, RabbitMQ broker, "
            "PostgreSQL store (db+postgresql)",
            "wait": "one run: DBOS's client handle and wait_for_job poll PostgreSQL every "
            f"{apps.WAIT_POLL_INTERVAL} s (wait_for_job on Redis is woken by a publish); "
            f"many runs: batched reads every {StatusReader.poll_interval} s",
        },
        "measures": {},
        "errors": {},
    }
    benches: list[Bench] = []
    readers: list[StatusReader] = []
    try:
        with _schemas(run) as (ergate_schema, dbos_schema), contextlib.ExitStack() as stack:
            outcome["schemas"] = {"ergate": ergate_schema, "dbos": dbos_schema}
            dbos = DbosApp(dbos_schema, folder / "dbos-app.log")
            stack.callback(dbos.stop)
            configs = {
                "redis": BenchConfig(setup="redis", folder=folder, queue=f"ergate-peer-{run}"),
                "rabbitmq_postgres": BenchConfig(
                    setup="rabbitmq_postgres",
                    folder=folder,
                    queue=f"ergate-peer-{run}",
                    postgres_schema=ergate_schema,
                ),
            }
            ergate = {setup: apps.build(config) for setup, config in configs.items()}
            benches += ergate.values()
            log("dbos: starting the workers…")
            stack.enter_context(
                workers(
                    [(configs[setup], ergate[setup]) for setup in configs], folder, sizes.timeout
                )
            )
            stack.callback(_delete_queue, ergate["rabbitmq_postgres"])
            # DBOS shuts down while the workers do.
            stack.callback(dbos.close_input)
            log("dbos: launching DBOS…")
            dbos.wait_ready()
            from dbos import DBOSClient

            client = DBOSClient(
                system_database_url=apps.POSTGRES_URL, dbos_system_schema=dbos_schema
            )
            stack.callback(client.destroy)
            dbos_reader = DbosStatusReader(dbos_schema)
            readers.append(dbos_reader)
            status = {setup: StatusReader(bench) for setup, bench in ergate.items()}
            readers += status.values()
            sides = Sides(dbos, client, dbos_reader, ergate, status)
            outcome["measures"] = measure(sides, sizes, log)
    except Exception as exc:
        outcome["errors"]["run"] = error_text(exc)
        log(f"dbos: failed: {error_text(exc)}")
    finally:
        for reader in readers:
            reader.close()
        for bench in benches:
            bench.app.close()
        shutil.rmtree(folder, ignore_errors=True)
    return outcome


def table(outcome: dict[str, Any]) -> str:
    """Each measure: DBOS's median, ergate's on each setup, the median ratio and its range."""
    note = not_ran("dbos", outcome)
    if note is not None:
        return note
    rows: list[tuple[str, ...]] = [
        ("measure", "DBOS", "ergate on", "ergate", "ergate ÷ DBOS", "min-max", "groups")
    ]
    for name, by_setup in outcome["measures"].items():
        for setup, measured in by_setup.items():
            unit, better = measured["unit"], measured["better"]
            rows.append(
                (
                    f"{name} ({better} is better)",
                    f"{measured['dbos']:.2f} {unit}",
                    setup,
                    f"{measured['ergate']:.2f}",
                    f"{measured['ratio']:.2f}x",
                    f"{measured['ratio_min']:.2f}-{measured['ratio_max']:.2f}",
                    str(measured["pairs"]),
                )
            )
    notes = [f"  {title} failed: {error}" for title, error in outcome["errors"].items()]
    return "\n".join([*aligned(rows), *notes])
