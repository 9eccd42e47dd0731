"""One exception base, split into definition errors (found before a run) and run errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ContextAccessError",
    "DefinitionError",
    "Problem",
    "RunError",
    "StateMachineAgentError",
]


class StateMachineAgentError(Exception):
    """Base of every error raised by statemachine-agent."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One offender found by the checker."""

    code: str
    """A stable identifier of the rule, e.g. ``unreachable-state``; see docs/checks.md."""
    message: str
    """What is wrong and how to fix it, naming the culprit."""
    subject: str = ""
    """The state or transition at fault, when there is one."""

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class DefinitionError(StateMachineAgentError, TypeError):
    """A workflow declaration is unsafe or malformed; every problem is listed at once."""

    problems: tuple[Problem, ...]
    """Each offender, in the order the checker found them."""
    workflow: str
    """The workflow's name."""

    def __init__(self, workflow: str, problems: Sequence[Problem]) -> None:
        self.workflow = workflow
        self.problems = tuple(problems)
        count = len(self.problems)
        lines = [f"workflow {workflow!r} has {count} problem{'s' if count != 1 else ''}:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.workflow, self.problems))


class RunError(StateMachineAgentError, RuntimeError):
    """Something went wrong while a workflow ran."""


class ContextAccessError(RunError, AttributeError):
    """An action touched a context field its state did not declare, or read one no step has set.

    Never routed by error transitions: it is a bug in the workflow, not a condition to handle.
    """

    state: str
    """The state whose action did it."""
    field: str
    """The field it touched."""

    def __init__(self, state: str, field: str, message: str) -> None:
        self.state = state
        self.field = field
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.state, self.field, str(self)))
