"""The Django app of ergate_celery: add "ergate_celery.contrib.django" to INSTALLED_APPS."""
