"""A step: a plain function of a workflow, with its path hints and Celery task options."""

from __future__ import annotations

import typing
from collections.abc import Callable
from types import NoneType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from ergate_celery.model.injection import CallPlan, plan_call
from ergate_celery.model.paths import NextStepPath, WorkflowPath

if TYPE_CHECKING:
    from ergate_celery.model.workflow import Workflow

P = ParamSpec("P")
R = TypeVar("R")


def step_task_name(workflow_name: str, step_name: str) -> str:
    """The Celery task that runs step `step_name` of workflow `workflow_name`."""
    return f"ergate.{workflow_name}.{step_name}"


class WorkflowStep(Generic[P, R]):
    """A decorated step function; calling it calls the function unchanged."""

    def __init__(
        self,
        workflow: Workflow,
        function: Callable[P, R],
        index: int,
        *,
        paths: list[WorkflowPath] | None = None,
        task_options: dict[str, Any] | None = None,
    ) -> None:
        self.workflow = workflow
        self.callable = function
        self.index = index
        self.plan: CallPlan = plan_call(function)
        self.paths: list[WorkflowPath] = _with_implicit_next(function, paths)
        self.task_options: dict[str, Any] = dict(task_options or {})

    @property
    def name(self) -> str:
        """The function's name, unique within its workflow."""
        return self.callable.__name__

    @property
    def task_name(self) -> str:
        """The Celery task that runs this step: `ergate.<workflow>.<step>`."""
        return step_task_name(self.workflow.unique_name, self.name)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.callable(*args, **kwargs)

    def __str__(self) -> str:
        return f"{self.workflow.unique_name}.{self.name}"

    def __repr__(self) -> str:
        return f"<WorkflowStep {self} #{self.index}>"


def _with_implicit_next(
    function: Callable[..., Any], paths: list[WorkflowPath] | None
) -> list[WorkflowPath]:
    # As in Ergate: explicit hints gain a NextStepPath unless the step is annotated `-> None`,
    # since a step that can return a value can hand over to the next step.
    if paths is None:
        return [NextStepPath()]
    prepared = list(paths)
    if _return_annotation(function) is not NoneType and not any(
        isinstance(path, NextStepPath) for path in prepared
    ):
        prepared.append(NextStepPath())
    return prepared


def _return_annotation(function: Callable[..., Any]) -> Any:
    try:
        return typing.get_type_hints(function).get("return")
    except Exception:
        annotation = getattr(function, "__annotations__", {}).get("return")
        return (
            NoneType
            if annotation in (None, "None") and "return" in getattr(function, "__annotations__", {})
            else annotation
        )
