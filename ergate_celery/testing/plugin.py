"""The pytest plugin of ergate_celery (entry point `pytest11`): the `workflow_tester` fixture."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ergate_celery.testing.tester import WorkflowTester


@pytest.fixture
def workflow_tester() -> WorkflowTester:
    """An empty `WorkflowTester`, its clock at the current time: add workflows with
    `workflow_tester.register(workflow)`."""
    # Imported here: pytest loads this plugin in every run, which need not import Celery.
    from ergate_celery.testing.tester import WorkflowTester

    return WorkflowTester()
