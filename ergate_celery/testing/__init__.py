"""Testing workflows without a server.

`WorkflowTester` (tester.py) runs workflows in the test's own thread on a virtual clock,
through the code a worker runs: the step tasks of a private Celery app (app.py) on the memory
store, beat's release, the operations; messages wait in its own queue (messages.py) and the
clock (clock.py) moves only when the test says. `plugin.py` is the pytest plugin, entry point
`pytest11`, with the `workflow_tester` fixture.

May import anything of the package; nothing of the package imports it.
"""

from ergate_celery.testing.tester import WorkflowTester

__all__ = ["WorkflowTester"]
