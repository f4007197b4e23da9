"""One-shot `celery` commands (`celery -A <app> ergate list`, ...) run in forks of a process
that did the `celery` command's start-up imports once (tests/apps/celery_fork_server.py).

A fresh `python -m celery` spends a second or more of CPU on imports before it reads its
arguments (celery, kombu, click-repl, and each `celery.commands` plugin: ours, Flower's); the
suite runs dozens of them on two cores. The fork runs the same `celery.__main__.main()` with
the same argv, environment, folder and standard streams, and imports the app (`-A`) itself.
Long-lived workers and beats, and commands that need a terminal, still start as processes of
their own (`Setup.celery`, `Popen`), so the installed command is exercised from scratch too.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from subprocess import DEVNULL, CompletedProcess, Popen, TimeoutExpired, run

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


class _Server:
    """The fork server of this pytest process, started at its first command."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process: Popen[bytes] | None = None
        self.channel: socket.socket | None = None
        self.env: dict[str, str] = {}

    def start(self) -> socket.socket:
        if self.channel is not None and self.process is not None and self.process.poll() is None:
            return self.channel
        self.stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = Popen(
            [sys.executable, "-m", "tests.apps.celery_fork_server", str(theirs.fileno())],
            cwd=ROOT,
            env=self.env,
            stdin=DEVNULL,
            stdout=DEVNULL,
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        self.channel = ours
        return ours

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def serves(self, cwd: Path, env: Mapping[str, str]) -> bool:
        """Whether a fork would start as `python -m celery` with `env` in `cwd` would: the
        variables Python reads at its start (PYTHON*) are the server's."""

        def startup(variables: Mapping[str, str]) -> dict[str, str]:
            return {k: v for k, v in variables.items() if k.startswith("PYTHON")}

        expected = {**os.environ, "PYTHONPATH": str(ROOT)}
        return cwd == ROOT and startup(env) == startup(self.env or expected)


_SERVER = _Server()
atexit.register(_SERVER.stop)


def run_celery_command(
    args: list[str], cwd: Path, env: Mapping[str, str], timeout: float
) -> CompletedProcess[str]:
    """`python -m celery <args>` to its end, output captured as text, as `subprocess.run`
    would give it; in a fork of the server when it can start as a fresh process would."""
    if not _SERVER.serves(cwd, env):
        command = [sys.executable, "-m", "celery", *args]
        return run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    with _SERVER.lock:
        channel = _SERVER.start()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            request = {"argv": args, "env": dict(env), "cwd": str(cwd)}
            socket.send_fds(channel, [json.dumps(request).encode()], [_stdin(), out_w, err_w])
        finally:
            os.close(out_w)
            os.close(err_w)
        pid = _answer(channel)
        try:
            stdout, stderr = _drain(out_r, err_r, time.monotonic() + timeout)
        except TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
            _answer(channel)
            raise TimeoutExpired(["celery", *args], timeout) from None
        code = _answer(channel)
    return CompletedProcess(["celery", *args], code, _text(stdout), _text(stderr))


def _answer(channel: socket.socket) -> int:
    answer = channel.recv(64)
    if not answer:
        _SERVER.stop()
        raise RuntimeError("the celery fork server exited (tests/apps/celery_fork_server.py)")
    return int(json.loads(answer))


def _drain(out: int, err: int, deadline: float) -> tuple[bytes, bytes]:
    """Read both pipes to their end (closing them)."""
    chunks: dict[int, list[bytes]] = {out: [], err: []}
    with selectors.DefaultSelector() as selector:
        for fd in chunks:
            selector.register(fd, selectors.EVENT_READ)
        try:
            while selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutExpired("celery", 0)
                for key, _ in selector.select(min(left, 1.0)):
                    data = os.read(key.fd, 65536)
                    if data:
                        chunks[key.fd].append(data)
                    else:
                        selector.unregister(key.fd)
        finally:
            os.close(out)
            os.close(err)
    return b"".join(chunks[out]), b"".join(chunks[err])


def _stdin() -> int:
    """This process's standard input, which `subprocess.run` would hand down."""
    try:
        os.fstat(0)
    except OSError:
        return os.open(os.devnull, os.O_RDONLY)  # left open: one per process at most
    return 0


def _text(data: bytes) -> str:
    # As `subprocess.run(text=True)` reads it: the locale's encoding, universal newlines.
    return data.decode().replace("\r\n", "\n").replace("\r", "\n")
