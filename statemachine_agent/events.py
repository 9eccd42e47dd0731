"""Typed, frozen events delivered to hooks while a workflow runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from .errors import Budget
from .result import StepKind
from .usage import ModelCall

if TYPE_CHECKING:
    from .result import RunResult

__all__ = [
    "Budget",
    "BudgetExhausted",
    "ErrorRouted",
    "Event",
    "Hook",
    "ModelCalled",
    "PolicyChoiceRejected",
    "RunFinished",
    "RunStarted",
    "RunWaiting",
    "StepStarted",
    "ToolAttemptFailed",
    "ToolCallFailed",
    "ToolCallFinished",
    "ToolCallStarted",
    "TransitionTaken",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event: which run, of which workflow."""

    run_id: str
    workflow: str


@dataclass(frozen=True, slots=True)
class RunStarted(Event):
    """A run began in the initial state."""

    state: str
    context: Any
    max_steps: int


@dataclass(frozen=True, slots=True)
class StepStarted(Event):
    """A state's action is about to run."""

    step: int
    state: str
    visit: int
    """1 for the first visit of this state in this run."""


@dataclass(frozen=True, slots=True)
class TransitionTaken(Event):
    """The run moved along a declared transition (``kind`` says which sort)."""

    step: int
    source: str
    target: str
    transition: str
    kind: StepKind
    """How the step left its state."""
    duration: float
    """Seconds spent in the step, action and choice included."""


@dataclass(frozen=True, slots=True)
class ModelCalled(Event):
    """A model answered a request of this run (a policy's decision, an LLM step, a tool round)."""

    step: int
    state: str
    call: ModelCall


@dataclass(frozen=True, slots=True)
class PolicyChoiceRejected(Event):
    """A policy answered something that is not an enabled transition; it was not taken."""

    step: int
    state: str
    choice: Any
    reason: str
    attempt: int


@dataclass(frozen=True, slots=True)
class ErrorRouted(Event):
    """An exception from a state's action was routed by an error transition."""

    step: int
    state: str
    error: BaseException
    target: str


@dataclass(frozen=True, slots=True)
class BudgetExhausted(Event):
    """A budget ran out; the run goes to the failure terminal."""

    step: int
    state: str
    budget: Budget
    reason: str


@dataclass(frozen=True, slots=True)
class RunFinished(Event):
    """The run entered a terminal state."""

    result: RunResult[Any]


@dataclass(frozen=True, slots=True)
class RunWaiting(Event):
    """The run paused in a wait state until its event is delivered (or its deadline passes)."""

    state: str
    event: str
    deadline: float | None
    """Wall-clock seconds since the epoch (on the run's clock) when the timeout is taken."""


@dataclass(frozen=True, slots=True)
class ToolCallStarted(Event):
    """A tool call began (its arguments validated)."""

    step: int
    state: str
    tool: str
    call_id: int
    """Tells the events of concurrent calls apart."""


@dataclass(frozen=True, slots=True)
class ToolAttemptFailed(Event):
    """An attempt failed and will be retried after ``wait`` seconds."""

    step: int
    state: str
    tool: str
    call_id: int
    attempt: int
    error: BaseException | None
    wait: float


@dataclass(frozen=True, slots=True)
class ToolCallFinished(Event):
    """A tool call answered; ``fallback`` says whether its fallback did."""

    step: int
    state: str
    tool: str
    call_id: int
    attempts: int
    duration: float
    fallback: bool


@dataclass(frozen=True, slots=True)
class ToolCallFailed(Event):
    """A tool call failed for good; ``errors`` holds every attempt's error."""

    step: int
    state: str
    tool: str
    call_id: int
    errors: tuple[BaseException, ...]
    duration: float


Hook: TypeAlias = Callable[[Event], Awaitable[None] | None]
"""A plain callable taking an event; it may be async. A hook that raises is logged, not fatal."""
