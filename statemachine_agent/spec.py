"""The workflow spec: plain, frozen data that the checker reads. No ``transitions`` here."""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import Problem
from .guards import Guard

__all__ = [
    "TRANSITION_NAME",
    "ErrorTransitionSpec",
    "NoExit",
    "Outcome",
    "StateSpec",
    "TransitionSpec",
    "WaitSpec",
    "WorkflowSpec",
]


TRANSITION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a transition name must match in full: usable as an LLM function or tool name everywhere."""


class Outcome(enum.StrEnum):
    """How a terminal state ends a run."""

    SUCCESS = "success"
    FAILURE = "failure"
    WAITING = "waiting"
    """Not a terminal's: a durable run paused in a wait state (``RunResult.waiting`` names the event)."""


class NoExit(enum.StrEnum):
    """What a state does when none of its exits is enabled."""

    ERROR = "error"
    """The checker demands a default exit (the safe choice: nothing is left implicit)."""
    FAIL = "fail"
    """The run goes to the workflow's failure terminal; the spec says so explicitly."""


@dataclass(frozen=True, slots=True)
class WaitSpec:
    """What a wait state waits for: an event, its payload's model, and how long."""

    event: str
    payload: Any
    """A pydantic model class; the delivered payload is validated by it."""
    timeout: float | None = None
    """Seconds (on the run's clock) before the timeout transition is taken; ``None``: no limit."""
    on_timeout: str | None = None
    """Where the run goes when the timeout passes first."""


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One state: an action on the context, or a terminal."""

    name: str
    action: Callable[..., Any] | None = None
    """Sync or async callable receiving the context; ``None`` for terminals."""
    reads: tuple[str, ...] = ()
    """Context fields the action reads."""
    writes: tuple[str, ...] = ()
    """Context fields the action writes on every successful visit; a step that ends without
    writing one of them fails. Any other write is rejected at run time."""
    optional_reads: tuple[str, ...] = ()
    """Context fields the action may read although no path need have written them: it handles
    their default (``None``, say). The checker does not demand a write before them."""
    optional_writes: tuple[str, ...] = ()
    """Context fields the action may write on some visits only; the checker counts them as not
    written."""
    initial: bool = False
    terminal: bool = False
    outcome: Outcome | None = None
    """Set on terminals only."""
    decision: bool = False
    """A policy (an LLM, a person, a test) picks the next transition among the enabled ones."""
    max_visits: int | None = None
    """How many times the action may run in one run; bounds the loops through this state."""
    on_no_exit: NoExit = NoExit.ERROR
    description: str = ""
    tools: tuple[str, ...] = ()
    """Tools the action may call through its ``tools`` handle."""
    tool_deadline: float | None = None
    """Seconds all tool calls of one visit may take together; a call past it is never retried."""
    wait: WaitSpec | None = None
    """Set on wait states: the run pauses here until its event is delivered (or the timeout)."""


@dataclass(frozen=True, slots=True)
class TransitionSpec:
    """A guarded edge between two states."""

    source: str
    target: str
    guard: Guard[Any] | None = None
    """``None`` means always enabled."""
    default: bool = False
    """The else branch: taken only when no other exit of the source is enabled."""
    max_traversals: int | None = None
    """How many times this edge may be taken in one run; bounds the loops through it."""
    description: str = ""
    """What choosing this transition means; a policy reads it in decision states."""
    order: int = 0
    """Position among the source's exits, in declaration order; the first enabled one wins."""
    name: str = ""
    """Unique in the workflow, matching :data:`TRANSITION_NAME`; by default ``source_to_target``
    (made valid and unique by :class:`WorkflowSpec`). Policies, events, diagrams and stories use it."""


@dataclass(frozen=True, slots=True)
class ErrorTransitionSpec:
    """Where an exception raised by a state's action goes."""

    source: str
    error: type[BaseException]
    target: str
    max_traversals: int | None = None
    order: int = 0
    """Position among the source's error transitions, in declaration order."""
    name: str = ""
    """Unique in the workflow, matching :data:`TRANSITION_NAME`; by default ``source_on_ErrorType``."""


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    """A whole workflow as data: what the checker proves safe and the compiler turns into a machine."""

    name: str
    context: type[Any]
    """A pydantic ``BaseModel`` subclass."""
    states: tuple[StateSpec, ...]
    transitions: tuple[TransitionSpec, ...] = ()
    error_transitions: tuple[ErrorTransitionSpec, ...] = ()
    max_steps: int | None = None
    """A workflow-wide cap on steps, on top of the bound the checker computes."""
    tools: tuple[Any, ...] = ()
    """The workflow's :class:`~statemachine_agent.tools.Tool` objects."""
    problems: tuple[Problem, ...] = ()
    """Problems found while declaring (a malformed guard or tool option, a foreign state): the
    checker reports them with every other problem."""
    _by_name: Mapping[str, StateSpec] = field(default_factory=dict, repr=False, compare=False)
    _exits: dict[object, list[Any]] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _name_transitions(self)
        # First declaration wins; duplicates are reported by the checker, not hidden here.
        index: dict[str, StateSpec] = {}
        for s in self.states:
            name = getattr(s, "name", None)
            if isinstance(name, str):  # malformed entries are the checker's to report
                index.setdefault(name, s)
        object.__setattr__(self, "_by_name", index)

    def state(self, name: str) -> StateSpec:
        """The state called ``name``; ``KeyError`` names the known ones when there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(repr(n) for n in self._by_name)
            raise KeyError(f"no state {name!r} in workflow {self.name!r}; known: {known}") from None

    def has_state(self, name: str) -> bool:
        """Whether a state called ``name`` is declared."""
        return name in self._by_name

    def exits(self, name: str) -> tuple[TransitionSpec, ...]:
        """The transitions leaving ``name``, in order (indexed once: linear over all states)."""
        return self._out(name, self.transitions, "_exits")

    def _out(self, name: str, items: tuple[Any, ...], slot: str) -> tuple[Any, ...]:
        index: dict[object, list[Any]] | None = getattr(self, slot)
        if index is None:
            index = {}
            for t in items:
                source = getattr(t, "source", None)
                if isinstance(source, str):
                    index.setdefault(source, []).append(t)
            for group in index.values():
                group.sort(key=lambda t: t.order if isinstance(t.order, int) else 0)
            object.__setattr__(self, slot, index)
        return tuple(index.get(name, ()))


_INVALID = re.compile(r"[^A-Za-z0-9_-]+")


def _slug(text: object) -> str:
    return _INVALID.sub("_", str(text)).strip("_") or "state"


def default_transition_name(source: object, target: object) -> str:
    """``source_to_target``, with characters a function name cannot hold replaced by ``_``."""
    return f"{_slug(source)}_to_{_slug(target)}"


def default_error_name(source: object, error: object) -> str:
    """``source_on_ErrorType``."""
    return f"{_slug(source)}_on_{_slug(getattr(error, '__name__', error))}"


def _name_transitions(spec: WorkflowSpec) -> None:
    """Give every unnamed transition its default name, unique and at most 64 characters long.

    Names the user chose are kept as they are (the checker reports invalid or duplicate ones);
    a default that collides gets ``_2``, ``_3``... Linear in the number of transitions.
    """
    taken: set[str] = set()
    for t in (*spec.transitions, *spec.error_transitions):
        name = getattr(t, "name", None)
        if isinstance(name, str) and name:
            taken.add(name)

    def fresh(base: str) -> str:
        base = base[:60]
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        return name

    def named(items: tuple[Any, ...], make: Callable[[Any], str]) -> tuple[Any, ...]:
        out = []
        changed = False
        for t in items:
            if isinstance(t, (TransitionSpec, ErrorTransitionSpec)) and not t.name:
                out.append(dataclasses.replace(t, name=fresh(make(t))))
                changed = True
            else:
                out.append(t)
        return tuple(out) if changed else items

    object.__setattr__(spec, "transitions",
                       named(spec.transitions, lambda t: default_transition_name(t.source, t.target)))
    object.__setattr__(spec, "error_transitions",
                       named(spec.error_transitions, lambda t: default_error_name(t.source, t.error)))
