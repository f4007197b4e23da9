"""Django app configuration."""

from django.apps import AppConfig


class ErgateCeleryConfig(AppConfig):
    """Holds the scheduled-jobs index used with `result_backend = "django-db"`."""

    name = "ergate_celery.contrib.django"
    label = "ergate_celery"
    verbose_name = "Ergate workflows"
    default_auto_field = "django.db.models.BigAutoField"
