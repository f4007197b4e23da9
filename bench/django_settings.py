"""Django settings of the benchmark's `django_db` setup: the job store on PostgreSQL.

The database is `test` on loopback, every table in the bench's own schema (its name comes
from `ERGATE_BENCH_POSTGRES_SCHEMA`, `ergate_bench` by default) through the connection's
`search_path`; the harness creates that schema and applies the migrations before it measures.
Only what the store needs is installed: django-celery-results (its `TaskResult` table holds
the job records) and ergate_celery's Django app (the job index). Connections are Django's
defaults (`CONN_MAX_AGE = 0`), and the worker closes them around each task as Celery's Django
fixup does for every Django project that leaves `CELERY_DB_REUSE_MAX` unset.
"""

import os

SCHEMA = os.environ.get("ERGATE_BENCH_POSTGRES_SCHEMA", "ergate_bench")

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django_celery_results",
    "ergate_celery.contrib.django",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "test",
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "5432",
        "OPTIONS": {"options": f"-c search_path={SCHEMA}"},
    }
}
USE_TZ = True
TIME_ZONE = "UTC"
SECRET_KEY = "ergate-bench-only"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
