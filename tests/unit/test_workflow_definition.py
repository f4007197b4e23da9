"""Definition errors are caught when a workflow is declared or registered, not when it runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import pytest

from ergate_celery import (
    Context,
    Depends,
    GoToStepPath,
    Input,
    InvalidDefinitionError,
    ReverseGoToError,
    UnknownStepError,
    Workflow,
)


def test_duplicate_step_name_is_invalid_definition() -> None:
    workflow = Workflow(unique_name="dup")

    @workflow.step
    def first(x: int) -> int:
        return x

    with pytest.raises(InvalidDefinitionError, match="already has a step named 'first'"):

        @workflow.step
        def first(x: int) -> int:
            return x


@pytest.mark.parametrize("name", ["", "   ", "has space", 12, None])
def test_bad_workflow_name_is_invalid_definition(name: object) -> None:
    with pytest.raises(InvalidDefinitionError):
        Workflow(unique_name=name)  # type: ignore[arg-type]


def test_unknown_step_option_names_the_accepted_ones() -> None:
    workflow = Workflow(unique_name="opts")
    with pytest.raises(InvalidDefinitionError, match="queue"):
        workflow.step(queeu="x")


def test_two_markers_on_one_parameter_is_invalid() -> None:
    workflow = Workflow(unique_name="markers")
    with pytest.raises(InvalidDefinitionError, match="exactly one"):

        @workflow.step
        def step(x: Annotated[int, Input(), Context()]) -> int:
            return x


def not_a_generator() -> int:
    return 1


def test_dependency_must_be_a_generator() -> None:
    workflow = Workflow(unique_name="gen")
    with pytest.raises(InvalidDefinitionError, match="generator"):

        @workflow.step
        def step(x: Annotated[int, Depends(not_a_generator)]) -> int:  # type: ignore[arg-type]
            return x


def test_variadic_parameters_are_invalid() -> None:
    workflow = Workflow(unique_name="var")
    with pytest.raises(InvalidDefinitionError, match=r"\*args"):

        @workflow.step
        def step(*args: int) -> int:
            return 0


def test_backward_path_hint_fails_validation() -> None:
    workflow = Workflow(unique_name="backwards")

    @workflow.step
    def first(x: int) -> int:
        return x

    @workflow.step(paths=[GoToStepPath("first")])
    def second(x: int) -> int:
        return x

    with pytest.raises(ReverseGoToError, match="first"):
        workflow.validate()


def test_path_hint_to_unknown_step_fails_validation() -> None:
    workflow = Workflow(unique_name="unknown-hint")

    @workflow.step(paths=[GoToStepPath("nowhere")])
    def first(x: int) -> int:
        return x

    with pytest.raises(UnknownStepError, match="nowhere"):
        workflow.validate()


def test_empty_workflow_fails_validation() -> None:
    with pytest.raises(InvalidDefinitionError, match="no steps"):
        Workflow(unique_name="empty").validate()


def test_step_index_out_of_range_is_unknown_step() -> None:
    workflow = Workflow(unique_name="range")

    @workflow.step
    def only(x: int) -> int:
        return x

    with pytest.raises(UnknownStepError, match="#3"):
        workflow[3]


def test_decorated_step_still_calls_the_function() -> None:
    workflow = Workflow(unique_name="callable")

    @workflow.step
    def double(x: int) -> int:
        return x * 2

    assert double(4) == 8
    assert double.task_name == "ergate.callable.double"
    assert double.index == 0


def dependency_chain(x: Annotated[int, Input()]) -> Iterator[int]:
    yield x + 1


def test_future_annotations_still_find_markers() -> None:
    # This module uses `from __future__ import annotations`; markers must still be read.
    workflow = Workflow(unique_name="future")

    @workflow.step
    def step(x: int, dep: Annotated[int, Depends(dependency_chain)]) -> int:
        return x + dep

    kinds = [type(p.marker).__name__ for p in step.plan.parameters]
    assert kinds == ["Input", "Depends"]


def test_unresolvable_future_annotation_is_invalid_not_silently_an_input() -> None:
    workflow = Workflow(unique_name="unresolvable")

    def local_dependency() -> Iterator[int]:
        yield 1

    with pytest.raises(InvalidDefinitionError, match="module level"):

        @workflow.step
        def step(x: int, dep: Annotated[int, Depends(local_dependency)]) -> int:
            return x + dep
