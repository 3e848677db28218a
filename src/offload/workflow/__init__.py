"""Workflows: chains, groups and callbacks that advance with each step's outcome.

See docs/workflows.md. ``canvas`` builds and validates the shape, ``record`` holds the stored
form and the one rule that advances it, ``handle`` is what users hold and see.
"""

from offload.workflow.canvas import Chain, Group, Signature, chain, group
from offload.workflow.handle import StepView, Workflow, WorkflowView

__all__ = ["Chain", "Group", "Signature", "StepView", "Workflow", "WorkflowView", "chain", "group"]
