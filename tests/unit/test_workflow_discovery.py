"""`autodiscover_workflows` in a project folder, as the README's tutorial lays it out.

The `celery` script puts the current folder on `sys.path` only while it imports the app, so
workflow modules next to the app are imported with that folder on the path, when the worker
imports its modules, and an import error stops the worker there, as Celery's
`autodiscover_tasks` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery, current_app

from ergate_celery import ErgateCelery, UnknownWorkflowError, submit_job
from ergate_celery.exceptions import ErgateError

from ..support import run_captured

CELERY_SCRIPT = Path(sys.executable).parent / "celery"

WORKFLOWS = """
from ergate_celery import Workflow

workflow = Workflow(unique_name="{name}")


@workflow.step
def only(value: int) -> int:
    return value + 1
"""

APP = """
from celery import Celery
from ergate_celery import ErgateCelery

app = Celery("proj", broker="memory://", backend="cache+memory://")
ergate = ErgateCelery(app)
ergate.autodiscover_workflows({packages!r})
"""


def write_package(folder: Path, name: str, workflows: str | None) -> None:
    """A package `name` in `folder`, with `workflows` as its workflows.py (None: no module)."""
    (folder / name).mkdir()
    (folder / name / "__init__.py").write_text("")
    if workflows is not None:
        (folder / name / "workflows.py").write_text(textwrap.dedent(workflows))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder, the current folder of the test, and not on `sys.path`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    return tmp_path


@pytest.fixture
def ergate() -> Iterator[ErgateCelery]:
    app = Celery("discovery", set_as_current=False)
    yield ErgateCelery(app)
    app.close()


def unique(prefix: str) -> str:
    """A package name no other test imported (modules stay in `sys.modules`)."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def discover_a_workflow(project: Path, ergate: ErgateCelery, *packages: str) -> str:
    """Write a package with a workflows module; autodiscover `packages`, then it. Its workflow's
    name."""
    package, name = unique("orders"), unique("flow")
    write_package(project, package, WORKFLOWS.format(name=name))
    ergate.autodiscover_workflows([*packages, package])
    return name


def test_workflows_next_to_the_app_are_found_when_the_worker_imports_its_modules(
    project: Path, ergate: ErgateCelery
) -> None:
    name = discover_a_workflow(project, ergate)

    ergate.app.loader.init_worker()

    assert name in ergate.workflows
    assert f"ergate.{name}.only" in ergate.app.tasks
    assert str(project) not in sys.path  # the folder is on the path only while importing


def test_workflows_are_found_at_the_first_lookup_outside_a_worker(
    project: Path, ergate: ErgateCelery
) -> None:
    name = discover_a_workflow(project, ergate)

    assert ergate.workflow(name).unique_name == name


def test_package_without_workflows_module_is_skipped(project: Path, ergate: ErgateCelery) -> None:
    plain = unique("plain")
    write_package(project, plain, None)
    name = discover_a_workflow(project, ergate, plain)

    ergate.app.loader.init_worker()

    assert name in ergate.workflows


def test_import_error_inside_workflows_module_stops_the_worker_start(
    project: Path, ergate: ErgateCelery
) -> None:
    package = unique("broken")
    write_package(project, package, "import no_such_dependency_of_the_workflows\n")
    ergate.autodiscover_workflows([package])

    with pytest.raises(ModuleNotFoundError) as raised:
        ergate.app.loader.init_worker()
    assert raised.value.name == "no_such_dependency_of_the_workflows"

    # Not "no workflow registered": every later lookup raises the import error again.
    with pytest.raises(ModuleNotFoundError):
        ergate.workflow("anything")


def test_missing_package_is_an_import_error(project: Path, ergate: ErgateCelery) -> None:
    package = unique("absent")
    ergate.autodiscover_workflows([package])

    with pytest.raises(ModuleNotFoundError) as raised:
        ergate.app.loader.init_worker()
    assert raised.value.name == package


def run_celery(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`celery -A proj <args>` from `folder` with the venv's script, as a user runs it."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return run_captured([str(CELERY_SCRIPT), "-A", "proj", *args], folder, env)


def write_project(folder: Path, workflows: str) -> None:
    """`proj/celery.py` on an in-memory broker, and `orders/workflows.py`."""
    write_package(folder, "proj", None)
    (folder / "proj" / "celery.py").write_text(textwrap.dedent(APP.format(packages=["orders"])))
    write_package(folder, "orders", workflows)


def test_worker_with_broken_workflows_module_exits_at_start_with_the_import_error(
    tmp_path: Path,
) -> None:
    write_project(tmp_path, "import no_such_dependency_of_the_workflows\n")

    result = run_celery(tmp_path, "worker", "--pool", "solo", "-l", "INFO")

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "No module named 'no_such_dependency_of_the_workflows'" in output
    assert "ready." not in output


def test_graph_command_finds_workflows_from_the_project_folder(tmp_path: Path) -> None:
    write_project(tmp_path, WORKFLOWS.format(name="process_order"))

    result = run_celery(tmp_path, "ergate", "graph", "process_order")

    assert result.returncode == 0, result.stderr
    assert 's0["only"]' in result.stdout


def test_module_level_call_without_the_app_module_says_to_import_it() -> None:
    previous = current_app._get_current_object()
    lonely = Celery("lonely")  # current now, as an app is when no app module was imported
    try:
        with pytest.raises(ErgateError) as raised:
            submit_job("process_order")
    finally:
        previous.set_current()
        lonely.close()

    message = str(raised.value)
    assert "Celery's current app 'lonely' has no ErgateCelery" in message
    assert "Import the module that creates your Celery app" in message
    assert "import proj.celery" in message


DJANGO_SCRIPT = """
import django
from django.conf import settings

settings.configure(INSTALLED_APPS={installed!r})
django.setup()

from celery import Celery
from ergate_celery import ErgateCelery, UnknownWorkflowError

ergate = ErgateCelery(Celery("proj"))
try:
    ergate.workflow("process_order")
except UnknownWorkflowError as exc:
    print(exc)
"""


@pytest.mark.parametrize("installed", [False, True])
def test_unknown_workflow_under_django_names_the_missing_installed_app(
    tmp_path: Path, installed: bool
) -> None:
    pytest.importorskip("django")
    apps = ["django.contrib.contenttypes", "django_celery_results"]
    if installed:
        apps.append("ergate_celery.contrib.django")
    script = DJANGO_SCRIPT.format(installed=apps)
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}

    result = run_captured([sys.executable, "-c", script], tmp_path, env)
    assert result.returncode == 0, result.stderr

    assert "No workflow named 'process_order' is registered" in result.stdout
    mentions = "'ergate_celery.contrib.django' is not in INSTALLED_APPS" in result.stdout
    assert mentions is not installed, result.stdout


def test_unknown_workflow_error_says_how_to_register(
    ergate: ErgateCelery,
) -> None:
    with pytest.raises(UnknownWorkflowError, match="register_workflow"):
        ergate.workflow("process_order")
