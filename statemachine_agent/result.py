"""What a run leaves behind: the terminal state, the outcome, the final context and the path."""

from __future__ import annotations

import enum
import functools
import operator
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, SupportsIndex, TypeVar, overload

from .errors import describe_error
from .spec import Outcome
from .usage import ModelCall, Usage

__all__ = ["RunResult", "Step", "StepKind", "Steps", "result_of"]

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


_FIRST_READ = threading.RLock()
"""Held while a resumed path reads its earlier steps (rare: once per path that is read)."""


class Steps(Sequence[Step]):
    """A run's path as a resumed run holds it: its steps in order, comparing, hashing and adding like
    the tuple of them (``result.path == (step, ...)``). The steps taken before the resume are read
    from the run's store the first time something needs them, so a resume costs what continuing the
    run needs, not the run's length. (A run that was never resumed holds a plain tuple.)"""

    __slots__ = ("_earlier", "_load", "_steps")

    def __init__(self, steps: Iterable[Step] = (), *, earlier: int = 0,
                 load: Callable[[], Sequence[Step]] | None = None) -> None:
        self._steps: list[Step] = list(steps)
        """The steps from ``_earlier`` on (every step once the earlier ones are loaded)."""
        self._earlier = earlier if load is not None else 0
        self._load = None if load is None else functools.cache(load)

    def _all(self) -> list[Step]:
        if self._load is not None:
            with _FIRST_READ:  # two threads asking at once: one reads, the other finds them read
                load = self._load
                if load is not None:
                    head = list(load())
                    if len(head) != self._earlier or any(s.number != i for i, s in enumerate(head)):
                        raise ValueError(f"the store gave steps {[s.number for s in head][:5]}... for the run's "
                                         f"first {self._earlier} steps: its history changed since the run was "
                                         "resumed")
                    self._steps[:0] = head
                    self._load, self._earlier = None, 0
        return self._steps

    def append(self, step: Step) -> None:
        """Add the run's next step (the runner's, while the run goes on)."""
        self._steps.append(step)

    def frozen(self) -> Steps:
        """A copy that the run's next steps do not change (sharing the earlier steps' one read)."""
        out = Steps(self._steps)
        out._earlier, out._load = self._earlier, self._load
        return out

    def __len__(self) -> int:
        return self._earlier + len(self._steps)

    @overload
    def __getitem__(self, index: SupportsIndex) -> Step: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Step, ...]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> Step | tuple[Step, ...]:
        if isinstance(index, slice):
            return tuple(self._all()[index])
        i = operator.index(index)
        n = len(self)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError("path index out of range")
        if j >= self._earlier:
            return self._steps[j - self._earlier]
        return self._all()[j]

    def __iter__(self) -> Iterator[Step]:
        return iter(tuple(self._all()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Steps, tuple)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __add__(self, other: Iterable[Step]) -> tuple[Step, ...]:
        return (*self, *other)

    def __radd__(self, other: Iterable[Step]) -> tuple[Step, ...]:
        return (*other, *self)

    def __repr__(self) -> str:
        return repr(tuple(self))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Steps, (tuple(self),))


@dataclass(frozen=True, slots=True)
class RunResult(Generic[C]):
    """The end of a run: always a declared terminal state."""

    workflow: str
    run_id: str
    terminal: str
    outcome: Outcome
    context: C
    """The final context (the caller's input object is never mutated)."""
    path: tuple[Step, ...] | Steps
    """The steps the run took, in order: a tuple, or for a resumed run :class:`Steps` (which reads the
    steps before the resume from the store when first needed, and compares equal to their tuple)."""
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


RESULT_ATTR = "__statemachine_agent_result__"


def result_of(error: BaseException) -> RunResult[Any] | None:
    """The recorded run an unrouted exception ended, when ``run()`` raised it; else ``None``.

    By default a run re-raises an exception no error transition routes (a bug should be loud),
    after recording the run as ended in the failure terminal: ``except Exception as e:
    result_of(e)`` gets that result.
    """
    found = getattr(error, RESULT_ATTR, None)
    return found if isinstance(found, RunResult) else None
