"""The shop's Celery app: ``celery -A shop worker`` and ``celery -A shop beat``."""

import os

from celery import Celery
from ergate_celery import ErgateCelery

from .telemetry import start_telemetry

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Installs the beat task that releases scheduled jobs; with "ergate_celery.contrib.django" in
# INSTALLED_APPS, the workflows.py modules of installed apps (orders/workflows.py) are found.
ergate = ErgateCelery(app)

# Traces and metrics over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (docs/tracing.md).
start_telemetry()
