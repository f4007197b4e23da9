"""Draw one trace as a timeline PNG from spans saved as JSON lines (`tests/telemetry.py`).

    python tools/draw_trace.py FOLDER OUT.png

FOLDER holds the `spans-*.jsonl` files the processes of a run wrote (keep a test's with
`pytest --basetemp=...`). Each span is a bar from its start to its end, in start order, indented
under its parent, with the process that made it; a step that raised is red. Used for the
picture in docs/tracing.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {"web": "#4c78a8", "worker": "#59a14f", "error": "#e15759"}


def read(folder: Path) -> list[dict[str, Any]]:
    spans = []
    for path in sorted(folder.glob("spans-*.jsonl")):
        process = "web" if path.stem == "spans-web" else "worker"
        for line in path.read_text().splitlines():
            if line.strip():
                spans.append({**json.loads(line), "process": process})
    return spans


def depth(span: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> int:
    level, parent = 0, span["parent_id"]
    while parent in by_id:
        level, parent = level + 1, by_id[parent]["parent_id"]
    return level


def draw(spans: list[dict[str, Any]], out: Path) -> None:
    spans.sort(key=lambda span: span["start"])
    by_id = {span["span_id"]: span for span in spans}
    origin = spans[0]["start"]
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(spans) + 1.4))
    for row, span in enumerate(spans):
        start = (span["start"] - origin) / 1e9
        width = max((span["end"] - span["start"]) / 1e9, 0.02)
        colour = COLOURS["error"] if span["status"] == "ERROR" else COLOURS[span["process"]]
        ax.barh(row, width, left=start, color=colour, height=0.6)
        attributes = span["attributes"]
        label = "  " * depth(span, by_id) + span["name"]
        if "ergate.attempt" in attributes:
            label += f"  #{attributes['ergate.attempt']} → {attributes['ergate.job.status']}"
        elif "ergate.job.status" in attributes:
            label += f"  → {attributes['ergate.job.status']}"
        if span["exceptions"]:
            label += f"  ({', '.join(span['exceptions'])})"
        ax.text(start + width + 0.05, row, label, va="center", fontsize=8.5)
    ax.set_yticks([])
    ax.invert_yaxis()
    end = max((span["end"] - origin) / 1e9 for span in spans)
    ax.set_xlim(0, end * 1.55)
    ax.set_xlabel("seconds since the request began")
    trace_id = spans[0]["trace_id"]
    ax.set_title(f"trace {trace_id}: blue = web process, green = worker, red = ERROR", fontsize=10)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    spans = read(folder)
    traces = {span["trace_id"] for span in spans}
    if len(traces) != 1:
        print(f"{folder} holds {len(traces)} traces; draw one at a time")
        return 1
    draw(spans, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
