"""The Django settings of the tests' `celery worker` subprocesses on django-db
(DJANGO_SETTINGS_MODULE, so that Celery's Django fixup sets Django up in each worker and
pool process, as in a Django project): the tests' settings, on the SQLite file of the test
process that started them (ERGATE_TEST_DJANGO_DB), migrated by that process."""

import os
from pathlib import Path

from tests.django_support import django_settings

globals().update(django_settings(Path(os.environ["ERGATE_TEST_DJANGO_DB"])))
