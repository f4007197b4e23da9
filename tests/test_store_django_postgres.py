"""The django-db store on PostgreSQL: each write of a job is one statement, and it writes the
rows the ORM writes (the path of every other database). Django on PostgreSQL runs in a process
of its own (tests/django_postgres_writes.py): this process's Django, if any, is on SQLite."""

import subprocess
import sys
from pathlib import Path

import pytest

from .services import PostgresService

pytest.importorskip("django")
pytest.importorskip("django_celery_results")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("use_tz", [True, False], ids=["use_tz", "naive"])
def test_each_write_is_one_statement_with_the_orm_rows(
    postgres_service: PostgresService, use_tz: bool
) -> None:
    postgres_service.empty()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.django_postgres_writes",
            postgres_service.schema,
            "1" if use_tz else "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
