"""Module-level helpers that use the `ErgateCelery` of Celery's current app (e.g. in a view).

Each is the binding's method of the same name, with its signature and docstring, called on
`ErgateCelery.of()`: one definition, so the two cannot drift apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from ergate_celery.binding import ErgateCelery

P = ParamSpec("P")
R = TypeVar("R")


def on_current_app(method: Callable[Concatenate[ErgateCelery, P], R]) -> Callable[P, R]:
    """`method` as a function that calls it on the binding of Celery's current app."""
    name = method.__name__

    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        bound: Callable[P, R] = getattr(ErgateCelery.of(), name)  # a subclass's override too
        return bound(*args, **kwargs)

    signature = inspect.signature(method)
    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"`ErgateCelery.{name}` on the current Celery app.\n\n{inspect.getdoc(method)}"
    call.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=list(signature.parameters.values())[1:]
    )
    return call


submit_job = on_current_app(ErgateCelery.submit_job)
get_job = on_current_app(ErgateCelery.get_job)
cancel_job = on_current_app(ErgateCelery.cancel_job)
wait_for_job = on_current_app(ErgateCelery.wait_for_job)
signal_job = on_current_app(ErgateCelery.signal_job)
list_jobs = on_current_app(ErgateCelery.list_jobs)
retry_job = on_current_app(ErgateCelery.retry_job)
retry_jobs = on_current_app(ErgateCelery.retry_jobs)
pause_workflow = on_current_app(ErgateCelery.pause_workflow)
resume_workflow = on_current_app(ErgateCelery.resume_workflow)
paused_workflows = on_current_app(ErgateCelery.paused_workflows)
