"""The README's five-minute tutorial, run as written (the docs site shows the same section).

The tutorial's marked blocks are the project: `<!-- layout -->` lists the files, each
`<!-- file: PATH -->` block is one of them, `<!-- commands -->` holds the commands of step 3
and `<!-- output: COMMAND -->` what step 4 prints. The files go into an empty folder; the
commands run from there with the venv's `celery` script, as a user runs them, on the tests'
Redis database of the run (`REDIS_URL`, which the tutorial's app module reads).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from .services import RedisService
from .support import run_captured, user_env

README = Path(__file__).resolve().parent.parent / "README.md"
BIN = Path(sys.executable).parent
MARKED_BLOCK = re.compile(
    r"<!-- (?P<kind>layout|file|commands|output)(?:: (?P<name>[^>]+?))? -->\n"
    r"```[^\n]*\n(?P<body>.*?)^```",
    re.DOTALL | re.MULTILINE,
)
WAIT = 60.0


def tutorial_blocks() -> dict[tuple[str, str], str]:
    """The marked code blocks of the tutorial, by (kind, name)."""
    text = README.read_text()
    start = text.index("## Five-minute tutorial")
    section = text[start : text.index("\n## ", start)]
    blocks: dict[tuple[str, str], str] = {}
    for match in MARKED_BLOCK.finditer(section):
        key = (match["kind"], match["name"] or "")
        assert key not in blocks, f"two README blocks are marked {key}"
        blocks[key] = match["body"]
    return blocks


def write_project(folder: Path, blocks: dict[tuple[str, str], str]) -> None:
    """The files the layout lists: the marked file blocks, and the empty ones."""
    files = {name: body for (kind, name), body in blocks.items() if kind == "file"}
    listed = []
    for line in blocks[("layout", "")].splitlines():
        path, description = line.split(maxsplit=1)
        listed.append(path)
        if description == "(empty)":
            files[path] = ""
    assert sorted(listed) == sorted(files), "the layout and the file blocks disagree"
    for path, body in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(body)


def command(line: str) -> list[str]:
    """A README command line with its program taken from this venv (`celery`, `python`)."""
    program, *args = shlex.split(line)
    return [str(BIN / program), *args]


def run_to_end(line: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command from `folder` until it ends, its output captured."""
    return run_captured(command(line), folder, env)


def wait_for_log(log: Path, text: str) -> None:
    """Wait until `text` appears in the log of a command; fail with the log otherwise."""
    deadline = time.monotonic() + WAIT
    while text not in log.read_text():
        if time.monotonic() > deadline:
            pytest.fail(f"{log.name} never said {text!r}:\n{log.read_text()}")
        time.sleep(0.2)


@contextmanager
def running(line: str, folder: Path, env: dict[str, str], log: Path) -> Iterator[Path]:
    """Run a README command from `folder` until the block ends; yields its log file."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command(line), cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield log
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def redis_db(redis_service: RedisService) -> Iterator[str]:
    """This run's own Redis database, empty before and after."""
    redis_service.flush()
    yield redis_service.url
    redis_service.flush()


def test_readme_tutorial_runs_as_written(tmp_path: Path, redis_db: str) -> None:
    blocks = tutorial_blocks()
    project = tmp_path / "shop"
    project.mkdir()
    write_project(project, blocks)
    env = {**user_env(), "REDIS_URL": redis_db}  # the commands run from the project folder
    commands: dict[str, str] = {}  # "worker": "celery -A proj worker ...", "beat": ...
    for line in blocks[("commands", "")].splitlines():
        program, option, module, role, *_ = shlex.split(line)
        assert (program, option, module) == ("celery", "-A", "proj"), line
        commands[role] = line
    assert sorted(commands) == ["beat", "worker"]
    [(run_line, expected)] = [
        (name, body) for (kind, name), body in blocks.items() if kind == "output"
    ]

    with ExitStack() as stack:
        logs = {
            role: stack.enter_context(running(line, project, env, tmp_path / f"{role}.log"))
            for role, line in commands.items()
        }
        wait_for_log(logs["worker"], " ready.")
        wait_for_log(logs["beat"], "beat: Starting")

        result = run_to_end(run_line, project, env)
        worker_log = logs["worker"].read_text()
    assert result.returncode == 0, result.stderr + worker_log
    assert result.stdout == expected
    for step in ("validate", "charge", "ship", "refund"):
        assert f"  . ergate.process_order.{step}\n" in worker_log  # listed under [tasks]
