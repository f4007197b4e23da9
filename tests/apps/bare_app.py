"""A Celery app with no workflow at all: a worker of it is one that never imported the
workflows module (or an old worker while a deploy adds the workflow)."""

from . import app_from_env

app, ergate = app_from_env("bare_app")
