"""A workflow drawn as a Mermaid flowchart, as `celery ergate graph` prints it."""

from __future__ import annotations

from typing import NoReturn

from .exceptions import InvalidDefinitionError
from .paths import GoToEndPath, GoToStepPath, NextStepPath, WaitPath
from .workflow import Workflow


def mermaid(workflow: Workflow) -> str:
    """`flowchart TD`: next-step edges, labelled go-to edges, and go-to-end edges to END.

    A step declaring `WaitPath` is drawn as a hexagon, its edge to the next step dotted and
    labelled with what it waits for.
    """
    lines = ["flowchart TD", f"    %% workflow {workflow.unique_name}"]
    for step in workflow:
        text = _mermaid_text(step.name)
        waits = any(isinstance(path, WaitPath) for path in step.paths)
        lines.append(
            f'    s{step.index}{{{{"{text}"}}}}' if waits else f'    s{step.index}["{text}"]'
        )
    lines.append("    END([END])")
    seen: set[str] = set()
    for step in workflow:
        for path in step.paths:
            target = workflow.next_index(step.index, path)
            node = "END" if target >= len(workflow) else f"s{target}"
            if isinstance(path, GoToStepPath):
                edge = f"s{step.index} -->|GoToStep| {node}"
            elif isinstance(path, GoToEndPath):
                edge = f"s{step.index} -->|GoToEnd| {node}"
            elif isinstance(path, WaitPath):
                what = "Sleep" if path.signal is None else f"WaitForSignal {path.signal}"
                edge = f's{step.index} -.->|"{_mermaid_text(what)}"| {node}'
            elif isinstance(path, NextStepPath):
                edge = f"s{step.index} --> {node}"
            else:
                _unknown_path(path)
            if edge not in seen:
                seen.add(edge)
                lines.append(f"    {edge}")
    return "\n".join(lines)


def _mermaid_text(text: str) -> str:
    """Text safe inside a quoted Mermaid label."""
    return text.replace('"', "#quot;")


def _unknown_path(path: object) -> NoReturn:
    raise InvalidDefinitionError(f"Unknown path hint {path!r}")
