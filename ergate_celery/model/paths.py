"""Path hints a step declares in `paths=`, used to predict how many steps a job runs."""

from __future__ import annotations


class WorkflowPath:
    """A way a step can hand over to what comes next."""

    def __repr__(self) -> str:
        args = ", ".join(repr(v) for v in vars(self).values())
        return f"{type(self).__name__}({args})"


class NextStepPath(WorkflowPath):
    """The step returns normally and the following step runs."""


class GoToEndPath(WorkflowPath):
    """The step raises `GoToEnd`."""


class GoToStepPath(WorkflowPath):
    """The step raises `GoToStep` towards the step called `step_name`."""

    def __init__(self, step_name: str) -> None:
        self.step_name = step_name


class WaitPath(NextStepPath):
    """The step may raise `Sleep` (`signal` None) or `WaitForSignal(signal)`: the following
    step runs after the wait. For progress it counts as `NextStepPath`; the workflow's graph
    draws the step as a waiting one."""

    def __init__(self, signal: str | None = None) -> None:
        self.signal = signal


class FanOutPath(GoToStepPath):
    """The step raises `FanOut(..., then=step)`: the step called `then` runs once the
    children have ended. For progress it counts as a `GoToStepPath` to `then`; the
    workflow's graph draws the fan-out."""

    def __init__(self, then: str) -> None:
        super().__init__(then)

    @property
    def then(self) -> str:
        """The step that receives the children's results."""
        return self.step_name
