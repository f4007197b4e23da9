"""A Celery app for `celery -A tests.apps.beat_app beat|worker` subprocesses of the tests.

Its configuration comes as JSON in ERGATE_TEST_CONF, so the subprocess talks to the same
broker, backend and queue as the test that started it.
"""

import os

from ergate_celery import Workflow

from . import app_from_env
from .cli_workflows import WORKFLOWS

tick = Workflow(unique_name="tick")


@tick.step
def beat_fired(x: int) -> int:
    return x


app, ergate = app_from_env("beat_app", tick, *WORKFLOWS)
if os.environ.get("ERGATE_TEST_PERIODIC"):
    every = float(os.environ["ERGATE_TEST_PERIODIC"])
    ergate.add_periodic_job("tick", every, name="tick", initial_input_value=1)
