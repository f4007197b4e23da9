"""Django app configuration: finds `workflows.py` in installed apps, as Celery finds tasks."""

from django.apps import AppConfig

from ergate_celery.binding import all_bindings
from ergate_celery.registry import DJANGO_APP


class ErgateCeleryConfig(AppConfig):
    """The ergate_celery app: job index models, admin, and workflow autodiscovery."""

    name = DJANGO_APP
    label = "ergate_celery"
    verbose_name = "Ergate workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # A Celery app created later finds the workflows itself (`autodiscover_django`).
        for binding in all_bindings():
            binding.registry.autodiscover_django()
