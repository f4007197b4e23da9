# `lib` is a ModuleType (ergate or ergate_celery), so its decorators are untyped to mypy.
# mypy: disable-error-code="untyped-decorator"
"""Catalogue of workflows for differential testing of ergate_celery against ergate 0.6.0.

Every workflow is built by a factory `build_xxx(lib, rec, prefix)` where `lib` is either
the `ergate` module or the `ergate_celery` module: the same function body builds both
versions, using only public names (`lib.Workflow`, `lib.Input`, `lib.GoToStep`, ...).
`rec` records what the steps and dependencies see; `prefix` is prepended to every
`unique_name` so that several builds can coexist.

Deliberately no `from __future__ import annotations` here: ergate reads parameter
annotations with `inspect.signature` and return annotations with `get_type_hints`, and
the `Annotated[..., lib.Depends(local_function)]` metadata must be real objects.

All inputs, return values and contexts are JSON-representable (the job travels as JSON).
"""

import copy
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Annotated, Any

Event = tuple[str, str, Any]
"""(kind, name, detail): kind is "step", "setup", "teardown" or "event"."""

JSONDict = dict[str, Any]


class Recorder:
    """Thread-safe, in-process log of what steps and dependencies observed.

    `step(name, value)` appends `(name, deepcopy(value))` to `steps` and a
    ("step", name, None) marker to `events`, so `events` keeps the interleaving of
    step calls with dependency setup/teardown.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: list[tuple[str, Any]] = []
        self._events: list[Event] = []

    def step(self, name: str, value: Any) -> None:
        with self._lock:
            self._steps.append((name, copy.deepcopy(value)))
            self._events.append(("step", name, None))

    def setup(self, name: str, value: Any = None) -> None:
        """A dependency was set up (before its `yield`), having received `value`."""
        with self._lock:
            self._events.append(("setup", name, copy.deepcopy(value)))

    def teardown(self, name: str, error: str | None = None) -> None:
        """A dependency was torn down (after its `yield`); `error` names the exception
        thrown into it at the `yield`, if any."""
        with self._lock:
            self._events.append(("teardown", name, error))

    def event(self, name: str, value: Any = None) -> None:
        """Anything else worth comparing (e.g. the context a step saw)."""
        with self._lock:
            self._events.append(("event", name, copy.deepcopy(value)))

    @property
    def steps(self) -> tuple[tuple[str, Any], ...]:
        with self._lock:
            return tuple(self._steps)

    @property
    def events(self) -> tuple[Event, ...]:
        with self._lock:
            return tuple(self._events)


Builder = Callable[[ModuleType, Recorder, str], Any]
"""`builder(lib, rec, prefix) -> lib.Workflow` (not yet registered/finalized)."""


@dataclass(frozen=True)
class Case:
    name: str
    builder: Builder
    initial_input_value: Any = None
    user_context: Any = None


# --------------------------------------------------------------------------- linear


def build_linear(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    """Four plain steps passing ints, dicts and a float along."""
    workflow = lib.Workflow(unique_name=f"{prefix}linear")

    @workflow.step
    def one(value: int) -> JSONDict:
        rec.step("one", value)
        return {"n": value + 1, "trail": ["one"]}

    @workflow.step
    def two(value: JSONDict) -> JSONDict:
        rec.step("two", value)
        return {"n": value["n"] * 2, "trail": [*value["trail"], "two"]}

    @workflow.step
    def three(value: JSONDict) -> float:
        rec.step("three", value)
        return float(value["n"]) / 4

    @workflow.step
    def four(value: float) -> JSONDict:
        rec.step("four", value)
        return {"result": value, "done": True}

    return workflow


# ------------------------------------------------------------------ parameter kinds


def build_parameter_kinds(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    """Every parameter kind: plain, Input, Context, nested Depends, cached Depends,
    positional-only, keyword-only, a default value (ignored: still gets the input) and
    `Annotated` without an ergate marker (treated as Input)."""
    workflow = lib.Workflow(unique_name=f"{prefix}parameter_kinds")

    def base(
        value: Annotated[JSONDict, lib.Input()],
        ctx: Annotated[JSONDict, lib.Context()],
    ) -> Iterator[JSONDict]:
        rec.setup("base", {"input": value, "context": ctx})
        try:
            yield {"base": value.get("n", 0) * 10, "tag": ctx["tag"]}
        except BaseException as exc:
            rec.teardown("base", type(exc).__name__)
            raise
        else:
            rec.teardown("base")

    def outer(
        base_value: Annotated[JSONDict, lib.Depends(base)],
        /,
        raw: JSONDict,
        *,
        ctx: Annotated[JSONDict, lib.Context()],
    ) -> Iterator[JSONDict]:
        rec.setup("outer", {"base": base_value, "raw": raw, "context": ctx})
        yield {"outer": base_value["base"] + raw["n"], "base": base_value}
        rec.teardown("outer")

    @workflow.step
    def kinds(
        value: JSONDict,
        first: Annotated[JSONDict, lib.Depends(base)],
        /,
        same: Annotated[JSONDict, lib.Input()],
        ctx: Annotated[JSONDict, lib.Context()],
        nested: Annotated[JSONDict, lib.Depends(outer)],
        again: Annotated[JSONDict, lib.Depends(base)],
        defaulted: Any = "default",
        *,
        tagged: Annotated[JSONDict, "not an ergate marker"],
        keyword_ctx: Annotated[JSONDict, lib.Context()],
    ) -> JSONDict:
        rec.step(
            "kinds",
            {
                "value": value,
                "first": first,
                "same": same,
                "ctx": ctx,
                "nested": nested,
                "again": again,
                "defaulted": defaulted,
                "tagged": tagged,
                "keyword_ctx": keyword_ctx,
            },
        )
        return {
            "n": nested["outer"],
            "input_params_are_one_object": value is same and same is defaulted,
            "annotated_without_marker_is_input": tagged is value,
            "dependency_cached": first is again and nested["base"] is first,
            "context_params_are_one_object": ctx is keyword_ctx,
        }

    @workflow.step
    def kinds_again(
        value: JSONDict,
        fresh: Annotated[JSONDict, lib.Depends(base)],
    ) -> JSONDict:
        rec.step("kinds_again", {"value": value, "fresh": fresh})
        return {**value, "fresh": fresh}

    @workflow.step
    def no_params() -> str:
        rec.step("no_params", None)
        return "no params"

    return workflow


# ------------------------------------------------- dependency teardown and control flow


def build_dependency_control_flow(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    """A step with two dependencies, one tearing down in try/except/else (sees every
    exception), one with plain code after `yield` (skipped when anything is raised,
    GoToEnd/GoToStep/AbortJob included). `value["mode"]` picks what the step does."""
    workflow = lib.Workflow(unique_name=f"{prefix}dependency_control_flow")

    def guarded(value: JSONDict) -> Iterator[str]:
        rec.setup("guarded", value)
        try:
            yield "guarded-resource"
        except BaseException as exc:
            rec.teardown("guarded", type(exc).__name__)
            raise
        else:
            rec.teardown("guarded")

    def unguarded(value: JSONDict) -> Iterator[str]:
        rec.setup("unguarded", value)
        yield "unguarded-resource"
        rec.teardown("unguarded")

    @workflow.step
    def prepare(value: JSONDict) -> JSONDict:
        rec.step("prepare", value)
        return {**value, "prepared": True}

    @workflow.step
    def act(
        value: JSONDict,
        held: Annotated[str, lib.Depends(guarded)],
        loose: Annotated[str, lib.Depends(unguarded)],
    ) -> JSONDict:
        rec.step("act", {"value": value, "held": held, "loose": loose})
        mode = value["mode"]
        if mode == "raise":
            raise ValueError("boom")
        if mode == "abort":
            raise lib.AbortJob("aborted while holding dependencies")
        if mode == "end":
            raise lib.GoToEnd(retval={"ended_in": "act"})
        if mode == "goto":
            raise lib.GoToStep(finish, retval={"jumped_from": "act"})
        if mode == "goto_back":
            raise lib.GoToStep(prepare, retval={"jumped_from": "act"})
        return {**value, "acted": True}

    @workflow.step
    def middle(value: JSONDict) -> JSONDict:
        rec.step("middle", value)
        return {**value, "middle": True}

    @workflow.step
    def finish(value: JSONDict) -> JSONDict:
        rec.step("finish", value)
        return {"finished": value}

    return workflow


def build_dependency_edge_cases(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    """A dependency failing during setup (the step never runs; earlier dependencies are
    torn down), and a dependency that swallows the step's exception (ergate 0.6.0 then
    fails the job anyway: the step's return value is unbound)."""
    workflow = lib.Workflow(unique_name=f"{prefix}dependency_edge_cases")

    def guard(value: JSONDict) -> Iterator[str]:
        rec.setup("guard", value)
        try:
            yield "guard"
        except BaseException as exc:
            rec.teardown("guard", type(exc).__name__)
            raise
        else:
            rec.teardown("guard")

    def fragile(value: JSONDict) -> Iterator[str]:
        rec.setup("fragile", value)
        if value["mode"] == "setup_fails":
            raise RuntimeError("dependency setup failed")
        yield "fragile"
        rec.teardown("fragile")

    def swallowing(value: JSONDict) -> Iterator[str]:
        rec.setup("swallowing", value)
        try:
            yield "swallowing"
        except Exception as exc:
            rec.teardown("swallowing", f"swallowed {type(exc).__name__}")
        else:
            rec.teardown("swallowing")

    @workflow.step
    def guarded_step(
        value: JSONDict,
        a: Annotated[str, lib.Depends(guard)],
        b: Annotated[str, lib.Depends(fragile)],
        c: Annotated[str, lib.Depends(swallowing)],
    ) -> JSONDict:
        rec.step("guarded_step", {"value": value, "deps": [a, b, c]})
        if value["mode"] == "swallowed_error":
            raise ValueError("this error is swallowed by a dependency")
        return {**value, "ok": True}

    @workflow.step
    def after(value: JSONDict) -> JSONDict:
        rec.step("after", value)
        return value

    return workflow


# ------------------------------------------------------------------- GoToStep jumps


def _jump_workflow(lib: ModuleType, rec: Recorder, unique_name: str, paths: Any) -> Any:
    """start -> b -> c -> d -> e. `start` jumps according to `value["to"]`; `c` jumps
    back to `b` when `value["back"]`; `d` ends the job when `value["end_at_d"]`."""
    workflow = lib.Workflow(unique_name=unique_name)

    def start(value: JSONDict) -> JSONDict:
        rec.step("start", value)
        to = value.get("to")
        if to == "d":
            raise lib.GoToStep(d, retval={**value, "trail": ["start"]})
        if to == "self":
            raise lib.GoToStep(start_step, retval={**value, "trail": ["start"]})
        return {**value, "trail": ["start"]}

    start_step = workflow.step(start) if paths is None else workflow.step(paths=paths)(start)

    @workflow.step
    def b(value: JSONDict) -> JSONDict:
        rec.step("b", value)
        return {**value, "trail": [*value["trail"], "b"]}

    @workflow.step
    def c(value: JSONDict) -> JSONDict:
        rec.step("c", value)
        if value.get("back"):
            raise lib.GoToStep(b, retval=value)
        return {**value, "trail": [*value["trail"], "c"]}

    @workflow.step
    def d(value: JSONDict) -> JSONDict:
        rec.step("d", value)
        if value.get("end_at_d"):
            raise lib.GoToEnd(retval={"ended_at": "d", "trail": value["trail"]})
        return {**value, "trail": [*value["trail"], "d"]}

    @workflow.step
    def e(value: JSONDict) -> JSONDict:
        rec.step("e", value)
        return {**value, "trail": [*value["trail"], "e"]}

    return workflow


def build_jump_no_hint(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    return _jump_workflow(lib, rec, f"{prefix}jump_no_hint", None)


def build_jump_hint(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    return _jump_workflow(lib, rec, f"{prefix}jump_hint", [lib.GoToStepPath("d")])


def build_jump_unmatched_hint(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    """Hints a jump to `c`, but jumps to `d`: the hint is not used for the prediction."""
    return _jump_workflow(lib, rec, f"{prefix}jump_unmatched_hint", [lib.GoToStepPath("c")])


# -------------------------------------------------------------------------- GoToEnd


def _end_workflow(lib: ModuleType, rec: Recorder, unique_name: str, paths: Any) -> Any:
    workflow = lib.Workflow(unique_name=unique_name)

    @workflow.step
    def first(value: JSONDict) -> JSONDict:
        rec.step("first", value)
        return {**value, "first": True}

    def second(value: JSONDict) -> JSONDict:
        rec.step("second", value)
        if value["end"]:
            raise lib.GoToEnd(retval={"ended_at": "second", "seen": value})
        return {**value, "second": True}

    if paths is None:
        workflow.step(second)
    else:
        workflow.step(paths=paths)(second)

    @workflow.step
    def third(value: JSONDict) -> JSONDict:
        rec.step("third", value)
        return {**value, "third": True}

    @workflow.step
    def fourth(value: JSONDict) -> JSONDict:
        rec.step("fourth", value)
        return {**value, "fourth": True}

    return workflow


def build_end_no_hint(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    return _end_workflow(lib, rec, f"{prefix}end_no_hint", None)


def build_end_hint(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    return _end_workflow(lib, rec, f"{prefix}end_hint", [lib.GoToEndPath()])


# ------------------------------------------------------------ AbortJob / exceptions


def build_interruptions(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    """`value["mode"]` makes the third step abort, raise, or return normally."""
    workflow = lib.Workflow(unique_name=f"{prefix}interruptions")

    @workflow.step
    def first(value: JSONDict) -> JSONDict:
        rec.step("first", value)
        return {**value, "count": 1}

    @workflow.step
    def second(value: JSONDict) -> JSONDict:
        rec.step("second", value)
        return {**value, "count": value["count"] + 1}

    @workflow.step
    def third(value: JSONDict) -> JSONDict:
        rec.step("third", value)
        if value["mode"] == "abort":
            raise lib.AbortJob(f"reason: count is {value['count']}")
        if value["mode"] == "raise":
            raise RuntimeError("plain failure")
        return {**value, "count": value["count"] + 1}

    @workflow.step
    def fourth(value: JSONDict) -> JSONDict:
        rec.step("fourth", value)
        return {**value, "count": value["count"] + 1}

    return workflow


# ------------------------------------------------------------------------ branching


def build_branching(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    """route -> b -> c -> d -> finish; `route` goes to the next step, skips one (hinted),
    skips two (not hinted) or goes to the end (hinted) by `value["route"]`."""
    workflow = lib.Workflow(unique_name=f"{prefix}branching")

    @workflow.step(paths=[lib.GoToStepPath("c"), lib.GoToEndPath()])
    def route(value: JSONDict) -> JSONDict:
        rec.step("route", value)
        taken = value["route"]
        out = {"route": taken, "trail": ["route"]}
        if taken == "skip_one":
            raise lib.GoToStep(c, retval=out)
        if taken == "skip_two":
            raise lib.GoToStep(d, retval=out)
        if taken == "end":
            raise lib.GoToEnd(retval=out)
        return out

    @workflow.step
    def b(value: JSONDict) -> JSONDict:
        rec.step("b", value)
        return {**value, "trail": [*value["trail"], "b"]}

    @workflow.step
    def c(value: JSONDict) -> JSONDict:
        rec.step("c", value)
        return {**value, "trail": [*value["trail"], "c"]}

    @workflow.step
    def d(value: JSONDict) -> JSONDict:
        rec.step("d", value)
        return {**value, "trail": [*value["trail"], "d"]}

    @workflow.step
    def finish(value: JSONDict) -> JSONDict:
        rec.step("finish", value)
        return {**value, "trail": [*value["trail"], "finish"]}

    return workflow


# --------------------------------------------------------------- mutation of inputs


def build_input_mutation(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    """Steps and a dependency mutate their input in place. A dependency shares the
    step's input object (the step sees the dependency's mutation); the stored job and
    later steps see mutations only through return values. `ctx["abort"]` makes the last
    step abort after mutating its input (the stored last_return_value must be intact)."""
    workflow = lib.Workflow(unique_name=f"{prefix}input_mutation")

    def appender(value: JSONDict) -> Iterator[int]:
        rec.setup("appender", value)
        value["items"].append("by-dependency")
        yield len(value["items"])
        rec.teardown("appender")

    @workflow.step
    def first(value: JSONDict) -> JSONDict:
        rec.step("first", value)
        value["items"].append("first-mutation")
        value["mutated"] = True
        return {"items": ["a"], "n": 1}

    @workflow.step
    def second(value: JSONDict, size: Annotated[int, lib.Depends(appender)]) -> JSONDict:
        rec.step("second", {"value": value, "size": size})
        value["items"].append("second")
        value["n"] += 1
        return value

    @workflow.step
    def third(value: JSONDict, ctx: Annotated[JSONDict, lib.Context()]) -> JSONDict:
        rec.step("third", value)
        value["items"].clear()
        value["n"] = 999
        if ctx["abort"]:
            raise lib.AbortJob("stop after mutating")
        return {"third_saw_n": 999}

    return workflow


def build_context_mutation(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    """Steps mutate the user context in place (ergate 0.6.0 hands the job's own
    user_context object to the step, so the mutation travels with the job)."""
    workflow = lib.Workflow(unique_name=f"{prefix}context_mutation")

    @workflow.step
    def first(value: int, ctx: Annotated[JSONDict, lib.Context()]) -> int:
        rec.step("first", value)
        rec.event("context@first", ctx)
        ctx["seen"].append("first")
        return value + 1

    @workflow.step
    def second(value: int, ctx: Annotated[JSONDict, lib.Context()]) -> int:
        rec.step("second", value)
        rec.event("context@second", ctx)
        ctx["seen"].append("second")
        return value + 1

    @workflow.step
    def third(value: int, ctx: Annotated[JSONDict, lib.Context()]) -> JSONDict:
        rec.step("third", value)
        rec.event("context@third", ctx)
        return {"value": value, "context": ctx}

    return workflow


# ------------------------------------------------ `-> None`, hints and None values


def build_none_annotated_end_hint(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    """`b` is annotated `-> None` with paths=[GoToEndPath()]: NextStepPath is NOT added,
    so progress is predicted as if the job ended at `b`. `value["end"]` picks whether `b`
    really ends the job or returns (None) normally."""
    workflow = lib.Workflow(unique_name=f"{prefix}none_annotated_end_hint")

    @workflow.step
    def a(value: JSONDict) -> JSONDict:
        rec.step("a", value)
        return {**value, "a": True}

    @workflow.step(paths=[lib.GoToEndPath()])
    def b(value: JSONDict) -> None:
        rec.step("b", value)
        if value["end"]:
            raise lib.GoToEnd(retval="ended at b")

    @workflow.step
    def c(value: None) -> JSONDict:
        rec.step("c", value)
        return {"c_received": value}

    @workflow.step
    def d(value: JSONDict) -> JSONDict:
        rec.step("d", value)
        return {**value, "d": True}

    return workflow


def build_unannotated_end_hint(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    """Same as `build_none_annotated_end_hint` but `b` has no return annotation, so
    NextStepPath IS added to its hints."""
    workflow = lib.Workflow(unique_name=f"{prefix}unannotated_end_hint")

    @workflow.step
    def a(value: JSONDict) -> JSONDict:
        rec.step("a", value)
        return {**value, "a": True}

    @workflow.step(paths=[lib.GoToEndPath()])
    def b(value: JSONDict):  # type: ignore[no-untyped-def]  # deliberately unannotated
        rec.step("b", value)
        if value["end"]:
            raise lib.GoToEnd(retval="ended at b")

    @workflow.step
    def c(value: None) -> JSONDict:
        rec.step("c", value)
        return {"c_received": value}

    @workflow.step
    def d(value: JSONDict) -> JSONDict:
        rec.step("d", value)
        return {**value, "d": True}

    return workflow


def build_none_passthrough(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    """None as initial input, a `-> None` step without hints (NextStepPath as usual),
    None flowing to the next step, and None as the final return value."""
    workflow = lib.Workflow(unique_name=f"{prefix}none_passthrough")

    @workflow.step
    def start(value: None) -> None:
        rec.step("start", value)

    @workflow.step
    def middle(value: None, ctx: Annotated[Any, lib.Context()]) -> JSONDict:
        rec.step("middle", {"value": value, "ctx": ctx})
        return {"value_was_none": value is None, "context_was_none": ctx is None}

    @workflow.step
    def silent(value: JSONDict) -> None:
        rec.step("silent", value)

    @workflow.step
    def last(value: None) -> None:
        rec.step("last", value)
        return value

    return workflow


def build_none_end_hint_last_step(lib: ModuleType, rec: Recorder, prefix: str) -> Any:
    """The LAST step is `-> None` with paths=[GoToEndPath()] and returns normally. ergate
    0.6.0 predicts one more step than exists, leaves the job QUEUED at current_step ==
    len(workflow) and requeues it; the next `_run_job` raises KeyError (escapes)."""
    workflow = lib.Workflow(unique_name=f"{prefix}none_end_hint_last_step")

    @workflow.step
    def a(value: int) -> int:
        rec.step("a", value)
        return value + 1

    @workflow.step(paths=[lib.GoToEndPath()])
    def b(value: int) -> None:
        rec.step("b", value)

    return workflow


# ----------------------------------------------------------------------- the cases


CASES: list[Case] = [
    Case("linear", build_linear, 3),
    Case("parameter_kinds", build_parameter_kinds, {"n": 2}, {"tag": "ctx"}),
    Case("dependency_teardown_on_success", build_dependency_control_flow, {"mode": "ok"}),
    Case("dependency_teardown_on_exception", build_dependency_control_flow, {"mode": "raise"}),
    Case("dependency_teardown_on_abort", build_dependency_control_flow, {"mode": "abort"}),
    Case("dependency_teardown_on_goto_end", build_dependency_control_flow, {"mode": "end"}),
    Case("dependency_teardown_on_goto_step", build_dependency_control_flow, {"mode": "goto"}),
    Case("dependency_goto_backward", build_dependency_control_flow, {"mode": "goto_back"}),
    Case("dependency_setup_fails", build_dependency_edge_cases, {"mode": "setup_fails"}),
    Case("dependency_swallows_exception", build_dependency_edge_cases, {"mode": "swallowed_error"}),
    Case("dependency_edge_cases_ok", build_dependency_edge_cases, {"mode": "ok"}),
    Case("goto_forward_no_hint", build_jump_no_hint, {"to": "d"}),
    Case("goto_forward_with_hint", build_jump_hint, {"to": "d"}),
    Case("goto_forward_unmatched_hint", build_jump_unmatched_hint, {"to": "d"}),
    Case("goto_hinted_workflow_no_jump", build_jump_hint, {"to": None}),
    Case("goto_backward", build_jump_no_hint, {"to": None, "back": True}),
    Case("goto_self", build_jump_no_hint, {"to": "self"}),
    Case("goto_step_then_goto_end", build_jump_no_hint, {"to": "d", "end_at_d": True}),
    Case("goto_step_then_goto_end_hinted", build_jump_hint, {"to": "d", "end_at_d": True}),
    Case("goto_end_no_hint", build_end_no_hint, {"end": True}),
    Case("goto_end_with_hint", build_end_hint, {"end": True}),
    Case("goto_end_hint_not_taken", build_end_hint, {"end": False}),
    Case("abort_midway", build_interruptions, {"mode": "abort"}),
    Case("step_raises", build_interruptions, {"mode": "raise"}),
    Case("interruptions_not_taken", build_interruptions, {"mode": "none"}),
    Case("branch_next", build_branching, {"route": "next"}),
    Case("branch_skip_one", build_branching, {"route": "skip_one"}),
    Case("branch_skip_two", build_branching, {"route": "skip_two"}),
    Case("branch_end", build_branching, {"route": "end"}),
    Case("input_mutation_abort", build_input_mutation, {"items": []}, {"abort": True}),
    Case("input_mutation_complete", build_input_mutation, {"items": []}, {"abort": False}),
    Case("context_mutation", build_context_mutation, 1, {"seen": []}),
    Case("none_annotated_end_hint_continues", build_none_annotated_end_hint, {"end": False}),
    Case("none_annotated_end_hint_ends", build_none_annotated_end_hint, {"end": True}),
    Case("unannotated_end_hint_continues", build_unannotated_end_hint, {"end": False}),
    Case("unannotated_end_hint_ends", build_unannotated_end_hint, {"end": True}),
    Case("none_passthrough", build_none_passthrough, None, None),
]

ESCAPING_CASES: list[Case] = [
    # ergate 0.6.0's `_run_job` raises KeyError out of the runner for this one.
    Case("none_end_hint_last_step_returns", build_none_end_hint_last_step, 1),
]

CASES_BY_NAME: dict[str, Case] = {case.name: case for case in [*CASES, *ESCAPING_CASES]}
