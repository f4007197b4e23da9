"""Every module logs to its own logger under `ergate_celery` (`logging.getLogger(__name__)`),
so a deployment can tune one part (`ergate_celery.worker.step_body`) or all of it at once."""

import ast
import importlib
import logging
from pathlib import Path

import pytest

import ergate_celery

PACKAGE = Path(ergate_celery.__file__).parent


def _modules_that_log() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if is_call and node.func.attr == "getLogger":  # type: ignore[union-attr]
                parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
                found.append(".".join(parts))
                break
    return found


def test_modules_log_to_a_logger_of_their_own_name() -> None:
    modules = _modules_that_log()
    assert "ergate_celery.worker.step_body" in modules
    for name in modules:
        if name.startswith("ergate_celery.contrib.django."):
            continue  # needs a configured Django to import
        module = importlib.import_module(name)
        logger = getattr(module, "logger", None)
        assert isinstance(logger, logging.Logger), name
        assert logger.name == name, f"{name} logs to {logger.name!r}"


@pytest.mark.parametrize("part", ["worker.step_body", "scheduling.overdue", "worker.announcer"])
def test_the_package_logger_governs_every_part(part: str) -> None:
    package = logging.getLogger("ergate_celery")
    before = package.level
    try:
        package.setLevel(logging.ERROR)
        assert logging.getLogger(f"ergate_celery.{part}").getEffectiveLevel() == logging.ERROR
    finally:
        package.setLevel(before)
