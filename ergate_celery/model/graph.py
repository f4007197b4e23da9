"""A workflow drawn as a Mermaid flowchart, as `celery ergate graph` prints it."""

from __future__ import annotations

from typing import NamedTuple, NoReturn

from ergate_celery.exceptions import InvalidDefinitionError
from ergate_celery.model.paths import (
    FanOutPath,
    GoToEndPath,
    GoToStepPath,
    NextStepPath,
    WaitPath,
)
from ergate_celery.model.workflow import Workflow


def mermaid(workflow: Workflow) -> str:
    """`flowchart TD`: next-step edges, labelled go-to edges, and go-to-end edges to END.

    A step declaring `WaitPath` is drawn as a hexagon, its edge to the next step dotted and
    labelled with what it waits for; a step declaring `FanOutPath` as a subroutine box, its
    edge to the join dotted and labelled `FanOut`.
    """
    lines = ["flowchart TD", f"    %% workflow {workflow.unique_name}"]
    for step in workflow:
        text = _mermaid_text(step.name)
        waits = any(isinstance(path, WaitPath) for path in step.paths)
        fans_out = any(isinstance(path, FanOutPath) for path in step.paths)
        if fans_out:
            lines.append(f'    s{step.index}[["{text}"]]')
        elif waits:
            lines.append(f'    s{step.index}{{{{"{text}"}}}}')
        else:
            lines.append(f'    s{step.index}["{text}"]')
    lines.append("    END([END])")
    for edge in edges(workflow):
        source, target = f"s{edge.source}", "END" if edge.target is None else f"s{edge.target}"
        if edge.waits:
            lines.append(f'    {source} -.->|"{_mermaid_text(edge.label)}"| {target}')
        elif edge.label:
            lines.append(f"    {source} -->|{edge.label}| {target}")
        else:
            lines.append(f"    {source} --> {target}")
    return "\n".join(lines)


class Edge(NamedTuple):
    """A way from one step to the next: step indexes (`target` None is the end), the path
    hint's label ("" for the next step) and whether the step waits on the way."""

    source: int
    target: int | None
    label: str
    waits: bool


def edges(workflow: Workflow) -> list[Edge]:
    """The distinct edges of `workflow`, step by step, as its path hints declare them."""
    found: list[Edge] = []
    for step in workflow:
        for path in step.paths:
            index = workflow.next_index(step.index, path)
            target = None if index >= len(workflow) else index
            if isinstance(path, FanOutPath):
                edge = Edge(step.index, target, "FanOut", True)
            elif isinstance(path, GoToStepPath):
                edge = Edge(step.index, target, "GoToStep", False)
            elif isinstance(path, GoToEndPath):
                edge = Edge(step.index, target, "GoToEnd", False)
            elif isinstance(path, WaitPath):
                what = "Sleep" if path.signal is None else f"WaitForSignal {path.signal}"
                edge = Edge(step.index, target, what, True)
            elif isinstance(path, NextStepPath):
                edge = Edge(step.index, target, "", False)
            else:
                _unknown_path(path)
            if edge not in found:
                found.append(edge)
    return found


def _mermaid_text(text: str) -> str:
    """Text safe inside a quoted Mermaid label."""
    return text.replace('"', "#quot;")


def _unknown_path(path: object) -> NoReturn:
    raise InvalidDefinitionError(f"Unknown path hint {path!r}")
