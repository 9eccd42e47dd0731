"""Typed, frozen events delivered to hooks while a workflow runs.

Each event is an immutable record of named fields (``event.step``, ``event.state``, ...), compared
by type and value, built by the runner only when a hook listens. It is a ``tuple`` underneath: a step
builds two of them, and a tuple is built in one C call where a frozen dataclass sets each field
through ``object.__setattr__`` (hooks on must cost at most 1.1x a step without them,
``benchmarks/bench_runner.py``). ``Event.fields`` names the fields in order and ``to_dict()`` gives them
as a dict.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Awaitable, Callable
from operator import itemgetter
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, TypeVar, dataclass_transform

from .errors import Budget
from .result import StepKind
from .usage import ModelCall

if TYPE_CHECKING:
    from .result import RunResult

__all__ = [
    "Budget",
    "BudgetExhausted",
    "DecisionOffered",
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

E = TypeVar("E", bound=type)


@dataclass_transform(frozen_default=True)
def _event(cls: E) -> E:
    """Give an event class its fields: its own annotations after its base's, each read by position."""
    base: tuple[str, ...] = getattr(cls, "fields", ())
    own = tuple(name for name in inspect.get_annotations(cls) if name != "fields")
    names = base + own
    for i, name in enumerate(own, start=len(base)):
        if name not in cls.__dict__:  # a property of the class's own (RunStarted.context) stays
            setattr(cls, name, property(itemgetter(i), doc=f"The event's {name!r} field."))
    setattr(cls, "fields", names)  # noqa: B010  (mypy: the transform's class has no such attribute)
    setattr(cls, "__match_args__", names)  # noqa: B010
    return cls


@_event
class Event(tuple[Any, ...]):
    """Base of every event: which run, of which workflow."""

    __slots__ = ()
    fields: ClassVar[tuple[str, ...]]
    """The event's field names, in order (its constructor's positional parameters)."""

    run_id: str
    workflow: str

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        names = cls.fields
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes {len(names)} fields ({', '.join(names)}), got {len(args)}")
        values = list(args)
        for name in names[len(args):]:
            if name not in kwargs:
                raise TypeError(f"{cls.__name__}() is missing field {name!r}: give every one of "
                                f"{', '.join(names)}")
            values.append(kwargs.pop(name))
        if kwargs:
            raise TypeError(f"{cls.__name__}() got unknown or repeated fields {sorted(kwargs)}: its fields are "
                            f"{', '.join(names)}")
        return tuple.__new__(cls, values)

    def __getnewargs__(self) -> tuple[Any, ...]:  # copy and pickle rebuild it field by field
        return tuple(self)

    def to_dict(self) -> dict[str, Any]:
        """The fields by name."""
        return {name: getattr(self, name) for name in self.fields}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.fields)})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((type(self), tuple(self)))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")


class StartCopy:
    """The context a run started with, copied deeply when a hook first reads it (not before: a no-op
    hook must not pay a copy of the whole context per run). The run never changes in place a value it
    does not own (it copies it on its first write), so the copy, whenever it is made, is the start."""

    __slots__ = ("_copy", "_start")

    def __init__(self, start: Any) -> None:
        self._start = start
        self._copy: Any = _NOT_COPIED

    def get(self) -> Any:
        found = self._copy
        if found is _NOT_COPIED:
            start = self._start
            try:
                found = start.model_copy(deep=True)
            except Exception:  # a value that cannot be copied: the event gets a shallow copy
                found = start.model_copy()
            self._copy = found
        return found

    def __eq__(self, other: object) -> bool:
        return bool(self.get() == (other.get() if isinstance(other, StartCopy) else other))

    __hash__ = None  # type: ignore[assignment]

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return copy.deepcopy(self.get(), memo)

    def __reduce__(self) -> Any:
        return (copy.deepcopy, (self.get(),))


_NOT_COPIED: Any = object()


@_event
class RunStarted(Event):
    """A run began in the initial state."""

    __slots__ = ()

    state: str
    context: Any  # read through the property below
    max_steps: int
    trace: dict[str, str]
    """The run's trace context, carried across its attempts: a store keeps it with the run's record,
    so when the run goes on after a crash or a wait this holds what its earlier attempt put here
    (empty for a new run). A tracing hook reads it to link to the earlier trace and puts its own
    context here (W3C headers such as ``traceparent``: strings only); it is stored with the run's
    next commit. The same dict for every event of one attempt."""

    @property  # type: ignore[no-redef]
    def context(self) -> Any:
        """A deep copy of the context the run started with (made when first read)."""
        value = self[3]
        return value.get() if type(value) is StartCopy else value


@_event
class StepStarted(Event):
    """A state's action is about to run."""

    __slots__ = ()

    step: int
    state: str
    visit: int
    """1 for the first visit of this state in this run."""


@_event
class TransitionTaken(Event):
    """The run moved along a declared transition (``kind`` says which sort)."""

    __slots__ = ()

    step: int
    source: str
    target: str
    transition: str
    kind: StepKind
    """How the step left its state."""
    duration: float
    """Seconds spent in the step, action and choice included."""


@_event
class ModelCalled(Event):
    """A model answered a request of this run (a policy's decision, an LLM step, a tool round)."""

    __slots__ = ()

    step: int
    state: str
    call: ModelCall


@_event
class PolicyChoiceRejected(Event):
    """A policy answered something that is not an enabled transition; it was not taken."""

    __slots__ = ()

    step: int
    state: str
    choice: Any
    reason: str
    attempt: int


@_event
class DecisionOffered(Event):
    """A decision state asks its policy to pick among more than one enabled transition."""

    __slots__ = ()

    step: int
    state: str
    options: tuple[str, ...]
    """The enabled transitions' names, in declaration order (the chosen one is the step's
    ``TransitionTaken.transition``; a rejected answer is a ``PolicyChoiceRejected``)."""


@_event
class ErrorRouted(Event):
    """An exception from a state's action was routed by an error transition."""

    __slots__ = ()

    step: int
    state: str
    error: BaseException
    target: str


@_event
class BudgetExhausted(Event):
    """A budget ran out; the run goes to the failure terminal."""

    __slots__ = ()

    step: int
    state: str
    budget: Budget
    reason: str


@_event
class RunFinished(Event):
    """The run entered a terminal state."""

    __slots__ = ()

    result: RunResult[Any]


@_event
class RunWaiting(Event):
    """The run paused in a wait state until its event is delivered (or its deadline passes)."""

    __slots__ = ()

    state: str
    event: str
    deadline: float | None
    """Wall-clock seconds since the epoch (on the run's clock) when the timeout is taken."""


@_event
class ToolCallStarted(Event):
    """A tool call began (its arguments validated)."""

    __slots__ = ()

    step: int
    state: str
    tool: str
    call_id: int
    """Tells the events of concurrent calls apart."""
    effect: str
    """The tool's effect class (``read``, ``idempotent``, ``at_most_once``, ...)."""
    key: str | None
    """The call's stable key (``run/step/index``: the journal's key in a durable run), or ``None``
    for a call of a run that is not stored by a tool that takes no key."""


@_event
class ToolAttemptFailed(Event):
    """An attempt failed and will be retried after ``wait`` seconds."""

    __slots__ = ()

    step: int
    state: str
    tool: str
    call_id: int
    attempt: int
    error: BaseException | None
    wait: float


@_event
class ToolCallFinished(Event):
    """A tool call answered; ``fallback`` says whether its fallback did."""

    __slots__ = ()

    step: int
    state: str
    tool: str
    call_id: int
    attempts: int
    duration: float
    fallback: bool


@_event
class ToolCallFailed(Event):
    """A tool call failed for good; ``errors`` holds every attempt's error."""

    __slots__ = ()

    step: int
    state: str
    tool: str
    call_id: int
    errors: tuple[BaseException, ...]
    duration: float


Hook: TypeAlias = Callable[[Event], Awaitable[None] | None]
"""A plain callable taking an event; it may be async. A hook that raises is logged, not fatal."""
