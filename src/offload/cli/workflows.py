"""``offload workflows show ID`` and ``offload workflows cancel ID``."""

from __future__ import annotations

from typing import Any

import click
import msgspec

from offload.cli.context import Ctx, friendly
from offload.cli.output import emit, first_line, table
from offload.server.schemas import workflow_out
from offload.workflow.handle import WorkflowView


@click.group()
def workflows() -> None:
    """Show and cancel workflows (chains, groups)."""


def _print(view: WorkflowView, as_json: bool) -> None:
    data: dict[str, Any] = msgspec.to_builtins(workflow_out(view))
    if as_json:
        emit(data, True)
        return
    click.echo(f"workflow {view.id}: {view.state}" + (f" ({view.error})" if view.error else ""))
    rows = [
        [
            str(s["index"]),
            s["task"],
            s["state"],
            ",".join(map(str, s["waits_for"])) or "-",
            s["job_id"] or "-",
            first_line(
                msgspec.json.encode(s["result"]).decode() if s["result"] is not None else ""
            ),
            first_line(s["error"]),
        ]
        for s in data["steps"]
    ]
    table(["step", "task", "state", "after", "job", "result", "error"], rows, whole=["step"])


@workflows.command("show")
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (as GET /v1/workflows/ID).")
@click.pass_obj
@friendly
def workflows_show(obj: Ctx, workflow_id: str, as_json: bool) -> None:
    """Show a workflow: its steps, their states and results."""
    _print(obj.with_app(lambda app: app.get_workflow(workflow_id)), as_json)


@workflows.command("cancel")
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@friendly
def workflows_cancel(obj: Ctx, workflow_id: str, as_json: bool) -> None:
    """Cancel a workflow: pending steps never run, running ones are revoked."""
    _print(obj.with_app(lambda app: app.cancel_workflow(workflow_id)), as_json)
