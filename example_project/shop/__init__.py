"""The example shop project; its Celery app loads with Django, so views can submit jobs."""

from .celery import app as celery_app

__all__ = ("celery_app",)
