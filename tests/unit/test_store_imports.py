"""Each store loads only its own database library."""

import subprocess
import sys

import pytest


def test_django_store_imports_without_sqlalchemy() -> None:
    # A Django project installs django-celery-results, not SQLAlchemy.
    pytest.importorskip("django")
    code = "import sys; sys.modules['sqlalchemy'] = None; import ergate_celery.stores.django"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
