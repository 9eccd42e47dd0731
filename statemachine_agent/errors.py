"""One exception base, split into definition errors (found before a run) and run errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ContextAccessError",
    "DefinitionError",
    "GatherFailed",
    "Problem",
    "RunError",
    "StateMachineAgentError",
    "ToolArgumentError",
    "ToolError",
    "ToolFailed",
    "ToolResultError",
    "ToolTimeout",
    "UndeclaredTool",
    "UnknownTool",
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


class ToolError(RunError):
    """Base of the errors a tool call raises; each keeps the tool's name."""

    tool: str
    """The tool's name."""

    def __init__(self, tool: str, message: str) -> None:
        self.tool = tool
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.__dict__, str(self)))


def _rebuild(cls: type[ToolError], state: dict[str, object], message: str) -> ToolError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class UnknownTool(ToolError, LookupError):
    """No tool of that name is registered on the workflow."""


class UndeclaredTool(ToolError, PermissionError):
    """The tool exists, but the calling state did not declare it in ``tools=[...]``."""


class ToolArgumentError(ToolError, ValueError):
    """A tool was called with arguments that do not validate; never retried."""

    fields: tuple[str, ...]
    """The offending argument names."""

    def __init__(self, tool: str, fields: tuple[str, ...], message: str) -> None:
        super().__init__(tool, message)
        self.fields = fields


class ToolResultError(ToolError, ValueError):
    """A tool returned a value that does not validate against its declared result type."""


class ToolTimeout(ToolError, TimeoutError):
    """A tool call ran out of time: its own timeout (``scope='call'``) or its state's deadline."""

    seconds: float
    """The limit that ran out."""
    scope: str
    """``call`` (retryable by policy) or ``state`` (the state's tool deadline: never retried)."""

    def __init__(self, tool: str, seconds: float, scope: str) -> None:
        what = "its timeout" if scope == "call" else "the state's tool deadline"
        super().__init__(tool, f"tool {tool!r} ran out of time: {what} of {seconds:g} s passed")
        self.seconds = seconds
        self.scope = scope


class ToolFailed(ToolError):
    """A tool call failed for good (after its retries, with no fallback); carries every attempt."""

    errors: tuple[BaseException, ...]
    """What each attempt raised, in order."""

    def __init__(self, tool: str, errors: tuple[BaseException, ...], message: str | None = None) -> None:
        last = errors[-1] if errors else None
        n = len(errors)
        super().__init__(tool, message or (
            f"tool {tool!r} failed after {n} attempt{'s' if n != 1 else ''}: "
            f"{type(last).__name__}: {last}"))
        self.errors = tuple(errors)

    @property
    def last(self) -> BaseException | None:
        """The last attempt's error."""
        return self.errors[-1] if self.errors else None


class GatherFailed(ToolFailed):
    """A fail-fast ``tools.gather`` stopped at a failure; carries every failure of the group."""

    def __init__(self, errors: tuple[BaseException, ...]) -> None:
        names = ", ".join(f"{type(e).__name__}: {e}" for e in errors)
        super().__init__("gather", errors, f"{len(errors)} of the gathered tool calls failed: {names}")
