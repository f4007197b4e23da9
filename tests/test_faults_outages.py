"""Fault tests: the Redis server restarts in the middle of a job, which completes."""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen, TimeoutExpired
from typing import Any

import pytest
from celery import Celery

from ergate_celery import ErgateCelery, Job, JobStatus

from .apps import fault_app
from .faults import FAST_REDIS_REDELIVERY, _runs, _step_counts, _Supervisor
from .services import services_required
from .support import Setup, wait_until

# 3. The Redis server restarts in the middle of a job ---------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class _RedisServer:
    """A private redis-server on loopback that keeps its data across restarts (AOF)."""

    def __init__(self, binary: str, port: int, folder: Path) -> None:
        self.binary, self.port, self.folder = binary, port, folder
        self.process: Popen[bytes] | None = None
        folder.mkdir(exist_ok=True)

    def start(self) -> None:
        log = self.folder / f"redis-{time.monotonic_ns()}.log"
        with log.open("wb") as out:
            self.process = Popen(
                [
                    *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--daemonize", "no", "--save", "", "--dir", str(self.folder)),
                    *("--appendonly", "yes", "--appendfsync", "always"),
                ],
                stdin=DEVNULL,
                stdout=out,
                stderr=STDOUT,
            )
        process = self.process
        wait_until(lambda: process.poll() is not None or _redis_ping(self.port), 20, what="redis")
        assert process.poll() is None, log.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM: Redis writes its append-only file and exits."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed; the Redis restart test starts its own server"
        if services_required():
            pytest.fail(f"ERGATE_REQUIRE_SERVICES is set and {message}")
        pytest.skip(message)
    return binary


def test_redis_restart_mid_job_completes(tmp_path: Path) -> None:
    binary = _redis_binary()
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    conf: dict[str, Any] = {
        "task_default_queue": f"ergate-test-{uuid.uuid4().hex[:12]}",
        "broker_connection_retry_on_startup": False,
        "result_extended": True,
        "worker_hijack_root_logger": False,
        "ergate_index_name": "ergate-tests",
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": FAST_REDIS_REDELIVERY,
        # Enough after-step tries (0.25 s, 0.5 s, 1 s, ... apart) to outlast the outage.
        "ergate_after_step_attempts": 10,
    }
    app = Celery("test_redis_restart", set_as_current=True)
    app.conf.update(conf)
    setup = Setup("own_redis", app, ErgateCelery(app), conf, tmp_path)
    setup.ergate.register_workflow(fault_app.outage)
    server = _RedisServer(binary, port, tmp_path / "redis-data")
    try:
        server.start()
        job = setup.ergate.submit_job("fault_outage", initial_input_value=[])
        job_id = str(job.id)
        gate = tmp_path / "outage-gate"
        supervisor = _Supervisor(setup, "outage", env={"ERGATE_FAULT_OUTAGE_GATE": str(gate)})
        try:
            supervisor.ensure()
            wait_until(lambda: _runs(setup, job_id, "outage_2"), what="step 3 started")
            # Redis stops while step 3 runs, and step 3 ends while it is down: storing its
            # outcome and publishing step 4 must wait for the server to return.
            server.stop()
            gate.touch()
            time.sleep(1.5)
            server.start()
            done = _wait_for_job_through_outages(setup.ergate, job_id, supervisor)
        finally:
            supervisor.close()
    finally:
        server.stop()
        app.close()
    # kombu 5.7's Redis transport may crash the worker's main process when the connection
    # drops while it holds an unacknowledged message (AttributeError in restore_unacked);
    # the supervisor then started a new worker, as a production supervisor would.
    print(f"worker restarts after the Redis restart: {supervisor.restarts}")
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.last_return_value == [f"outage_{i}" for i in range(5)]
    counts = _step_counts(setup, job_id)
    assert set(counts) == {f"outage_{i}" for i in range(5)}
    # Steps before the outage ran once; the one it hit may rerun; the later ones ran once.
    assert (counts["outage_0"], counts["outage_1"]) == (1, 1)
    assert counts["outage_2"] >= 1
    assert (counts["outage_3"], counts["outage_4"]) == (1, 1)


def _wait_for_job_through_outages(
    ergate: ErgateCelery, job_id: str, supervisor: _Supervisor
) -> Job:
    def final() -> Job | None:
        supervisor.ensure()
        try:
            job = ergate.get_job(job_id)
        except Exception:  # the server is still coming back
            return None
        return job if job.is_final else None

    return wait_until(final, what=f"job {job_id} final")
