"""Markers that tell the step runner what to pass to a step's parameters."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Input:
    """The parameter receives the step's input value (as a plain parameter does)."""


class Context:
    """The parameter receives `job.user_context`."""


class Depends(Generic[T]):
    """The parameter receives what the generator `dependency` yields.

    The dependency may itself take input, context and other dependencies; within one step run
    each dependency is set up once, and torn down (the code after `yield`) when the step ends.
    """

    def __init__(self, dependency: Callable[..., Generator[T, None, None]]) -> None:
        self.dependency = dependency

    def __repr__(self) -> str:
        return f"Depends({getattr(self.dependency, '__qualname__', self.dependency)!r})"


Marker = Input | Context | Depends[Any]
