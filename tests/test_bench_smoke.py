"""The benchmark harness runs end to end with tiny sizes on every setup whose services answer,
and reports every measure: paired ones with their median ratio and spread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import apps, dbos_peer, fan_out, job_length, listing, nodes, scale, waiting
from bench.measures import TINY, TINY_PAIRED
from bench.run import PartSizes, run_bench, table

from .services import PostgresService, RabbitMQService, RedisService

ROOT = Path(__file__).resolve().parent.parent

PAIRED = {"hop_latency_ms", "throughput_steps_per_s", "submit_p50_ms", "submit_p99_ms"}
#: Taken once, on Redis only in these tests (`Sizes.once`): the same code on every setup.
ONCE = {"bytes_per_hop_small", "bytes_per_hop_10kB", "worker_rss_mib"}
#: On the PostgreSQL setups, submit is also set against one INSERT transaction + publish.
FLOOR = "submit_p50_vs_insert_publish_ms"
TINY_PARTS = PartSizes(
    listing=listing.TINY,
    waiting=waiting.TINY,
    nodes=nodes.TINY,
    length=job_length.TINY,
    scale=scale.TINY,
    dbos=dbos_peer.TINY,
)


@pytest.fixture(autouse=True)
def bench_redis(redis_service: RedisService, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benches on this run's Redis database, not the bench's own db 12: two test runs at
    once must not share it. Worker subprocesses read it from the environment."""
    monkeypatch.setenv("ERGATE_BENCH_REDIS_URL", redis_service.url)
    for module in (apps, listing, waiting):
        monkeypatch.setattr(module, "REDIS_URL", redis_service.url)


def check_setup(written: dict[str, Any], setup: str, lines: list[str]) -> dict[str, Any]:
    """Every measure of `setup` ran; the paired ones with a pair count and a spread."""
    outcome: dict[str, Any] = written["setups"][setup]
    assert outcome["status"] == "ran", lines
    assert outcome["errors"] == {}, outcome["errors"]
    expected = PAIRED | (ONCE if outcome["sizes"]["once"] else set())
    expected |= {FLOOR} if setup in apps.POSTGRES_SETUPS else set()
    assert set(outcome["measures"]) == expected
    for name, measure in outcome["measures"].items():
        for side in ("bare", "ergate", "ratio"):
            assert measure[side] > 0, (name, side, measure)
        if name in PAIRED | {FLOOR}:
            assert measure["pairs"] == TINY.pairs, (name, measure)
            assert len(measure["detail"]["bare_by_pair"]) == TINY.pairs
            if name == "throughput_steps_per_s":  # the warm-up runs are not among them
                assert len(measure["detail"]["seconds"]["ergate"]) == TINY.pairs
            low, high = measure["ratio_min"], measure["ratio_max"]
            assert 0 < low <= measure["ratio"] <= high, (name, measure)
            assert low <= measure["ratio_iqr"][0] <= measure["ratio_iqr"][1] <= high
        else:
            assert measure["pairs"] == 1
            assert measure["ratio_min"] is None
    assert f"{setup}: " in table(written)
    return outcome


def run_part(part: str, tmp_path: Path, setups: list[str] | None = None) -> tuple[Any, list[str]]:
    """Run one part of the bench at its tiny sizes: what it wrote for that part, and its log."""
    lines: list[str] = []
    _, path = run_bench(
        setups or [],
        TINY,
        results_dir=tmp_path,
        log=lines.append,
        parts=[part],
        part_sizes=TINY_PARTS,
    )
    return json.loads(path.read_text())[part], lines


def test_bench_reports_every_measure_on_redis(tmp_path: Path) -> None:
    lines: list[str] = []

    report, path = run_bench(["redis"], TINY, results_dir=tmp_path, log=lines.append)

    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(report))
    assert {"date", "machine", "versions", "setups", "seconds"} <= set(written)
    assert written["machine"]["nproc"] > 0
    assert written["versions"]["celery"]
    redis = check_setup(written, "redis", lines)
    assert set(redis["measures"]) >= ONCE
    assert redis["sizes"]["pairs"] == TINY.pairs
    assert redis["acks_late"] == {"bare": False, "ergate": True}
    assert "hop_latency_ms" in table(written)


def test_one_slot_setup_acknowledges_late_on_both_sides(tmp_path: Path) -> None:
    lines: list[str] = []

    _, path = run_bench(["redis_c1"], TINY_PAIRED, results_dir=tmp_path, log=lines.append)

    outcome = check_setup(json.loads(path.read_text()), "redis_c1", lines)
    assert outcome["acks_late"] == {"bare": True, "ergate": True}
    assert outcome["worker"].endswith("-c 1 --prefetch-multiplier 1")


def test_bench_on_rabbitmq_and_postgresql_sets_submit_against_an_insert(
    tmp_path: Path,
    rabbitmq_service: RabbitMQService,
    postgres_service: PostgresService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schema = f"{postgres_service.schema}_bench"
    monkeypatch.setenv("ERGATE_BENCH_RABBITMQ_URL", rabbitmq_service.url)
    monkeypatch.setenv("ERGATE_BENCH_POSTGRES_SCHEMA", schema)
    monkeypatch.setattr(apps, "RABBITMQ_URL", rabbitmq_service.url)
    monkeypatch.setattr(apps, "POSTGRES_SCHEMA", schema)
    lines: list[str] = []

    _, path = run_bench(["rabbitmq_postgres"], TINY_PAIRED, results_dir=tmp_path, log=lines.append)

    outcome = check_setup(json.loads(path.read_text()), "rabbitmq_postgres", lines)
    floor = outcome["measures"][FLOOR]
    by_pair = zip(
        floor["detail"]["insert_p50_by_pair"],
        floor["detail"]["delay_p50_by_pair"],
        floor["detail"]["bare_by_pair"],
        strict=True,
    )
    for insert, delay, both in by_pair:
        assert insert > 0
        assert delay > 0
        assert both == pytest.approx(insert + delay)


def test_bench_runs_the_django_store_on_postgresql(
    tmp_path: Path,
    redis_service: RedisService,
    rabbitmq_service: RabbitMQService,
    postgres_service: PostgresService,
) -> None:
    """In a process of its own: this one may have configured Django for other tests."""
    env = {
        **os.environ,
        "ERGATE_BENCH_REDIS_URL": redis_service.url,
        "ERGATE_BENCH_RABBITMQ_URL": rabbitmq_service.url,
        "ERGATE_BENCH_POSTGRES_SCHEMA": f"{postgres_service.schema}_bench",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    command = [sys.executable, "-m", "bench.run", "--tiny", "--setups", "django_db"]
    finished = subprocess.run(
        [*command, "--only", "compare", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert finished.returncode == 0, finished.stdout + finished.stderr
    (path,) = tmp_path.glob("*.json")
    outcome = check_setup(json.loads(path.read_text()), "django_db", [finished.stdout])
    assert "django-db" in outcome["broker_and_backend"]
    assert "django_db: RabbitMQ / django-db" in finished.stdout


def test_bench_runs_on_the_embedded_broker(tmp_path: Path) -> None:
    lines: list[str] = []

    _, path = run_bench(["embedded"], TINY_PAIRED, results_dir=tmp_path, log=lines.append)

    check_setup(json.loads(path.read_text()), "embedded", lines)


def test_nodes_bench_reports_throughput_and_cpu_per_component(tmp_path: Path) -> None:
    written, lines = run_part("nodes", tmp_path)
    assert written["errors"] == {}, lines
    runs = written["runs"]
    assert [(run["nodes"], run["side"]) for run in runs] == [
        (1, "ergate"),
        (1, "bare"),
        (2, "bare"),
        (2, "ergate"),
    ]
    for run in runs:
        assert run["steps_per_s"] > 0
        assert set(run["cpu_seconds"]) == {
            "workers",
            "harness",
            "redis-server",
            "postgres",
            "rabbitmq",
            "others",
            "machine",
        }
        assert run["cpu_seconds"]["workers"] > 0, run
        assert run["saturated"] in run["utilisation"]
    assert "saturated" in nodes.table(written)


def test_job_length_bench_compares_long_and_short_jobs(tmp_path: Path) -> None:
    written, lines = run_part("length", tmp_path)
    assert set(written["backends"]) == set(job_length.SETUPS)
    for measured in written["backends"].values():
        assert measured["status"] == "ran", lines
        assert measured["steps"] == {"short": 5, "long": 100}
        assert set(measured["ms_per_step_median"]) == {
            "ergate_short",
            "ergate_long",
            "bare_short",
            "bare_long",
        }
        assert all(value > 0 for value in measured["ms_per_step_median"].values())
        assert measured["long_over_short"]["ergate"]["median"] > 0
    assert "100 steps" in job_length.table(written)


def test_listing_bench_times_every_query_on_redis(tmp_path: Path) -> None:
    written, lines = run_part("listing", tmp_path, ["redis"])
    redis = written["backends"]["redis"]
    assert redis["status"] == "ran", lines
    assert set(redis["pages"]) == set(listing.QUERIES)
    for by_count in redis["pages"].values():
        assert set(by_count) == {str(count) for count in listing.TINY.counts}
        for measured in by_count.values():
            assert measured["median_ms"] > 0
            assert measured["jobs_per_page"] == listing.TINY.limit
    assert "tag shard=3" in listing.table(written)


def test_waiting_bench_measures_release_and_lateness(tmp_path: Path) -> None:
    written, lines = run_part("waiting", tmp_path)
    assert written["errors"] == {}, lines
    assert written["measures"]["release"]["jobs_per_s"] > 0
    lateness = written["measures"]["lateness"]
    assert lateness["jobs"] == waiting.TINY.sleepers
    assert lateness["early"] == 0
    assert "claim p99" in waiting.table(written)


def test_scale_bench_draws_every_measure_on_redis(tmp_path: Path) -> None:
    written, lines = run_part("scale", tmp_path)
    assert set(written["backends"]) == {"redis"}
    redis = written["backends"]["redis"]
    assert redis["status"] == "ran", lines
    assert set(redis["measures"]) == set(scale.MEASURES)
    for by_count in redis["measures"].values():
        assert set(by_count) == {str(count) for count in scale.TINY.redis}
        assert all(value > 0 for value in by_count.values())
    chart = tmp_path / "scale.png"
    assert written["chart"] == str(chart)
    assert chart.read_bytes().startswith(b"\x89PNG")
    printed = scale.table(written)
    assert "recover_stuck_jobs run" in printed
    assert "1,000" in printed


def test_dbos_peer_reports_both_measures_on_both_setups_and_drops_its_schemas(
    tmp_path: Path,
    rabbitmq_service: RabbitMQService,
    postgres_service: PostgresService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schema = f"{postgres_service.schema}_bench"
    monkeypatch.setenv("ERGATE_BENCH_RABBITMQ_URL", rabbitmq_service.url)
    monkeypatch.setenv("ERGATE_BENCH_POSTGRES_SCHEMA", schema)
    monkeypatch.setattr(apps, "RABBITMQ_URL", rabbitmq_service.url)
    monkeypatch.setattr(apps, "POSTGRES_SCHEMA", schema)

    written, lines = run_part("dbos", tmp_path)

    assert written["status"] == "ran", lines
    assert written["errors"] == {}, lines
    assert set(written["measures"]) == set(dbos_peer.MEASURES)
    for by_setup in written["measures"].values():
        assert set(by_setup) == set(dbos_peer.ERGATE_SETUPS)
        for measured in by_setup.values():
            for side in ("dbos", "ergate", "ratio"):
                assert measured[side] > 0, measured
            assert measured["pairs"] == dbos_peer.TINY.pairs
            assert len(measured["detail"]["dbos_by_pair"]) == dbos_peer.TINY.pairs
    assert written["schemas"]["dbos"].startswith(schema)
    assert "ergate ÷ DBOS" in dbos_peer.table(written)
    import sqlalchemy as sa

    engine = sa.create_engine(apps.POSTGRES_URL)
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT nspname FROM pg_namespace WHERE nspname = ANY(:names)"),
            {"names": list(written["schemas"].values())},
        ).all()
    engine.dispose()
    assert left == []


def test_pg_trace_is_read_back_into_round_trips() -> None:
    from bench.pgtrace import parse

    trace = [
        '2026-12-03 01:00:00.000000\tF\t10\tQuery\t "BEGIN"\n',
        '2026-12-03 01:00:00.000100\tB\t10\tCommandComplete\t "BEGIN"\n',
        "2026-12-03 01:00:00.000200\tB\t5\tReadyForQuery\t T\n",
        '2026-12-03 01:00:00.001000\tF\t60\tParse\t "_pg3_0" "UPDATE "s"."t"\n',
        'SET a = $1" 1 25\n',
        '2026-12-03 01:00:00.001001\tF\t30\tBind\t "" "_pg3_0" 1 1 1 1 \'x\' 1 0\n',
        '2026-12-03 01:00:00.001002\tF\t9\tExecute\t "" 0\n',
        "2026-12-03 01:00:00.001003\tF\t4\tSync\n",
        "2026-12-03 01:00:00.003003\tB\t5\tReadyForQuery\t T\n",
        '2026-12-03 01:00:00.004000\tF\t30\tBind\t "" "_pg3_0" 1 1 1 1 \'y\' 1 0\n',
        '2026-12-03 01:00:00.004001\tF\t9\tExecute\t "" 0\n',
        "2026-12-03 01:00:00.004002\tF\t4\tSync\n",
        "2026-12-03 01:00:00.005002\tB\t5\tReadyForQuery\t T\n",
    ]

    trips = parse(trace)

    assert [trip.statements for trip in trips] == [
        ["BEGIN"],
        ['UPDATE "s"."t"\nSET a = $1'],
        ['UPDATE "s"."t"\nSET a = $1'],
    ]
    assert [trip.prepared for trip in trips] == [0, 1, 0]
    assert [trip.first_of_connection for trip in trips] == [True, False, False]
    assert [round(trip.server_s * 1000, 3) for trip in trips] == [0.2, 2.0, 1.0]
    assert trips[1].parse_bytes == 61
    assert trips[2].bind_bytes == 31
    assert trips[2].bytes_sent == 31 + 10 + 5


def test_fan_out_bench_sets_children_beside_a_chord_on_redis(tmp_path: Path) -> None:
    lines: list[str] = []
    written = fan_out.run_fan_out(
        fan_out.TINY, lambda setup: None if setup == "redis" else "not in this test", lines.append
    )
    redis = written["backends"]["redis"]
    assert redis["status"] == "ok", (redis, lines)
    assert set(redis["widths"]) == {str(width) for width in fan_out.TINY.widths}
    for row in redis["widths"].values():
        for side in ("ergate", "chord"):
            assert row[side]["created_per_s"] > 0
            assert row[side]["last_end_to_join_s"] >= 0
    assert written["backends"]["rabbitmq_postgres"]["status"] == "skipped"
    assert "created/s" in fan_out.table(written)
