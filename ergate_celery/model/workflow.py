"""A workflow: an ordered list of steps, and the prediction of how many of them a job runs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from ergate_celery.exceptions import InvalidDefinitionError, ReverseGoToError, UnknownStepError
from ergate_celery.model.concurrency import Concurrency
from ergate_celery.model.paths import GoToEndPath, GoToStepPath, NextStepPath, WorkflowPath
from ergate_celery.model.workflow_step import WorkflowStep

if TYPE_CHECKING:
    from ergate_celery.model.job import Job

P = ParamSpec("P")
R = TypeVar("R")

#: Celery task options a step may set, with Celery's meaning.
STEP_TASK_OPTIONS = frozenset(
    {
        "queue",
        "priority",
        "rate_limit",
        "time_limit",
        "soft_time_limit",
        "max_retries",
        "autoretry_for",
        "retry_backoff",
        "retry_backoff_max",
        "retry_jitter",
        "default_retry_delay",
        "acks_late",
        "reject_on_worker_lost",
    }
)


#: The step options that ergate_celery's own retry logic reads, with Celery's meaning.
RETRY_OPTIONS = frozenset({"autoretry_for", "retry_backoff", "retry_backoff_max", "retry_jitter"})


class Workflow:
    """An ordered list of steps, registered under a unique name."""

    def __init__(self, unique_name: str, *, concurrency: Concurrency | None = None) -> None:
        if not isinstance(unique_name, str) or not unique_name.strip():
            raise InvalidDefinitionError(
                f"Workflow unique_name must be a non-empty string, got {unique_name!r}"
            )
        if any(c.isspace() for c in unique_name):
            raise InvalidDefinitionError(
                f"Workflow unique_name {unique_name!r} contains whitespace; it becomes part "
                "of Celery task names, use dots, dashes or underscores instead"
            )
        if concurrency is not None and not isinstance(concurrency, Concurrency):
            raise InvalidDefinitionError(
                f"Workflow concurrency must be Concurrency(limit, key=...), got {concurrency!r}"
            )
        self.unique_name = unique_name
        #: At most `concurrency.limit` jobs per key in progress (None: no limit).
        self.concurrency = concurrency
        self._steps: list[WorkflowStep[Any, Any]] = []
        self._route_lengths: dict[tuple[int, int], int] | None = None
        self._version: str | None = None

    def __getitem__(self, index: int) -> WorkflowStep[Any, Any]:
        if not 0 <= index < len(self._steps):
            raise UnknownStepError(
                f"Workflow {self.unique_name!r} has {len(self)} steps; there is no step #{index}"
            )
        return self._steps[index]

    def __iter__(self) -> Iterator[WorkflowStep[Any, Any]]:
        return iter(self._steps)

    def __len__(self) -> int:
        return len(self._steps)

    def __repr__(self) -> str:
        return f"<Workflow {self.unique_name!r}: {', '.join(s.name for s in self)}>"

    @property
    def version(self) -> str:
        """A fingerprint of the definition: step names and their paths, in order."""
        if self._version is None:
            shape = ";".join(f"{step.name}:{step.paths!r}" for step in self._steps)
            self._version = hashlib.sha1(shape.encode()).hexdigest()[:12]
        return self._version

    def step_named(self, name: str) -> WorkflowStep[Any, Any]:
        """The step called `name`, or `UnknownStepError`."""
        for step in self._steps:
            if step.name == name:
                return step
        raise UnknownStepError(f"Workflow {self.unique_name!r} has no step named {name!r}")

    def current_step_of(self, job: Job) -> WorkflowStep[Any, Any]:
        """The step `job` is at: by its name, or by its index when the job has no name for it."""
        name = job.current_step_name
        return self.step_named(name) if name is not None else self[job.current_step]

    @overload
    def step(self, func: Callable[P, R], /) -> WorkflowStep[P, R]: ...

    @overload
    def step(
        self, *, paths: list[WorkflowPath] | None = None, **task_options: Any
    ) -> Callable[[Callable[P, R]], WorkflowStep[P, R]]: ...

    def step(  # type: ignore[misc]
        self,
        func: Callable[P, R] | None = None,
        /,
        *,
        paths: list[WorkflowPath] | None = None,
        **task_options: Any,
    ) -> WorkflowStep[P, R] | Callable[[Callable[P, R]], WorkflowStep[P, R]]:
        """Append a step; `paths=` hints feed progress, other keywords are Celery task options."""
        unknown = set(task_options) - STEP_TASK_OPTIONS
        if unknown:
            raise InvalidDefinitionError(
                f"Unknown step option(s) {sorted(unknown)} in workflow {self.unique_name!r}; "
                f"accepted: paths, {', '.join(sorted(STEP_TASK_OPTIONS))}"
            )

        def decorate(function: Callable[P, R]) -> WorkflowStep[P, R]:
            name = getattr(function, "__name__", None)
            if not callable(function) or not isinstance(name, str):
                raise InvalidDefinitionError(
                    f"@{self.unique_name}.step decorates a named function, got {function!r}"
                )
            if any(existing.name == name for existing in self._steps):
                raise InvalidDefinitionError(
                    f"Workflow {self.unique_name!r} already has a step named {name!r}; "
                    "step names must be unique within a workflow"
                )
            step = WorkflowStep(
                self, function, len(self._steps), paths=paths, task_options=task_options
            )
            self._steps.append(step)
            self._route_lengths = None
            self._version = None
            return step

        if func is None:
            return decorate
        return decorate(func)

    def validate(self) -> None:
        """Check the whole definition; called when the workflow is registered."""
        if not self._steps:
            raise InvalidDefinitionError(f"Workflow {self.unique_name!r} has no steps")
        self._route_lengths = self._measure_routes()

    def next_index(self, index: int, path: WorkflowPath) -> int:
        """The index a path leads to from step `index` (`len(self)` means the end)."""
        if isinstance(path, GoToEndPath):
            return len(self)
        if isinstance(path, GoToStepPath):
            target = self.step_named(path.step_name).index
            if target <= index:
                raise ReverseGoToError(
                    f"Step {self[index]} declares a path to {path.step_name!r}, which is not "
                    "after it; steps can only go forward"
                )
            return target
        if isinstance(path, NextStepPath):
            return index + 1
        raise InvalidDefinitionError(f"Unknown path hint {path!r} on step {self[index]}")

    def remaining_steps(self, index: int, path_kind: type[WorkflowPath], target: str = "") -> int:
        """Ergate's prediction of the steps left, this one included, leaving by `path_kind`.

        The longest declared route that starts with that kind of path; without such a hint,
        Ergate's defaults (the steps left by position).
        """
        if self._route_lengths is None:
            self._route_lengths = self._measure_routes()
        lengths = [
            self._route_lengths[(index, id(path))]
            for path in self[index].paths
            if isinstance(path, path_kind)
            and (not isinstance(path, GoToStepPath) or path.step_name == target)
        ]
        if lengths:
            return max(lengths)
        return len(self) - index + (1 if path_kind is NextStepPath else 0)

    def _measure_routes(self) -> dict[tuple[int, int], int]:
        # The longest number of steps from (step index, first path) to the end: the numbers
        # Ergate gets by listing every route, memoised instead of listed.
        lengths: dict[tuple[int, int], int] = {}

        def longest(index: int, path: WorkflowPath) -> int:
            key = (index, id(path))
            if key not in lengths:
                following = self.next_index(index, path)
                if following >= len(self):
                    lengths[key] = 1
                else:
                    lengths[key] = 1 + max(longest(following, p) for p in self[following].paths)
            return lengths[key]

        for step in self._steps:
            for path in step.paths:
                longest(step.index, path)
        return lengths
