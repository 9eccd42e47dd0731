"""Compiling a checked spec onto a ``transitions.Machine``, which validates and records every move."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from transitions import Machine, MachineError
from transitions.core import Event

from .check import CheckReport, check, fields_set_at_start, takes_tools
from .clock import Clock
from .diagrams import jupyter_bundle, to_dot, to_mermaid
from .guards import Guard
from .policies import Policy
from .runner import Run, run_blocking
from .spec import ErrorTransitionSpec, NoExit, Outcome, StateSpec, TransitionSpec, WorkflowSpec
from .tools import ToolRegistry

if TYPE_CHECKING:
    from .events import Hook
    from .result import RunResult, Step

__all__ = ["CompiledWorkflow", "compile_spec"]

C = TypeVar("C")

FAIL_TRIGGER = "__fail__"


def _quiet_transitions_logger() -> None:
    # transitions logs every trigger at INFO/DEBUG: ~4x slower and floods output. Respect a
    # level the user set on purpose; otherwise keep it to warnings.
    for name in ("transitions", "transitions.core"):
        log = logging.getLogger(name)
        if log.level == logging.NOTSET:
            log.setLevel(logging.WARNING)


class _LeanEvent(Event):
    """A trigger that validates and records a move the way ``Event.trigger`` does, without building
    an EventData and walking the callback chain: the compiled machine has no callbacks (side effects
    stay in actions, awaits out of transitions), so that chain is pure overhead on every step.
    Installed through transitions' own ``Machine.event_cls`` hook."""

    def trigger(self, model: Any, *args: Any, **kwargs: Any) -> bool:
        machine = self.machine
        source = machine.get_model_state(model)  # an unknown current state raises ValueError
        moves = self.transitions.get(source.name)
        if not moves:
            raise MachineError(f"{machine.name}Can't trigger event {self.name} from state {source.name}!")
        dest = moves[0].dest
        assert dest is not None, "the compiled machine has no internal transitions"
        machine.set_state(dest, model)  # records the move on the run's token
        return True


class _Machine(Machine):
    event_cls = _LeanEvent


@dataclass(frozen=True, slots=True)
class Exit:
    """A compiled transition: its spec, guard, bound and the machine event that fires it."""

    spec: TransitionSpec
    guard: Guard | None
    bound: int | None
    trigger: Any
    """The ``transitions`` event; its ``trigger(token)`` validates the source and moves the state."""
    key: int
    """Index into a run's traversal counters."""


@dataclass(frozen=True, slots=True)
class ErrorExit:
    """A compiled error transition."""

    spec: ErrorTransitionSpec
    bound: int | None
    trigger: Any
    key: int


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the runner needs about one state, precomputed."""

    spec: StateSpec
    name: str
    action: Callable[..., Any] | None
    is_async: bool
    reads: frozenset[str]
    writes: frozenset[str]
    allowed: frozenset[str]
    """Fields the action may read: its reads and writes."""
    exits: tuple[Exit, ...]
    """Non-default exits, in order."""
    default: Exit | None
    errors: tuple[ErrorExit, ...]
    max_visits: int | None
    decision: bool
    fail_on_no_exit: bool
    terminal: bool
    outcome: Outcome | None
    takes_tools: bool
    """The action takes a second argument: the tools handle."""
    tools: frozenset[str]
    tool_deadline: float | None


class CompiledWorkflow(Generic[C]):
    """A checked workflow, compiled and ready to run many times, concurrently."""

    def __init__(self, spec: WorkflowSpec, report: CheckReport) -> None:
        _quiet_transitions_logger()
        self.spec = spec
        """The declaration, as plain data."""
        self.report = report
        """The checker's verdicts, the worst-case step bound among them."""
        self.name = spec.name
        self.context_type: type[Any] = spec.context
        self.fields_at_start = fields_set_at_start(spec.context)
        self.field_names: frozenset[str] = frozenset(spec.context.model_fields)
        assert report.failure_terminal is not None, "check() guarantees a failure terminal"
        assert report.worst_case_steps is not None, "check() guarantees a finite bound"
        self.failure_terminal: str = report.failure_terminal
        self.max_steps: int = report.worst_case_steps
        """The default step budget: the checker's worst-case bound (capped by the spec's max_steps)."""
        self.tools = ToolRegistry(spec.tools)
        """The workflow's tools, by name."""
        self.hooks: list[Hook] = []
        """Hooks called with every event of every run of this workflow."""
        initial = next(s.name for s in spec.states if s.initial)
        self.initial: str = initial

        # One machine shared by every run: runs use their own token as the model, which the
        # machine never registers (its registry compares with ==, and decorating pydantic models
        # with triggers breaks them).
        machine_transitions: list[dict[str, Any]] = []
        for i, t in enumerate(spec.transitions):
            machine_transitions.append({"trigger": f"t{i}", "source": t.source, "dest": t.target})
        for i, e in enumerate(spec.error_transitions):
            machine_transitions.append({"trigger": f"e{i}", "source": e.source, "dest": e.target})
        non_terminal = [s.name for s in spec.states if not s.terminal]
        machine_transitions.append({"trigger": FAIL_TRIGGER, "source": non_terminal,
                                    "dest": self.failure_terminal})
        self.machine = _Machine(
            model=None,
            states=[s.name for s in spec.states],
            initial=initial,
            transitions=machine_transitions,
            auto_transitions=False,
            ignore_invalid_triggers=False,
            send_event=False,
            name=f"{spec.name}: ",
        )
        events = self.machine.events
        self.fail_trigger: Any = events[FAIL_TRIGGER]
        self.edge_names: list[str] = []
        exits: dict[str, list[Exit]] = {s.name: [] for s in spec.states}
        for i, t in enumerate(spec.transitions):
            exits[t.source].append(Exit(t, t.guard, t.max_traversals, events[f"t{i}"], len(self.edge_names)))
            self.edge_names.append(t.name)
        errors: dict[str, list[ErrorExit]] = {s.name: [] for s in spec.states}
        for i, e in enumerate(spec.error_transitions):
            errors[e.source].append(ErrorExit(e, e.max_traversals, events[f"e{i}"], len(self.edge_names)))
            self.edge_names.append(e.name)

        self.plans: dict[str, Plan] = {}
        for s in spec.states:
            ordered = sorted(exits[s.name], key=lambda x: x.spec.order)
            action = s.action
            self.plans[s.name] = Plan(
                spec=s,
                name=s.name,
                action=action,
                is_async=action is not None and inspect.iscoroutinefunction(action),
                reads=frozenset(s.reads),
                writes=frozenset(s.writes),
                allowed=frozenset(s.reads) | frozenset(s.writes),
                exits=tuple(x for x in ordered if not x.spec.default),
                default=next((x for x in ordered if x.spec.default), None),
                errors=tuple(errors[s.name]),
                max_visits=s.max_visits,
                decision=s.decision,
                fail_on_no_exit=s.on_no_exit is NoExit.FAIL,
                terminal=s.terminal,
                outcome=s.outcome,
                takes_tools=action is not None and takes_tools(action),
                tools=frozenset(s.tools),
                tool_deadline=s.tool_deadline,
            )

    # --- running (see runner.py) ----------------------------------------------------------------
    async def run(
        self,
        context: C,
        *,
        policy: Policy | None = None,
        hooks: Sequence[Hook] = (),
        max_steps: int | None = None,
        timeout: float | None = None,
        max_policy_attempts: int = 3,
        raise_errors: bool = False,
        run_id: str | None = None,
        clock: Clock | None = None,
    ) -> RunResult[C]:
        """Run the workflow on ``context`` until a terminal state; see :class:`~.runner.Run`."""
        run = Run(self, context, policy=policy, hooks=hooks, max_steps=max_steps, timeout=timeout,
                  max_policy_attempts=max_policy_attempts, raise_errors=raise_errors, run_id=run_id,
                  clock=clock)
        return await run.run_to_end()

    def run_sync(
        self,
        context: C,
        *,
        policy: Policy | None = None,
        hooks: Sequence[Hook] = (),
        max_steps: int | None = None,
        timeout: float | None = None,
        max_policy_attempts: int = 3,
        raise_errors: bool = False,
        run_id: str | None = None,
        clock: Clock | None = None,
    ) -> RunResult[C]:
        """Run from synchronous code (no event loop running in this thread)."""
        return run_blocking(self.run(context, policy=policy, hooks=hooks, max_steps=max_steps,
                                     timeout=timeout, max_policy_attempts=max_policy_attempts,
                                     raise_errors=raise_errors, run_id=run_id, clock=clock))

    async def iter(
        self,
        context: C,
        *,
        policy: Policy | None = None,
        hooks: Sequence[Hook] = (),
        max_steps: int | None = None,
        timeout: float | None = None,
        max_policy_attempts: int = 3,
        raise_errors: bool = False,
        run_id: str | None = None,
        clock: Clock | None = None,
    ) -> AsyncIterator[Step]:
        """Yield each step as it completes; the run's result is then on the last step's run.

        ``async for step in wf.iter(ctx): ...`` gives control back between steps; use
        :meth:`start` to keep a handle on the run and read ``run.result`` at the end.
        """
        run = Run(self, context, policy=policy, hooks=hooks, max_steps=max_steps, timeout=timeout,
                  max_policy_attempts=max_policy_attempts, raise_errors=raise_errors, run_id=run_id,
                  clock=clock)
        async for step in run:
            yield step

    def start(
        self,
        context: C,
        *,
        policy: Policy | None = None,
        hooks: Sequence[Hook] = (),
        max_steps: int | None = None,
        timeout: float | None = None,
        max_policy_attempts: int = 3,
        raise_errors: bool = False,
        run_id: str | None = None,
        clock: Clock | None = None,
    ) -> Run[C]:
        """A :class:`~.runner.Run` not yet started: ``async for step in run`` then ``run.result``."""
        return Run(self, context, policy=policy, hooks=hooks, max_steps=max_steps, timeout=timeout,
                   max_policy_attempts=max_policy_attempts, raise_errors=raise_errors, run_id=run_id,
                  clock=clock)

    # --- diagrams (see diagrams.py) -------------------------------------------------------------
    def diagram(self, run: RunResult[C] | dict[str, Any] | None = None, *, rankdir: str | None = None) -> Any:
        """The workflow as a ``graphviz.Digraph`` (a run, or a recorded one, laid over it if given)."""
        return to_dot(self, run, rankdir=rankdir)

    def mermaid(self) -> str:
        """The workflow as Mermaid ``stateDiagram-v2`` text."""
        return to_mermaid(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """Jupyter shows the workflow as SVG (text when Graphviz is missing)."""
        return jupyter_bundle(self.diagram(), repr(self))

    def __repr__(self) -> str:
        return (f"<CompiledWorkflow {self.name!r}: {len(self.spec.states)} states, "
                f"worst case {self.max_steps} steps>")


def compile_spec(spec: WorkflowSpec) -> CompiledWorkflow[Any]:
    """Check ``spec`` (raising :class:`~.errors.DefinitionError`) and compile it."""
    report = check(spec)
    return CompiledWorkflow(spec, report)
