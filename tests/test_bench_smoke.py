"""The benchmark harness runs end to end on Redis with tiny sizes and reports every measure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import apps, listing, scale, waiting
from bench.measures import Sizes
from bench.run import PartSizes, run_bench, table

from .services import RedisService

TINY = Sizes(latency_runs=1, throughput_jobs=4, submit_calls=4, warmup=1, timeout=60.0)

TINY_PARTS = PartSizes(listing=listing.TINY, waiting=waiting.TINY, scale=scale.TINY)

MEASURES = {
    "hop_latency_ms",
    "throughput_steps_per_s",
    "submit_p50_ms",
    "submit_p99_ms",
    "bytes_per_hop_small",
    "bytes_per_hop_10kB",
    "worker_rss_mib",
}


@pytest.fixture(autouse=True)
def bench_redis(redis_service: RedisService, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benches on this run's Redis database, not the bench's own db 12: two test runs at
    once must not share it. Worker subprocesses read it from the environment."""
    monkeypatch.setenv("ERGATE_BENCH_REDIS_URL", redis_service.url)
    for module in (apps, listing, waiting):
        monkeypatch.setattr(module, "REDIS_URL", redis_service.url)


def test_bench_reports_every_measure_on_redis(tmp_path: Path) -> None:
    lines: list[str] = []

    report, path = run_bench(["redis"], TINY, results_dir=tmp_path, log=lines.append)

    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(report))
    assert {"date", "machine", "versions", "sizes", "setups"} <= set(written)
    assert written["machine"]["nproc"] > 0
    assert written["versions"]["celery"]
    redis = written["setups"]["redis"]
    assert redis["status"] == "ran", lines
    assert redis["errors"] == {}, redis["errors"]
    assert set(redis["measures"]) == MEASURES
    for name, measure in redis["measures"].items():
        for side in ("bare", "ergate", "ratio"):
            assert measure[side] > 0, (name, side, measure)
    assert "hop_latency_ms" in table(written)


def test_listing_bench_times_every_query_on_redis(tmp_path: Path) -> None:
    lines: list[str] = []

    _, path = run_bench(
        ["redis"],
        TINY,
        results_dir=tmp_path,
        log=lines.append,
        parts=["listing"],
        part_sizes=TINY_PARTS,
    )

    written = json.loads(path.read_text())["listing"]
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
    lines: list[str] = []

    _, path = run_bench(
        [],
        TINY,
        results_dir=tmp_path,
        log=lines.append,
        parts=["waiting"],
        part_sizes=TINY_PARTS,
    )

    written = json.loads(path.read_text())["waiting"]
    assert written["errors"] == {}, lines
    assert written["measures"]["release"]["jobs_per_s"] > 0
    lateness = written["measures"]["lateness"]
    assert lateness["jobs"] == waiting.TINY.sleepers
    assert lateness["early"] == 0
    assert "claim p99" in waiting.table(written)


def test_scale_bench_draws_every_measure_on_redis(tmp_path: Path) -> None:
    lines: list[str] = []

    _, path = run_bench(
        [], TINY, results_dir=tmp_path, log=lines.append, parts=["scale"], part_sizes=TINY_PARTS
    )

    written = json.loads(path.read_text())["scale"]
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
