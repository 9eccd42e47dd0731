"""Example workflows, runnable and checked; ``python -m statemachine_agent.examples --diagrams DIR``."""

from __future__ import annotations

__all__ = ["EXAMPLES"]

EXAMPLES: dict[str, str] = {
    "research": "statemachine_agent.examples.research:workflow",
}
"""Every example workflow, by name, as ``MODULE:OBJECT``."""
