"""A process that has done the imports of the `celery` command once, and runs each command
a test asks for in a fork of itself: `python -m celery -A <app> <args>` without paying the
second or so of CPU its start-up imports cost each time (tests/forks.py talks to it).

What runs in the fork is what `python -m celery` runs: `celery.__main__.main()` with the
same argv, environment, working folder and standard streams (passed over the socket as
descriptors). Only the imports `celery.__main__` does before it reads its arguments happen
earlier (celery's, and each `celery.commands` plugin's, as in a fresh process); the app
(`-A`) is imported in the fork, from nothing.

Protocol, over the SOCK_SEQPACKET socket whose descriptor is the one argument: a request is
one JSON message (argv, env, cwd) with three descriptors (stdin, stdout, stderr); the answers
are the fork's pid, then its exit code, a JSON message each.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys

import celery.__main__

# The imports a fresh `celery` does before main() reads its arguments, plugins included.
import celery.bin.celery

logger = logging.getLogger(__name__)

#: The largest request: the hostile-input tests pass arguments of 60 kB.
REQUEST_BYTES = 1 << 20


def _run(request: dict[str, object], fds: list[int]) -> None:
    """In the fork: become `python -m celery <args>` and exit with its code."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])  # type: ignore[arg-type]
    os.chdir(str(request["cwd"]))
    sys.argv = [celery.__main__.__file__, *request["argv"]]  # type: ignore[misc]
    code = 1
    try:
        celery.__main__.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        logger.exception("the forked celery command raised")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(channel: socket.socket) -> None:
    """Run the commands `channel` asks for, one at a time, until it closes."""
    while True:
        line, fds, _, _ = socket.recv_fds(channel, REQUEST_BYTES, 3)
        if not line:
            return
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            channel.close()
            _run(request, fds)
        for fd in fds:
            os.close(fd)
        channel.send(json.dumps(pid).encode())
        _, status = os.waitpid(pid, 0)
        channel.send(json.dumps(os.waitstatus_to_exitcode(status)).encode())


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
