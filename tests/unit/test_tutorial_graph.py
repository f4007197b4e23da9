"""The tutorial's workflow draws as it runs: `ship` ends the job, so the graph has no edge
from ship to refund (a step annotated with a return type gets Ergate's implicit next-step
path; the tutorial annotates `ship -> None` and says why)."""

import re
from pathlib import Path

from ergate_celery.model.graph import edges

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_tutorials_graph_has_no_edge_from_ship_to_refund() -> None:
    text = README.read_text()
    found = re.search(
        r"<!-- file: orders/workflows.py -->\n```python\n(.*?)^```", text, re.S | re.M
    )
    assert found is not None
    namespace: dict[str, object] = {"__name__": "tutorial_workflows"}
    exec(compile(found.group(1), "orders/workflows.py", "exec"), namespace)
    workflow = namespace["workflow"]
    steps = [step.name for step in workflow]  # type: ignore[attr-defined]
    drawn = {
        (steps[edge.source], "END" if edge.target is None else steps[edge.target])
        for edge in edges(workflow)  # type: ignore[arg-type]
    }
    assert ("ship", "END") in drawn
    assert ("ship", "refund") not in drawn
    assert ("charge", "refund") in drawn  # the declared GoToStepPath
