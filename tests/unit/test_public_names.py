"""The public names: every one in `ergate_celery.__all__` imports from the package, and every
exception the package raises to users lives in `ergate_celery.exceptions` and is public."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

import click
import pytest

import ergate_celery
from ergate_celery import exceptions

#: Modules that need a configured Django to import; they define no exception (checked by
#: reading their source below).
_NEEDS_DJANGO = "ergate_celery.contrib.django."


def _package_modules() -> list[ModuleType]:
    found = []
    for info in pkgutil.walk_packages(ergate_celery.__path__, "ergate_celery."):
        if info.name.startswith(_NEEDS_DJANGO) and not info.name.endswith(".apps"):
            continue
        found.append(importlib.import_module(info.name))
    return found


@pytest.mark.parametrize("name", sorted(ergate_celery.__all__))
def test_every_public_name_imports_from_the_package(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from ergate_celery import {name}", namespace)
    assert namespace[name] is getattr(ergate_celery, name)


def test_every_exception_class_lives_in_exceptions_and_is_public() -> None:
    elsewhere = []
    for module in _package_modules():
        for name, value in vars(module).items():
            defined_here = issubclass(type(value), type) and value.__module__ == module.__name__
            # A click exception is the CLI's exit code, handled by click; no user catches it.
            if (
                defined_here
                and issubclass(value, BaseException)
                and not issubclass(value, click.ClickException)
                and module is not exceptions
            ):
                elsewhere.append(f"{module.__name__}.{name}")
    assert elsewhere == []
    raised = [
        name
        for name, value in vars(exceptions).items()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == exceptions.__name__
    ]
    assert sorted(set(raised) - set(exceptions.__all__)) == []
    assert sorted(set(raised) - set(ergate_celery.__all__)) == []


def test_the_django_modules_define_no_exception() -> None:
    folder = Path(ergate_celery.__file__).parent / "contrib" / "django"
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(base) for base in node.bases]
                assert not any(b.endswith(("Error", "Exception")) for b in bases), (path, bases)
