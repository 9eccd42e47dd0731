"""What a run leaves behind: the terminal state, the outcome, the final context and the path."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from .errors import describe_error
from .spec import Outcome
from .usage import ModelCall, Usage

__all__ = ["RunResult", "Step", "StepKind", "result_of"]

C = TypeVar("C")


class StepKind(enum.StrEnum):
    """How a step left its state."""

    TRANSITION = "transition"
    """Along a declared transition."""
    ERROR = "error"
    """Along an error transition: the action raised, and its writes were discarded."""
    FAIL = "fail"
    """To the workflow's failure terminal: a budget ran out, no exit was enabled, or an error no
    transition routes."""


class Step(NamedTuple):
    """One step of a run: a state's action, then the transition it took. Immutable."""

    # A NamedTuple, not a frozen dataclass: a run builds one per step and this is 3x cheaper.
    number: int
    """0 for the first step."""
    state: str
    target: str
    """Where the step went."""
    transition: str
    """The transition's name (``plan_to_search``, ``search_on_TimeoutError`` or ``fail``)."""
    kind: StepKind
    """How the step left its state."""
    started_at: float
    """Wall-clock time (seconds since the epoch) when the step began."""
    duration: float
    """Seconds the step took."""
    error: BaseException | None = None
    """The exception the action raised, if any."""
    rejected: tuple[str, ...] = ()
    """Reasons the policy's earlier answers were rejected, in order."""
    ran: bool = True
    """Whether the state's action ran (not when a budget stopped the run before it)."""
    writes: tuple[str, ...] = ()
    """The fields the step changed (assigned or changed in place); empty when it failed."""
    model_calls: tuple[ModelCall, ...] = ()
    """The model calls the step made (its policy's and its action's), in order."""

    @property
    def usage(self) -> Usage:
        """The step's model calls, summed."""
        return Usage.of(self.model_calls)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record of the step."""
        return {
            "number": self.number,
            "state": self.state,
            "target": self.target,
            "transition": self.transition,
            "kind": self.kind,
            "started_at": self.started_at,
            "duration": self.duration,
            "error": None if self.error is None else describe_error(self.error),
            "rejected": list(self.rejected),
            "ran": self.ran,
            "writes": list(self.writes),
            "model_calls": [c.to_dict() for c in self.model_calls],
        }


@dataclass(frozen=True, slots=True)
class RunResult(Generic[C]):
    """The end of a run: always a declared terminal state."""

    workflow: str
    run_id: str
    terminal: str
    outcome: Outcome
    context: C
    """The final context (the caller's input object is never mutated)."""
    path: tuple[Step, ...]
    reason: str | None = None
    """Why the run failed, when it ended in a failure terminal."""
    error: BaseException | None = None
    """The unrouted exception that ended the run, if any."""
    compiled: Any = field(default=None, repr=False, compare=False)
    """The compiled workflow that ran (what ``statemachine_agent.diagrams.diagram(result)`` and
    Jupyter's display draw the run over)."""
    waiting: str | None = None
    """The event a paused run waits for (``outcome`` is ``WAITING``, ``terminal`` the wait state);
    ``None`` once the run has ended."""

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """Jupyter shows the run over its workflow as SVG (text when Graphviz is missing)."""
        if self.compiled is None:
            return {"text/plain": repr(self)}
        bundle: dict[str, str] = self.compiled._repr_mimebundle_(run=self)
        return bundle

    @property
    def ok(self) -> bool:
        """The run ended in a success terminal."""
        return self.outcome is Outcome.SUCCESS

    @property
    def steps(self) -> int:
        """How many actions ran."""
        return sum(1 for s in self.path if s.ran)

    @property
    def usage(self) -> Usage:
        """Every model call of the run, summed (tokens, cost, latency)."""
        return Usage.of(c for s in self.path for c in s.model_calls)

    @property
    def states(self) -> list[str]:
        """The states the run passed through, the terminal included."""
        return [s.state for s in self.path] + [self.terminal]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record of the run."""
        ctx = self.context
        dump = getattr(ctx, "model_dump", None)
        return {
            "workflow": self.workflow,
            "run_id": self.run_id,
            "terminal": self.terminal,
            "outcome": self.outcome.value,
            "steps": self.steps,
            "reason": self.reason,
            "error": None if self.error is None else describe_error(self.error),
            "context": dump(mode="json") if callable(dump) else ctx,
            "path": [s.to_dict() for s in self.path],
            "waiting": self.waiting,
            "usage": {"calls": (u := self.usage).calls, "input_tokens": u.input_tokens,
                      "output_tokens": u.output_tokens, "cost": u.cost},
        }


_RESULT_ATTR = "__statemachine_agent_result__"


def result_of(error: BaseException) -> RunResult[Any] | None:
    """The recorded run an unrouted exception ended, when ``run()`` raised it; else ``None``.

    By default a run re-raises an exception no error transition routes (a bug should be loud),
    after recording the run as ended in the failure terminal: ``except Exception as e:
    result_of(e)`` gets that result.
    """
    found = getattr(error, _RESULT_ATTR, None)
    return found if isinstance(found, RunResult) else None
