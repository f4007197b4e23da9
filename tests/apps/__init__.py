"""The Celery apps the tests' `celery -A tests.apps.<name> worker|beat` subprocesses load."""

from __future__ import annotations

import json
import os

from celery import Celery

from ergate_celery import ErgateCelery, Workflow


def app_from_env(main: str, *workflows: Workflow) -> tuple[Celery, ErgateCelery]:
    """An app named `main` on the settings the test hands over as JSON in ERGATE_TEST_CONF
    (the same broker, backend and queue as the test's own app), with `workflows` registered."""
    app = Celery(main, set_as_current=True)
    app.conf.update(json.loads(os.environ.get("ERGATE_TEST_CONF", "{}")))
    ergate = ErgateCelery(app)
    for workflow in workflows:
        ergate.register_workflow(workflow)
    return app, ergate
