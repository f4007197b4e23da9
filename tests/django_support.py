"""Django, configured once per test process, with a migrated SQLite database."""

from pathlib import Path
from typing import Any

import pytest

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_celery_results",
    "django_celery_beat",
    "ergate_celery.contrib.django",
    "tests.djangoapp",
]


def django_settings(database: Path) -> dict[str, Any]:
    """The tests' Django settings, on the SQLite file `database` (the test process's, or, in
    a worker subprocess, the same file: tests/apps/django_settings.py)."""
    return {
        "INSTALLED_APPS": INSTALLED_APPS,
        "DATABASES": {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(database),
                "OPTIONS": {"timeout": 30},
            }
        },
        "USE_TZ": True,
        "ROOT_URLCONF": "tests.django_urls",
        "SECRET_KEY": "tests-only",
        "ALLOWED_HOSTS": ["testserver"],
        "MIDDLEWARE": [
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        "TEMPLATES": [
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
    }


def configure_django(folder: Path) -> None:
    """Configure and migrate Django unless this process already did."""
    pytest.importorskip("django")
    pytest.importorskip("django_celery_results")
    import django
    from django.conf import settings
    from django.core.management import call_command

    if settings.configured:
        return
    settings.configure(**django_settings(folder / "db.sqlite3"))
    django.setup()
    call_command("migrate", verbosity=0)


def django_database() -> Path:
    """The SQLite file of this process's Django (configured by `configure_django`)."""
    from django.conf import settings

    return Path(settings.DATABASES["default"]["NAME"])
