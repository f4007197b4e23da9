"""Sanity facts about ergate 0.6.0's own behaviour on the differential cases.

These pin down what the reference side produces (read off ergate's job_runner.py,
job.py, workflow.py and workflow_step.py), so that the differential comparison is
against a reference that is known to be exercised the way the cases intend.
"""

import json
from typing import Any

import pytest

pytest.importorskip("ergate")

from .reference import MemoryQueue, run_reference
from .trace import Snapshot, Trace
from .workflows import CASES, CASES_BY_NAME, ESCAPING_CASES, Recorder

TERMINAL = {"COMPLETED", "FAILED", "ABORTED"}


def run(name: str) -> Trace:
    return run_reference(CASES_BY_NAME[name])


def progress(trace: Trace) -> list[tuple[str, int, int, float]]:
    """(status, current_step, steps_completed, percent) of the writes after each step."""
    return [
        (s.status, s.current_step, s.steps_completed, s.percent_completed)
        for s in trace.snapshots[1::2]
    ]


def step_names(trace: Trace) -> list[str]:
    return [name for name, _ in trace.steps]


def dependency_events(trace: Trace) -> list[tuple[str, str, Any]]:
    return [event for event in trace.events if event[0] in ("setup", "teardown")]


# ------------------------------------------------------------------ every case


def test_case_names_are_unique() -> None:
    names = [case.name for case in [*CASES, *ESCAPING_CASES]]
    assert len(names) == len(set(names))
    assert len(CASES_BY_NAME) == len(names)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_every_case_runs_to_a_terminal_state(case: Any) -> None:
    trace = run_reference(case)

    assert trace.final == trace.snapshots[-1]
    assert trace.final.status in TERMINAL
    # Each `_run_job` writes RUNNING first, then the outcome.
    assert len(trace.snapshots) % 2 == 0
    assert [s.status for s in trace.snapshots[0::2]] == ["RUNNING"] * (len(trace.snapshots) // 2)
    assert all(s.status == "QUEUED" for s in trace.snapshots[1:-1:2])
    # The RUNNING write repeats the progress of the write before it.
    for before, running in zip(trace.snapshots[1::2], trace.snapshots[2::2], strict=False):
        assert (running.current_step, running.steps_completed) == (
            before.current_step,
            before.steps_completed,
        )
        assert running.percent_completed == before.percent_completed
        assert running.last_return_value == before.last_return_value
    # Step markers in the event log match the recorded steps.
    assert [name for kind, name, _ in trace.events if kind == "step"] == step_names(trace)
    # Everything the trace holds is JSON-representable.
    json.dumps([trace.steps, trace.events, [s.last_return_value for s in trace.snapshots]])
    if trace.final.status == "COMPLETED":
        assert trace.final.percent_completed == 100.0


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_reference_runs_are_deterministic(case: Any) -> None:
    assert run_reference(case) == run_reference(case)


# ------------------------------------------------------------------ specific cases


def test_linear() -> None:
    trace = run("linear")
    assert step_names(trace) == ["one", "two", "three", "four"]
    assert trace.steps[1] == ("two", {"n": 4, "trail": ["one"]})
    assert trace.steps[3] == ("four", 2.0)
    assert progress(trace) == [
        ("QUEUED", 1, 1, 25.0),
        ("QUEUED", 2, 2, 50.0),
        ("QUEUED", 3, 3, 75.0),
        ("COMPLETED", 4, 4, 100.0),
    ]
    assert trace.final.last_return_value == {"result": 2.0, "done": True}
    assert trace.snapshots[0] == Snapshot("RUNNING", 0, 0, 0.0, None)


def test_parameter_kinds() -> None:
    trace = run("parameter_kinds")
    name, seen = trace.steps[0]
    assert name == "kinds"
    assert seen["value"] == seen["same"] == seen["defaulted"] == seen["tagged"] == {"n": 2}
    assert seen["ctx"] == seen["keyword_ctx"] == {"tag": "ctx"}
    assert seen["first"] == seen["again"] == {"base": 20, "tag": "ctx"}
    assert seen["nested"] == {"outer": 22, "base": {"base": 20, "tag": "ctx"}}
    assert trace.steps[1][1]["value"] == {
        "n": 22,
        "input_params_are_one_object": True,
        "annotated_without_marker_is_input": True,
        "dependency_cached": True,
        "context_params_are_one_object": True,
    }
    # `base` is set up once for `kinds` (cached, also inside `outer`), torn down LIFO;
    # the cache does not outlive the step: `kinds_again` sets it up afresh.
    assert [(kind, name) for kind, name, _ in trace.events] == [
        ("setup", "base"),
        ("setup", "outer"),
        ("step", "kinds"),
        ("teardown", "outer"),
        ("teardown", "base"),
        ("setup", "base"),
        ("step", "kinds_again"),
        ("teardown", "base"),
        ("step", "no_params"),
    ]
    assert trace.steps[2] == ("no_params", None)
    assert trace.final.last_return_value == "no params"


@pytest.mark.parametrize(
    ("name", "status", "error"),
    [
        ("dependency_teardown_on_exception", "FAILED", "ValueError"),
        ("dependency_teardown_on_abort", "ABORTED", "AbortJob"),
        ("dependency_teardown_on_goto_end", "COMPLETED", "GoToEnd"),
        ("dependency_teardown_on_goto_step", "COMPLETED", "GoToStep"),
        ("dependency_goto_backward", "FAILED", "GoToStep"),
    ],
)
def test_dependency_teardown_when_the_step_raises(name: str, status: str, error: str) -> None:
    trace = run(name)
    assert trace.final.status == status
    act = [event for event in trace.events if event[1] in ("act", "guarded", "unguarded")]
    # The try/except teardown runs with the exception; plain code after `yield` is
    # skipped for every exception, control-flow ones included.
    assert [(kind, name, detail) for kind, name, detail in act if kind != "setup"] == [
        ("step", "act", None),
        ("teardown", "guarded", error),
    ]


def test_dependency_teardown_on_success_runs_both_in_reverse_order() -> None:
    trace = run("dependency_teardown_on_success")
    assert [(kind, name) for kind, name, _ in dependency_events(trace)] == [
        ("setup", "guarded"),
        ("setup", "unguarded"),
        ("teardown", "unguarded"),
        ("teardown", "guarded"),
    ]


def test_dependency_setup_failure_fails_without_running_the_step() -> None:
    trace = run("dependency_setup_fails")
    assert trace.steps == ()
    assert trace.final == Snapshot("FAILED", 0, 0, 0.0, None)
    assert dependency_events(trace) == [
        ("setup", "guard", {"mode": "setup_fails"}),
        ("setup", "fragile", {"mode": "setup_fails"}),
        ("teardown", "guard", "RuntimeError"),
    ]


def test_dependency_swallowing_the_exception_still_fails_the_job() -> None:
    trace = run("dependency_swallows_exception")
    assert step_names(trace) == ["guarded_step"]
    assert trace.final.status == "FAILED"
    assert ("teardown", "swallowing", "swallowed ValueError") in trace.events
    # The exception was suppressed, so the outer dependencies see a clean exit.
    assert ("teardown", "guard", None) in trace.events


def test_goto_forward_percent_depends_on_hints() -> None:
    no_hint = run("goto_forward_no_hint")
    hinted = run("goto_forward_with_hint")
    unmatched = run("goto_forward_unmatched_hint")
    for trace in (no_hint, hinted, unmatched):
        assert step_names(trace) == ["start", "d", "e"]
        assert trace.final == Snapshot(
            "COMPLETED", 5, 3, 100.0, {"to": "d", "trail": ["start", "d", "e"]}
        )
    # Without a matching hint: remaining = len(workflow) - current_step = 5.
    assert progress(no_hint)[0] == ("QUEUED", 3, 1, 20.0)
    assert progress(unmatched)[0] == ("QUEUED", 3, 1, 20.0)
    # With GoToStepPath("d"): the longest hinted path start, d, e = 3.
    assert progress(hinted)[0] == ("QUEUED", 3, 1, 33.333333)
    assert progress(no_hint)[1] == progress(hinted)[1] == ("QUEUED", 4, 2, 66.666667)


def test_goto_backward_and_to_itself_fail() -> None:
    backward = run("goto_backward")
    assert step_names(backward) == ["start", "b", "c"]
    assert backward.final.status == "FAILED"
    assert (backward.final.current_step, backward.final.steps_completed) == (2, 2)
    itself = run("goto_self")
    assert step_names(itself) == ["start"]
    assert itself.final == Snapshot("FAILED", 0, 0, 0.0, None)


def test_goto_end_sets_current_step_to_steps_completed() -> None:
    # After a jump 0 -> 3, GoToEnd at step 3 leaves current_step == 1 (the number of
    # steps completed before it), not 3 and not len(workflow).
    for name in ("goto_step_then_goto_end", "goto_step_then_goto_end_hinted"):
        trace = run(name)
        assert step_names(trace) == ["start", "d"]
        assert trace.final == Snapshot(
            "COMPLETED", 1, 2, 100.0, {"ended_at": "d", "trail": ["start"]}
        )


@pytest.mark.parametrize("name", ["goto_end_no_hint", "goto_end_with_hint"])
def test_goto_end_midway(name: str) -> None:
    trace = run(name)
    assert step_names(trace) == ["first", "second"]
    assert progress(trace) == [("QUEUED", 1, 1, 25.0), ("COMPLETED", 1, 2, 100.0)]
    assert trace.final.last_return_value == {
        "ended_at": "second",
        "seen": {"end": True, "first": True},
    }


def test_abort_midway() -> None:
    trace = run("abort_midway")
    assert step_names(trace) == ["first", "second", "third"]
    # Only the status changes: progress and last_return_value stay as before the step.
    assert trace.final == Snapshot("ABORTED", 2, 2, 50.0, {"mode": "abort", "count": 2})


def test_plain_exception_fails_the_job() -> None:
    trace = run("step_raises")
    assert step_names(trace) == ["first", "second", "third"]
    assert trace.final == Snapshot("FAILED", 2, 2, 50.0, {"mode": "raise", "count": 2})


@pytest.mark.parametrize(
    ("name", "trail", "percents"),
    [
        ("branch_next", ["route", "b", "c", "d", "finish"], [20.0, 40.0, 60.0, 80.0, 100.0]),
        ("branch_skip_one", ["route", "c", "d", "finish"], [25.0, 50.0, 75.0, 100.0]),
        ("branch_skip_two", ["route", "d", "finish"], [20.0, 66.666667, 100.0]),
        ("branch_end", ["route"], [100.0]),
    ],
)
def test_branches(name: str, trail: list[str], percents: list[float]) -> None:
    trace = run(name)
    assert step_names(trace) == trail
    assert [p for *_, p in progress(trace)] == percents
    assert trace.final.status == "COMPLETED"
    assert trace.final.last_return_value["trail"] == trail


def test_branch_end_from_the_first_step_leaves_current_step_zero() -> None:
    assert run("branch_end").final.current_step == 0


def test_input_mutation_is_only_seen_through_return_values() -> None:
    trace = run("input_mutation_abort")
    assert trace.steps == (
        ("first", {"items": []}),
        # The dependency received the very object the step gets.
        ("second", {"value": {"items": ["a", "by-dependency"], "n": 1}, "size": 2}),
        ("third", {"items": ["a", "by-dependency", "second"], "n": 2}),
    )
    # `third` cleared its input and aborted: the stored value is untouched.
    assert trace.final == Snapshot(
        "ABORTED", 2, 2, 66.666667, {"items": ["a", "by-dependency", "second"], "n": 2}
    )
    assert run("input_mutation_complete").final.last_return_value == {"third_saw_n": 999}


def test_context_mutation_travels_with_the_job() -> None:
    trace = run("context_mutation")
    assert [event for event in trace.events if event[0] == "event"] == [
        ("event", "context@first", {"seen": []}),
        ("event", "context@second", {"seen": ["first"]}),
        ("event", "context@third", {"seen": ["first", "second"]}),
    ]


def test_none_annotated_end_hint_drops_next_step_path() -> None:
    continues = run("none_annotated_end_hint_continues")
    assert step_names(continues) == ["a", "b", "c", "d"]
    assert continues.steps[2] == ("c", None)
    # From `a` the only predicted path ends at `b` (2 steps); when `b` returns normally
    # there is no NextStepPath, so remaining = len - current_step + 1 = 4 (40%).
    assert progress(continues) == [
        ("QUEUED", 1, 1, 50.0),
        ("QUEUED", 2, 2, 40.0),
        ("QUEUED", 3, 3, 75.0),
        ("COMPLETED", 4, 4, 100.0),
    ]
    ends = run("none_annotated_end_hint_ends")
    assert progress(ends) == [("QUEUED", 1, 1, 50.0), ("COMPLETED", 1, 2, 100.0)]


def test_unannotated_end_hint_keeps_next_step_path() -> None:
    continues = run("unannotated_end_hint_continues")
    assert [p for *_, p in progress(continues)] == [25.0, 50.0, 75.0, 100.0]
    ends = run("unannotated_end_hint_ends")
    assert progress(ends) == [("QUEUED", 1, 1, 25.0), ("COMPLETED", 1, 2, 100.0)]
    assert ends.final.last_return_value == "ended at b"


def test_none_passthrough() -> None:
    trace = run("none_passthrough")
    assert trace.steps == (
        ("start", None),
        ("middle", {"value": None, "ctx": None}),
        ("silent", {"value_was_none": True, "context_was_none": True}),
        ("last", None),
    )
    assert trace.final == Snapshot("COMPLETED", 4, 4, 100.0, None)


@pytest.mark.parametrize("case", ESCAPING_CASES, ids=lambda case: case.name)
def test_escaping_cases_raise_out_of_the_runner(case: Any) -> None:
    with pytest.raises(KeyError):
        run_reference(case)


# ------------------------------------------------------------------ the harness itself


def test_snapshot_normalises_status_and_percent() -> None:
    import ergate

    snapshot = Snapshot.of(ergate.JobStatus.QUEUED, 1, 1, 100 / 3, [1])
    assert snapshot == Snapshot("QUEUED", 1, 1, 33.333333, [1])
    assert Snapshot.of("FAILED", 0, 0, 0, None).percent_completed == 0.0


def test_memory_queue_round_trips_json() -> None:
    import ergate

    queue = MemoryQueue()
    job = ergate.Job(workflow_name="w", initial_input_value={"a": [1, 2]}, user_context={"k": 1})
    queue.put(job)
    job.initial_input_value["a"].append(3)
    assert len(queue) == 1
    again = queue.get_one()
    assert again is not job
    assert again.initial_input_value == {"a": [1, 2]}
    assert again.status is ergate.JobStatus.QUEUED
    assert len(queue) == 0


def test_recorder_deep_copies() -> None:
    rec = Recorder()
    value: dict[str, list[int]] = {"a": [1]}
    rec.step("s", value)
    rec.setup("d", value)
    value["a"].append(2)
    rec.teardown("d", "ValueError")
    rec.event("e", value)
    assert rec.steps == (("s", {"a": [1]}),)
    assert rec.events == (
        ("step", "s", None),
        ("setup", "d", {"a": [1]}),
        ("teardown", "d", "ValueError"),
        ("event", "e", {"a": [1, 2]}),
    )
    with pytest.raises(ValueError, match="at least one"):
        Trace.from_recording(rec, [])
