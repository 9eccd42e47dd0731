"""Compiling a checked spec: one ``transitions.Machine`` per workflow, and a plan per state.

The machine is where a run's state lives and what its moves are checked against. Each declared
transition appears twice in its table, with :class:`Exit` objects as ``conditions``:

* under the state's trigger ``@next:<state>``, in declaration order with the default last and the
  guard as condition, so that ``transitions`` alone picks the first exit whose guard holds (what a
  non-decision state takes; the runner then fails the run if that exit's ``max_traversals`` is
  spent, rather than silently taking another);
* under its own name, with guard *and* traversal bound as condition: what a policy's answer fires
  in a decision state (a spent exit is not enabled, and is never offered).

Error routes are triggers named after them, and ``@fail`` moves any non-terminal state to the
failure terminal. The runner takes the same decisions on its hot path by calling the very same
condition objects in the same order, then fires the chosen trigger through a lean event that checks
the move is declared from the run's current state and records it on the run's token (tests drive
the machine alone, through ``transitions``' own ``Event.trigger``, on generated workflows and check
it follows the runner's path exactly). See docs/design.md for why, and what it costs.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transitions import Machine, MachineError
from transitions.core import Event

from .spec import ErrorTransitionSpec, Outcome, StateSpec, TransitionSpec, WaitSpec, WorkflowSpec

if TYPE_CHECKING:
    from .guards import Guard

__all__ = ["FAIL_TRIGGER", "ErrorExit", "Exit", "Plan", "Token", "build_machine", "build_plans"]

# Transition names match [A-Za-z0-9_-]+, so triggers of our own, with '@', never collide with them.
FAIL_TRIGGER = "@fail"


def _quiet_transitions_logger() -> None:
    # transitions logs every trigger at INFO/DEBUG: ~4x slower and floods output. Respect a
    # level the user set on purpose; otherwise keep it to warnings.
    for name in ("transitions", "transitions.core"):
        log = logging.getLogger(name)
        if log.level == logging.NOTSET:
            log.setLevel(logging.WARNING)


class _LeanEvent(Event):
    """A trigger for a move the runner already chose by these very conditions: it checks that the
    move is declared from the run's current state and records it (``Machine.set_state``), without
    building an EventData, walking the (empty) callback chain or calling the guards a second time.
    Installed through ``transitions``' own ``Machine.event_cls`` hook; ``Event.trigger`` (the
    class's parent) still drives the machine with full ``transitions`` semantics."""

    def trigger(self, model: Any, *args: Any, **kwargs: Any) -> bool:
        moves = self.transitions.get(model.state)
        if not moves:
            machine = self.machine
            source = machine.get_model_state(model)  # an unknown current state raises ValueError
            raise MachineError(f"{machine.name}Can't trigger event {self.name} from state {source.name}!")
        dest = moves[0].dest
        assert dest is not None, "the compiled machine has no internal transitions"
        # What Machine.set_state(dest, model) does for a declared destination, without its lookups:
        # the destination is a state of this machine (``transitions`` checked it when the table was
        # built), and the model's state attribute is ``state`` (``Machine.model_attribute``).
        model.state = dest
        return True


class _Machine(Machine):
    event_cls = _LeanEvent


class Token:
    """The machine's model for one run: its state, what conditions read (the read-only context and
    the traversal counters), identity-equal, with nothing for ``transitions`` to decorate."""

    __slots__ = ("context", "state", "traversals")

    def __init__(self, state: str, context: Any, traversals: list[int]) -> None:
        self.state = state
        self.context = context
        self.traversals = traversals


class Exit:
    """A compiled transition, and the ``transitions`` condition that enables it: its guard holds on
    the run's context and its traversal bound is not spent."""

    __slots__ = ("bound", "fire", "guard", "key", "name", "spec", "stops", "target")

    def __init__(self, spec: TransitionSpec, key: int) -> None:
        self.spec = spec
        self.name = spec.name
        self.target = spec.target
        self.guard: Guard[Any] | None = spec.guard
        self.bound = spec.max_traversals
        self.key = key
        """Index into a run's traversal counters."""
        self.stops = False
        """Entering the target may end (terminal) or pause (wait) the run (set by build_plans)."""
        self.fire: Callable[[Token], bool] = _unbuilt
        """Takes this exit on the workflow's machine (its trigger; set by build_machine)."""

    def __call__(self, token: Token) -> bool:
        """The guard holds (the ``@next`` trigger's condition)."""
        guard = self.guard
        return guard is None or guard(token.context)

    def enabled(self, token: Token) -> bool:
        """The guard holds and the traversal bound is not spent (a policy's pick's condition)."""
        bound = self.bound
        return (bound is None or token.traversals[self.key] < bound) and self(token)

    def __repr__(self) -> str:
        return f"<exit {self.name}>"


def _unbuilt(token: Token) -> bool:
    raise RuntimeError("this exit's machine was not built (build_machine)")


@dataclass(frozen=True, slots=True)
class ErrorExit:
    """A compiled error transition."""

    spec: ErrorTransitionSpec
    bound: int | None
    key: int


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the runner needs about one state, precomputed."""

    spec: StateSpec
    name: str
    action: Callable[..., Any] | None
    reads: frozenset[str]
    writes: frozenset[str]
    """Written on every successful visit (checked when the step ends)."""
    optional_reads: frozenset[str]
    write_set: frozenset[str]
    """Every field the action may assign: writes and optional writes."""
    allowed: frozenset[str]
    """Every field the action may read."""
    exits: tuple[Exit, ...]
    """Non-default exits, in order."""
    default: Exit | None
    errors: tuple[ErrorExit, ...]
    max_visits: int | None
    decision: bool
    terminal: bool
    outcome: Outcome | None
    takes_tools: bool
    """The action is handed the tools handle as its second argument."""
    tools: frozenset[str]
    tool_deadline: float | None
    next_trigger: str
    """The ``transitions`` trigger that takes the first enabled exit."""
    wait: WaitSpec | None
    """Set on wait states: what they wait for."""
    wait_field: str | None
    """The field a wait state's payload goes to."""
    slow: bool
    """The step needs more than the inline path: a decision, tools or a wait."""
    stops: bool
    """Entering the state may end (terminal) or pause (wait) the run."""


def passes_tools(action: Callable[..., Any], declares_tools: bool) -> bool:
    """Whether the action gets the tools handle: its second positional parameter is required, or
    the state declares tools and the action can take one. An optional second parameter of a state
    without tools (``def answer(ctx, shout=False)``) keeps its default."""
    try:
        params = list(inspect.signature(action).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 2:
        return positional[1].default is inspect.Parameter.empty or declares_tools
    return declares_tools and any(p.kind is p.VAR_POSITIONAL for p in params)


def build_plans(spec: WorkflowSpec) -> tuple[dict[str, Plan], list[str]]:
    """A plan per state and the names of every edge (indexes of the traversal counters)."""
    edge_names: list[str] = []
    exits: dict[str, list[Exit]] = {s.name: [] for s in spec.states}
    for t in spec.transitions:
        exits[t.source].append(Exit(t, len(edge_names)))
        edge_names.append(t.name)
    errors: dict[str, list[ErrorExit]] = {s.name: [] for s in spec.states}
    for e in spec.error_transitions:
        errors[e.source].append(ErrorExit(e, e.max_traversals, len(edge_names)))
        edge_names.append(e.name)
    plans: dict[str, Plan] = {}
    for s in spec.states:
        ordered = sorted(exits[s.name], key=lambda x: x.spec.order)
        action = s.action
        writes = frozenset(s.writes)
        write_set = writes | frozenset(s.optional_writes)
        takes = action is not None and passes_tools(action, bool(s.tools))
        plans[s.name] = Plan(
            spec=s,
            name=s.name,
            action=action,
            reads=frozenset(s.reads),
            writes=writes,
            optional_reads=frozenset(s.optional_reads),
            write_set=write_set,
            allowed=frozenset(s.reads) | frozenset(s.optional_reads) | write_set,
            exits=tuple(x for x in ordered if not x.spec.default),
            default=next((x for x in ordered if x.spec.default), None),
            errors=tuple(sorted(errors[s.name], key=lambda e: e.spec.order)),
            max_visits=s.max_visits,
            decision=s.decision,
            terminal=s.terminal,
            outcome=s.outcome,
            takes_tools=takes,
            tools=frozenset(s.tools),
            tool_deadline=s.tool_deadline,
            next_trigger=f"@next:{s.name}",
            wait=s.wait,
            wait_field=next(iter(s.writes), None) if s.wait is not None else None,
            slow=s.decision or takes or s.wait is not None,
            stops=s.terminal or s.wait is not None,
        )
    for xs in exits.values():
        for x in xs:
            x.stops = plans[x.target].stops
    return plans, edge_names


def build_machine(spec: WorkflowSpec, plans: dict[str, Plan], initial: str, failure_terminal: str) -> Any:
    """The workflow's ``transitions.Machine``: shared by every run, each run's token its model."""
    _quiet_transitions_logger()
    table: list[dict[str, Any]] = []
    for plan in plans.values():
        if plan.terminal:
            continue
        ordered = [*plan.exits, *((plan.default,) if plan.default is not None else ())]
        for x in ordered:
            # The first enabled exit in order: what `first_enabled` and non-decision states take.
            table.append({"trigger": plan.next_trigger, "source": plan.name, "dest": x.target,
                          "conditions": [x]})
            table.append({"trigger": x.name, "source": plan.name, "dest": x.target,
                          "conditions": [x.enabled]})
        for e in plan.errors:
            table.append({"trigger": e.spec.name, "source": plan.name, "dest": e.spec.target})
    non_terminal = [p.name for p in plans.values() if not p.terminal]
    table.append({"trigger": FAIL_TRIGGER, "source": non_terminal, "dest": failure_terminal})
    machine = _Machine(
        model=None,
        states=[s.name for s in spec.states],
        initial=initial,
        transitions=table,
        auto_transitions=False,
        ignore_invalid_triggers=False,
        send_event=False,
        name=f"{spec.name}: ",
    )
    for plan in plans.values():
        for x in (*plan.exits, *((plan.default,) if plan.default is not None else ())):
            x.fire = machine.events[x.name].trigger
    return machine
