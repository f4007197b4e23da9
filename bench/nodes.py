"""Throughput with 1, 2 and 4 separate `celery worker` nodes on Redis, and what saturates.

Each node is `celery worker -P prefork -c 1`, one consuming process: the machine has two
cores, so 1, 2 and 4 nodes are one process on one core, one per core, and two per core. With
`-c 2` nodes the counts would be 2, 4 and 8 processes, mixing pool growth with node growth
and oversubscribing the cores at two nodes already. For each count the nodes are started and
each answers through a queue of its own; then `jobs` ergate jobs of 5 steps and `jobs` bare
chains of 5 run (all submitted, then all awaited, as in the compare part's throughput), the
side that goes first alternating with the count.

Around each run the CPU seconds (user + system, from `/proc/<pid>/stat`, reaped children
included) of each component are read:

- workers: every node's process tree;
- redis-server: every process of that name (one server, shared with anything else using it);
- harness: this process, which submits and polls;
- postgres, beam.smp (RabbitMQ): not used by the run; what other users of the machine cost;
- machine: all cores' busy time, from `/proc/stat`; others: the machine's busy time that
  none of the above took (other users of a shared machine, the kernel).

The component that saturates is the busiest against what it can use: one core for
redis-server and for the harness, min(nodes, cores) for the workers, every core for the
machine as a whole.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from celery import chain

from . import apps
from .apps import Bench, BenchConfig
from .measures import BARE_FINAL, JOB_FINAL, StatusReader
from .report import aligned, error_text
from .storage import flush_redis
from .workers import descendants, stop_all, worker

TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
#: The services whose CPU is read by process name.
NAMED = {"redis-server": "redis-server", "postgres": "postgres", "rabbitmq": "beam.smp"}
#: Each node's worker options (see the module's docstring).
NODE_OPTIONS = ("-c", "1")


@dataclass(frozen=True)
class NodeSizes:
    """Node counts, and the jobs (and bare chains) of 5 steps run at each count."""

    counts: tuple[int, ...] = (1, 2, 4)
    jobs: int = 600
    timeout: float = 900.0


FULL = NodeSizes()
QUICK = NodeSizes(jobs=100)
TINY = NodeSizes(counts=(1, 2), jobs=4, timeout=60.0)


# CPU seconds, from /proc ------------------------------------------------------------------


def _own_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of `pid`: its own CPU and its reaped children's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(value) for value in fields[11:15]) / TICKS


def tree_seconds(pid: int) -> float:
    """The CPU seconds of `pid` and every process below it, live or reaped."""
    return sum(_own_seconds(child) for child in descendants(pid))


def named(comm: str) -> list[int]:
    """The pids of the processes whose name (`/proc/<pid>/comm`) is `comm`."""
    found: list[int] = []
    for path in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError, ValueError):
            if path.read_text().strip() == comm:
                found.append(int(path.parent.name))
    return found


def machine_seconds() -> float:
    """Busy CPU seconds of all cores since boot (everything but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / TICKS


def snapshot(workers: list[int]) -> dict[str, float]:
    """CPU seconds so far of each component."""
    seconds = {
        "workers": sum(tree_seconds(pid) for pid in workers),
        "harness": _own_seconds(os.getpid()),
    }
    for label, comm in NAMED.items():
        seconds[label] = sum(_own_seconds(pid) for pid in named(comm))
    return seconds


def saturated(cpu: dict[str, float], wall: float, nodes: int) -> dict[str, float]:
    """Each component's CPU use as a share of what it can use over `wall` seconds."""
    capacity = {"workers": min(nodes, CORES), "redis-server": 1, "harness": 1, "machine": CORES}
    return {name: cpu[name] / (wall * cores) for name, cores in capacity.items()}


# The part ----------------------------------------------------------------------------------


def _run(bench: Bench, side: str, jobs: int, reader: StatusReader, timeout: float) -> None:
    steps = apps.SHORT_STEPS
    if side == "bare":
        ids = [
            chain(bench.noop.s(i), *(bench.noop.s() for _ in range(steps - 1))).apply_async().id
            for i in range(jobs)
        ]
        final = BARE_FINAL
    else:
        ergate = bench.ergate
        assert ergate is not None
        ids = [
            str(ergate.submit_job(apps.SHORT_WORKFLOW, initial_input_value=i).id)
            for i in range(jobs)
        ]
        final = JOB_FINAL
    failed = reader.wait_all(ids, final, timeout)
    if failed:
        raise RuntimeError(f"{failed} of {jobs} {side} runs did not succeed")


def measure(
    bench: Bench, side: str, nodes: int, pids: list[int], sizes: NodeSizes
) -> dict[str, Any]:
    """One run of `sizes.jobs` on `nodes` nodes, with each component's CPU seconds."""
    reader = StatusReader(bench)
    try:
        _run(bench, side, min(20, sizes.jobs), reader, sizes.timeout)  # warm the nodes
        # The machine's counter is read next to the clock: a snapshot takes a while.
        before = snapshot(pids)
        busy, start = machine_seconds(), time.perf_counter()
        _run(bench, side, sizes.jobs, reader, sizes.timeout)
        wall, busy = time.perf_counter() - start, machine_seconds() - busy
        after = snapshot(pids)
    finally:
        reader.close()
    cpu = {name: after[name] - before[name] for name in before}
    # Whatever else runs on the machine (other users, the kernel) took the rest.
    cpu["others"] = max(0.0, busy - sum(cpu.values()))
    cpu["machine"] = busy
    use = saturated(cpu, wall, nodes)
    return {
        "nodes": nodes,
        "side": side,
        "steps_per_s": sizes.jobs * apps.SHORT_STEPS / wall,
        "seconds": wall,
        "cpu_seconds": cpu,
        "utilisation": use,
        "saturated": max(use, key=lambda name: use[name]),
    }


@contextlib.contextmanager
def _nodes(
    config: BenchConfig, bench: Bench, run_dir: Path, count: int, timeout: float
) -> Iterator[list[int]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                worker(config, bench, run_dir, timeout, options=NODE_OPTIONS, own_queue=True)
            )
            for _ in range(count)
        ]


def run_nodes(sizes: NodeSizes, log: Callable[[str], None]) -> dict[str, Any]:
    """Every node count, both sides; a count that fails is recorded with its error."""
    run_dir = Path(tempfile.mkdtemp(prefix="ergate-bench-nodes-"))
    config = BenchConfig(
        setup="redis", folder=run_dir, queue=f"ergate-bench-{uuid.uuid4().hex[:12]}"
    )
    outcome: dict[str, Any] = {
        "status": "ran",
        "sizes": asdict(sizes),
        "cores": CORES,
        "node": " ".join(("celery worker -P prefork", *NODE_OPTIONS)),
        "runs": [],
        "errors": {},
    }
    bench: Bench | None = None
    flush_redis()
    try:
        bench = apps.build(config)
        for index, count in enumerate(sizes.counts):
            log(f"nodes: {count}…")
            sides = ("ergate", "bare") if index % 2 == 0 else ("bare", "ergate")
            try:
                with _nodes(config, bench, run_dir, count, sizes.timeout) as pids:
                    for side in sides:
                        outcome["runs"].append(measure(bench, side, count, pids, sizes))
            except Exception as exc:
                outcome["errors"][str(count)] = error_text(exc)
                log(f"nodes: {count} failed: {error_text(exc)}")
    finally:
        stop_all()
        if bench is not None:
            bench.app.close()
        flush_redis()
        shutil.rmtree(run_dir, ignore_errors=True)
    return outcome


def table(outcome: dict[str, Any]) -> str:
    """One row per node count and side: steps/s, CPU seconds per component, what saturates."""
    names = ("workers", "redis-server", "harness", "postgres", "rabbitmq", "others", "machine")
    rows: list[tuple[str, ...]] = [
        ("nodes", "side", "steps/s", "wall s", *(f"{n} cpu s" for n in names), "saturated")
    ]
    for run in outcome["runs"]:
        top = run["saturated"]
        rows.append(
            (
                str(run["nodes"]),
                run["side"],
                f"{run['steps_per_s']:.0f}",
                f"{run['seconds']:.1f}",
                *(f"{run['cpu_seconds'][n]:.1f}" for n in names),
                f"{top} {run['utilisation'][top]:.0%}",
            )
        )
    lines = aligned(rows, left=2)
    errors = [f"{count} nodes failed: {error}" for count, error in outcome["errors"].items()]
    return "\n".join(lines + errors)
