"""A Celery app for `celery -A tests.apps.beat_app beat|worker` subprocesses of the tests.

Its configuration comes as JSON in ERGATE_TEST_CONF, so the subprocess talks to the same
broker, backend and queue as the test that started it.
"""

import json
import os

from celery import Celery

from ergate_celery import ErgateCelery, Workflow

from .cli_workflows import WORKFLOWS

tick = Workflow(unique_name="tick")


@tick.step
def beat_fired(x: int) -> int:
    return x


def make_app(conf: dict[str, object]) -> tuple[Celery, ErgateCelery]:
    app = Celery("beat_app", set_as_current=True)
    app.conf.update(conf)
    ergate = ErgateCelery(app)
    return app, ergate


app, ergate = make_app(json.loads(os.environ.get("ERGATE_TEST_CONF", "{}")))
ergate.register_workflow(tick)
for workflow in WORKFLOWS:
    ergate.register_workflow(workflow)
if os.environ.get("ERGATE_TEST_PERIODIC"):
    every = float(os.environ["ERGATE_TEST_PERIODIC"])
    ergate.add_periodic_job("tick", every, name="tick", initial_input_value=1)
