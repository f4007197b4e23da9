"""`celery ergate workflows | graph`: the workflows the app has, paused or running, and the
graph of one."""

from __future__ import annotations

import json

import click

from ergate_celery.cli.arguments import COMMAND, BadInput, binding, ergate, note, option, out
from ergate_celery.exceptions import ErgateError
from ergate_celery.model.graph import mermaid


@ergate.command(**COMMAND)
@option("--json", "as_json", group="Output", is_flag=True, help="One JSON array of workflows.")
@click.pass_context
def workflows(ctx: click.Context, as_json: bool) -> None:
    """The registered workflows, each paused or running, with their steps.

    A workflow paused in the store that this app does not register (renamed or removed by a
    deploy) is listed too, as `paused (not registered)`: `resume` it, or register it again.
    """
    bound = binding(ctx)
    registered = bound.workflows
    with_steps = {name: [step.name for step in flow] for name, flow in registered.items()}
    paused = bound.paused_workflows()
    names = sorted(registered.keys() | paused)
    if as_json:
        rows = [
            {
                "name": name,
                "paused": name in paused,
                "registered": name in registered,
                "steps": with_steps.get(name, []),
            }
            for name in names
        ]
        out(ctx, json.dumps(rows))
        return
    if not names:
        note(ctx, "(no workflows: register them, or autodiscover_workflows() in the app module)")
        return
    width = max(len(name) for name in names)
    for name in names:
        state = "paused" if name in paused else "running"
        if name not in registered:
            state += " (not registered)"
        steps = " → ".join(with_steps.get(name, []))
        out(ctx, f"{name:<{width}}  {state:<8}  {steps}".rstrip())


@ergate.command(**COMMAND)
@click.argument("workflow")
@click.pass_context
def graph(ctx: click.Context, workflow: str) -> None:
    """A Mermaid flowchart of WORKFLOW's steps and their declared paths."""
    bound = binding(ctx)
    try:
        found = bound.workflow(workflow)
    except ErgateError as exc:
        raise BadInput(str(exc)) from None
    out(ctx, mermaid(found))
