"""A Celery app whose autodiscovered workflows module raises at import: the CLI says so in
one `Error:` line instead of a traceback."""

from . import app_from_env

app, ergate = app_from_env("broken_app")
ergate.autodiscover_workflows(["tests.apps.broken"])
