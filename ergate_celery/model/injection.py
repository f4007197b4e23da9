"""Works out, once per step definition, what each parameter receives, and provides it per run."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin

from ergate_celery.exceptions import InvalidDefinitionError
from ergate_celery.model.annotations import (
    Context,
    CurrentRun,
    Depends,
    Input,
    Marker,
    SignalPayload,
    StepRun,
)
from ergate_celery.model.json_values import parser_for
from ergate_celery.model.progress import Progress, ProgressReporter


@dataclass(frozen=True, slots=True)
class Parameter:
    """One parameter of a step or dependency and what it receives."""

    name: str
    positional: bool
    marker: Marker
    annotation: Any
    dependency_plan: CallPlan | None = None
    #: For an input whose type is not plain JSON (a datetime, a pydantic model): its parser.
    parse: Callable[[Any], Any] | None = None


@dataclass(frozen=True, slots=True)
class CallPlan:
    """How to call one function: its parameters in order."""

    function: Callable[..., Any]
    parameters: tuple[Parameter, ...]

    @property
    def input_parser(self) -> Callable[[Any], Any] | None:
        """The parser of the first parameter receiving the input (None: plain JSON)."""
        for parameter in self.parameters:
            if isinstance(parameter.marker, Input):
                return parameter.parse
        return None

    @property
    def input_annotation(self) -> Any:
        """The annotated type of the first parameter receiving the input, or `Any`."""
        for parameter in self.parameters:
            if isinstance(parameter.marker, Input):
                return parameter.annotation
        return Any


def plan_call(function: Callable[..., Any]) -> CallPlan:
    """Inspect `function` once; raise `InvalidDefinitionError` for what cannot be injected."""
    signature = _signature(function)
    parameters = []
    for param in signature.parameters.values():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise InvalidDefinitionError(
                f"{_name(function)}: parameter *{param.name} cannot be injected; "
                "give each input, context or dependency its own named parameter"
            )
        marker, annotation = _marker_of(function, param)
        plan = None
        if isinstance(marker, Depends):
            if not inspect.isgeneratorfunction(marker.dependency):
                raise InvalidDefinitionError(
                    f"{_name(function)}: dependency {_name(marker.dependency)} of parameter "
                    f"{param.name!r} must be a generator function that yields its value"
                )
            plan = plan_call(marker.dependency)
        parameters.append(
            Parameter(
                name=param.name,
                positional=param.kind is inspect.Parameter.POSITIONAL_ONLY,
                marker=marker,
                annotation=annotation,
                dependency_plan=plan,
                parse=parser_for(annotation) if isinstance(marker, Input) else None,
            )
        )
    return CallPlan(function, tuple(parameters))


@contextmanager
def injected_arguments(
    plan: CallPlan,
    input_value: Any,
    user_context: Any,
    run: StepRun | None = None,
    progress: ProgressReporter | None = None,
    signals: Mapping[str, Any] | None = None,
) -> Iterator[tuple[list[Any], dict[str, Any]]]:
    """Set up the arguments of one call; dependencies are torn down on exit, also on error."""
    with ExitStack() as stack:
        values = _Values(input_value, user_context, run, progress, stack, {}, signals or {})
        yield _arguments(plan, values)


@dataclass(slots=True)
class _Values:
    input_value: Any
    user_context: Any
    run: StepRun | None
    progress: ProgressReporter | None
    stack: ExitStack
    cache: dict[Callable[..., Any], Any]
    signals: Mapping[str, Any]


def _arguments(plan: CallPlan, values: _Values) -> tuple[list[Any], dict[str, Any]]:
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for parameter in plan.parameters:
        value = _value(parameter, values)
        if parameter.positional:
            args.append(value)
        else:
            kwargs[parameter.name] = value
    return args, kwargs


def _value(parameter: Parameter, values: _Values) -> Any:
    if isinstance(parameter.marker, Input):
        parse = parameter.parse
        return values.input_value if parse is None else parse(values.input_value)
    if isinstance(parameter.marker, Context):
        return values.user_context
    if isinstance(parameter.marker, CurrentRun):
        return values.run
    if isinstance(parameter.marker, Progress):
        return values.progress
    if isinstance(parameter.marker, SignalPayload):
        return values.signals.get(parameter.marker.name)
    plan = parameter.dependency_plan
    assert plan is not None
    if plan.function in values.cache:
        return values.cache[plan.function]
    args, kwargs = _arguments(plan, values)
    value = values.stack.enter_context(contextmanager(plan.function)(*args, **kwargs))
    values.cache[plan.function] = value
    return value


def _signature(function: Callable[..., Any]) -> inspect.Signature:
    # String annotations (from __future__ import annotations) are resolved when they can be,
    # so Annotated markers still work; unresolvable ones are read as plain inputs.
    try:
        return inspect.signature(function, eval_str=True)
    except Exception:
        return inspect.signature(function)


def _marker_of(function: Callable[..., Any], param: inspect.Parameter) -> tuple[Marker, Any]:
    annotation = param.annotation
    if isinstance(annotation, str) and "Annotated[" in annotation:
        raise InvalidDefinitionError(
            f"{_name(function)}: cannot resolve the annotation {annotation!r} of parameter "
            f"{param.name!r}; with `from __future__ import annotations`, Depends/Context "
            "markers and their dependencies must be importable names (defined at module level)"
        )
    if annotation is inspect.Parameter.empty:
        return Input(), Any
    if get_origin(annotation) is not Annotated:
        return Input(), annotation
    base, *metadata = get_args(annotation)
    markers = [
        m
        for m in metadata
        if isinstance(m, Input | Context | CurrentRun | Progress | SignalPayload | Depends)
    ]
    if len(markers) > 1:
        raise InvalidDefinitionError(
            f"{_name(function)}: parameter {param.name!r} has {len(markers)} markers; "
            "use exactly one of Input(), Context(), CurrentRun(), Progress(), "
            "SignalPayload(name) or Depends(...)"
        )
    return (markers[0] if markers else Input()), base


def _name(function: Callable[..., Any]) -> str:
    return getattr(function, "__qualname__", repr(function))
