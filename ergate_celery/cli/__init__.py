"""`celery ergate ...`: the click group Celery's `celery.commands` entry point loads, and its
commands (list, show, watch, submit, cancel, signal, retry, pause, resume, workflows, graph),
each a Celery `CeleryCommand` (its help grouped as Celery's, `--no-color` and `--quiet`
honoured).

May import anything of the package; nothing in the package imports it.
"""

from ergate_celery.cli import changing, commands, operations, workflows
from ergate_celery.cli.arguments import ergate

__all__ = ["changing", "commands", "ergate", "operations", "workflows"]
