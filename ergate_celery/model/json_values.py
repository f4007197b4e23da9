"""What survives JSON: jobs travel as JSON, so input, context and step results must come back
from a JSON round trip unchanged — or be parsed back by the receiving step's annotated type.

`non_json` walks a value once and names the first part that would change (a `Decimal` that
would come back a string, a tuple that would come back a list, an int key that would come
back a string). `parser_for` gives the parser of a step's input annotation when that type is
not plain JSON (a `datetime`, a `Decimal`, a pydantic model): such a step receives its input
parsed, and may therefore receive values that JSON alone would change.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, get_args, get_origin

from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python

from ergate_celery.exceptions import InvalidInputError
from ergate_celery.model.job import Job
from ergate_celery.model.job_status import JobStatus

if TYPE_CHECKING:
    from ergate_celery.model.workflow_step import WorkflowStep

#: The Python types JSON gives back as they were.
_SCALARS = (str, int, bool, type(None))
#: Annotations whose values are plain JSON: a step so annotated receives the JSON value.
_JSON_TYPES: set[Any] = {Any, object, dict, list, str, int, float, bool, type(None), None}
_UNIONS = (typing.Union, types.UnionType)
#: The deepest nesting of lists and dicts a value may have: deeper ones cannot be encoded,
#: stored or read back without running out of stack.
MAX_DEPTH = 200


def non_json(value: Any, root: str) -> str | None:
    """Where and why `value` would not survive a JSON round trip unchanged, or None.

    E.g. `"initial_input_value['items'][2]['price']: Decimal is not JSON"`.
    """
    path: list[str] = []
    problem = _walk(value, path, 0)
    if problem is None:
        return None
    if len(path) > 12:  # a deep one: its ends say where
        path = [*path[:5], f"...({len(path) - 10} levels)...", *path[-5:]]
    return f"{root}{''.join(path)}: {problem}"


def _walk(value: Any, path: list[str], depth: int) -> str | None:
    kind = type(value)
    if kind in _SCALARS:
        return None
    if kind is float:
        return None if math.isfinite(value) else f"{value} is not JSON"
    if depth >= MAX_DEPTH and kind in (dict, list):
        return f"nested more than {MAX_DEPTH} levels deep; flatten it"
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return f"key {key!r} ({type(key).__name__}) is not a JSON key; use str keys"
            problem = _walk(item, path, depth + 1)
            if problem is not None:
                path.insert(0, f"[{key!r}]")
                return problem
        return None
    if kind is list:
        for index, item in enumerate(value):
            problem = _walk(item, path, depth + 1)
            if problem is not None:
                path.insert(0, f"[{index}]")
                return problem
        return None
    hint = " (it would come back a list)" if isinstance(value, tuple | set | frozenset) else ""
    return f"{kind.__name__} is not JSON{hint}"


def too_deep(value: Any) -> bool:
    """Whether `value` nests lists, tuples and dicts more than `MAX_DEPTH` levels deep (found
    without recursion, so any depth is measured)."""
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH + 1):
        level = [
            child
            for item in level
            if isinstance(item, dict | list | tuple)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return False
    return True


def is_json_type(annotation: Any) -> bool:
    """Whether values of `annotation` are plain JSON (dict, list, str, unions of them...)."""
    if annotation in _JSON_TYPES or typing.is_typeddict(annotation):
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return is_json_type(get_args(annotation)[0])
    if origin in (dict, list) or origin in _UNIONS or origin is typing.Literal:
        return origin is typing.Literal or all(is_json_type(arg) for arg in get_args(annotation))
    return False


def parser_for(annotation: Any) -> Callable[[Any], Any] | None:
    """The parser a step's input goes through, or None when its type is plain JSON (or
    pydantic cannot build one)."""
    if is_json_type(annotation):
        return None
    try:
        return TypeAdapter(annotation).validate_python
    except Exception:
        return None


def parses_back(parse: Callable[[Any], Any] | None, value: Any, json_value: Any) -> bool:
    """Whether `parse` turns the JSON form of `value` back into `value`."""
    if parse is None:
        return False
    try:
        return bool(parse(json_value) == value)
    except Exception:
        return False


def json_result(step: WorkflowStep[Any, Any], after: Job) -> Job:
    """`after` with its new value as JSON, or `InvalidInputError` naming what JSON would
    change (unless the step receiving it parses it back from its JSON form)."""
    value = after.last_return_value
    problem = non_json(value, "return value")
    if problem is None:
        return after
    parse = None
    if after.status is JobStatus.QUEUED and after.current_step_name is not None:
        parse = step.workflow.step_named(after.current_step_name).plan.input_parser
    json_value = to_jsonable_python(value) if parse is not None else None
    if parses_back(parse, value, json_value):
        return after.model_copy(update={"last_return_value": json_value})
    raise InvalidInputError(
        f"Step {step} returned a value that is not JSON-serializable as it is: {problem}; "
        "return dicts with str keys, lists, strings, numbers, booleans or None (or a value the "
        "next step's annotated input type parses back, such as a datetime)"
    )
