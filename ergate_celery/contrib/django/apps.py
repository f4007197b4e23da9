"""Django app configuration: finds `workflows.py` in installed apps, as Celery finds tasks."""

from django.apps import AppConfig, apps


class ErgateCeleryConfig(AppConfig):
    """The ergate_celery app: job index models, admin, and workflow autodiscovery."""

    name = "ergate_celery.contrib.django"
    label = "ergate_celery"
    verbose_name = "Ergate workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from ergate_celery.binding import all_bindings

        for binding in all_bindings():
            discover_installed_workflows(binding)


def discover_installed_workflows(binding: object) -> None:
    """Have `binding` register the workflows of every installed app's `workflows` module."""
    from ergate_celery.binding import ErgateCelery

    assert isinstance(binding, ErgateCelery)
    binding.autodiscover_workflows(lambda: [config.name for config in apps.get_app_configs()])
