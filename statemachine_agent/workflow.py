"""Declaring a workflow: states, transitions, error routes and bounds, in decorator or builder style.

This module is in the "define" layer (docs/design.md, tests/test_layers.py): it imports only the
layers below it, with one documented exception. ``Workflow.analyze()``, ``check()`` and
``compile()`` need the checker and the compiler, which sit above it; they reach them through the
one import inside :func:`_upward`, run when one of them is called, and this module names
their result types (``CheckReport``, ``CompiledWorkflow``) and the run's ``Tools`` handle only
under ``TYPE_CHECKING``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeAlias, TypedDict, TypeVar, Unpack, overload

from pydantic import BaseModel

from ._tooldef import Tool, ToolOptions, ToolRegistry
from .errors import Problem, ProblemCode, WaitTimedOut
from .guards import Guard, Predicate, as_guard
from .spec import ErrorTransitionSpec, NoExit, Outcome, StateSpec, TransitionSpec, WaitSpec, WorkflowSpec

if TYPE_CHECKING:
    from .check import CheckReport
    from .compile import CompiledWorkflow
    from .tools import Tools

__all__ = ["Action", "StateOptions", "StateRef", "ToolOptions", "Workflow"]

C = TypeVar("C", bound=BaseModel)
D = TypeVar("D", bound=BaseModel)

Action: TypeAlias = Callable[[D], object] | Callable[[D, "Tools"], object]
"""A state's action: ``(ctx)`` or ``(ctx, tools)``, sync or async, typed over the context model."""


class StateRef(Generic[C]):
    """A handle on a declared state: pass it to ``transition()`` instead of a string.

    Calling it calls the state's action, so a decorated function stays testable on its own.
    """

    __slots__ = ("action", "name", "workflow")

    name: str
    """The state's name."""
    workflow: Workflow[C]
    """The workflow that declared it."""
    action: Action[C] | None
    """The state's action; ``None`` for terminals."""

    def __init__(self, name: str, workflow: Workflow[C], action: Action[C] | None) -> None:
        self.name = name
        self.workflow = workflow
        self.action = action

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        action: Callable[..., Any] | None = self.action
        if action is None:
            raise TypeError(f"state {self.name!r} is a terminal state and has no action to call")
        return action(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<state {self.name!r} of workflow {self.workflow.name!r}>"


class StateOptions(TypedDict, total=False):
    """The options of a state: keyword arguments of ``state`` and ``add_state`` (declared once, here)."""

    initial: bool
    """The run starts here (exactly one state)."""
    reads: Iterable[str]
    """Fields the action needs set (checked: written on every path before)."""
    writes: Iterable[str]
    """Fields the action writes on every successful visit."""
    optional_reads: Iterable[str]
    """Fields the action reads knowing they may still hold their default."""
    optional_writes: Iterable[str]
    """Fields the action may write on some visits only."""
    decision: bool
    """A policy picks among the enabled exits."""
    max_visits: int | None
    """How many times the state may run."""
    on_no_exit: NoExit | str
    """What happens when no exit is enabled (default: an error)."""
    description: str
    """For people and policies (default: the action's docstring)."""
    tools: Iterable[str]
    """The tools the action may call."""
    tool_deadline: float | None
    """Seconds every tool call of one visit must end within, together."""


def _known(options: Any, kind: Any, where: str) -> None:
    """``TypeError`` naming an option ``kind`` (a TypedDict) does not declare, and the ones it does."""
    unknown = sorted(set(options) - set(kind.__annotations__))
    if unknown:
        raise TypeError(f"{where}() got unknown option(s) {', '.join(map(repr, unknown))}: its options are "
                        f"{', '.join(sorted(kind.__annotations__))}")


def _field_names(value: Iterable[str] | str) -> tuple[str, ...]:
    # Anything but a collection of names is kept as it is: the checker reports it (bad-field),
    # with every other problem, naming the state.
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(value)
    return value  # type: ignore[return-value]


def _enum(kind: type[Outcome] | type[NoExit], value: Any) -> Any:
    try:
        return kind(value)
    except ValueError:
        return value  # the checker reports it, with every other problem


class _Upward(NamedTuple):
    analyze: Callable[[WorkflowSpec], CheckReport]
    check: Callable[[WorkflowSpec], CheckReport]
    compile: Callable[[WorkflowSpec], CompiledWorkflow[Any]]


def _upward() -> _Upward:
    """The checker and the compiler: the define layer's one reach upward (see the module's docstring),
    an import run when a workflow is analyzed, checked or compiled, never at import."""
    from . import check, compile  # noqa: PLC0415  (the one documented upward import)

    return _Upward(check.analyze, check.check, compile.compile_spec)


def _await_event(ctx: Any) -> None:
    """A wait state's action: the runner writes the delivered payload itself (see runner.py)."""


class Workflow(Generic[C]):
    """A workflow under construction. Declare states and transitions, then ``compile()``.

    Decorator style::

        wf = Workflow("research", Ctx)

        @wf.state(initial=True, reads=["question"], writes=["hits"])
        def search(ctx: Ctx) -> None: ...

        done = wf.terminal("done")
        wf.transition(search, done)

    Builder style: ``wf.add_state("search", search_fn, initial=True, ...)`` and chained
    ``wf.transition(...).transition(...)``.
    """

    def __init__(self, name: str, context: type[C], *, max_steps: int | None = None) -> None:
        # A bad context model or max_steps is the checker's to report, with every other problem.
        if not isinstance(name, str) or not name:
            raise TypeError(f"workflow name must be a non-empty string, got {name!r}")
        self.name = name
        """The workflow's name, shown in messages, events and diagrams."""
        self.context = context
        """The pydantic model of the context."""
        self.max_steps = max_steps
        """A workflow-wide cap on steps, on top of the bound the checker computes."""
        self._states: list[StateSpec] = []
        self._transitions: list[TransitionSpec] = []
        self._errors: list[ErrorTransitionSpec] = []
        self._exits: Counter[str] = Counter()
        self._error_exits: Counter[str] = Counter()
        self._problems: list[Problem] = []
        self._tools: list[Tool] = []
        self.tools = ToolRegistry()
        """The workflow's tools; states declare which they may call."""

    # --- states --------------------------------------------------------------------------------
    @overload
    def state(self, action: Action[C], /) -> StateRef[C]: ...

    @overload
    def state(self, action: None = None, /, *, name: str | None = None,
              **options: Unpack[StateOptions]) -> Callable[[Action[C]], StateRef[C]]: ...

    def state(self, action: Action[C] | None = None, /, *, name: str | None = None,
              **options: Unpack[StateOptions]) -> StateRef[C] | Callable[[Action[C]], StateRef[C]]:
        """Declare a state whose action is the decorated function (named after it by default; its
        docstring is the description unless ``description=`` is given). See :class:`StateOptions`."""
        _known(options, StateOptions, "state")

        def decorate(fn: Action[C]) -> StateRef[C]:
            state_name = name if name is not None else getattr(fn, "__name__", None)
            if state_name is None:
                raise TypeError(f"cannot name a state after {fn!r}: pass name='...'")
            described: StateOptions = {**options, "description": options.get("description")
                                       or (fn.__doc__ or "").strip()}
            return self.add_state(state_name, fn, **described)

        if action is not None:
            return decorate(action)
        return decorate

    def add_state(self, name: str, action: Action[C], **options: Unpack[StateOptions]) -> StateRef[C]:
        """Declare a state (builder style). See :class:`StateOptions`."""
        _known(options, StateOptions, "add_state")
        self._states.append(
            StateSpec(
                name=name,
                action=action,
                reads=_field_names(options.get("reads", ())),
                writes=_field_names(options.get("writes", ())),
                optional_reads=_field_names(options.get("optional_reads", ())),
                optional_writes=_field_names(options.get("optional_writes", ())),
                initial=options.get("initial", False),
                decision=options.get("decision", False),
                max_visits=options.get("max_visits"),
                on_no_exit=_enum(NoExit, options.get("on_no_exit", NoExit.ERROR)),
                description=options.get("description", ""),
                tools=_field_names(options.get("tools", ())),
                tool_deadline=options.get("tool_deadline"),
            )
        )
        return StateRef(name, self, action)

    def wait(self, name: str, *, event: str, payload: type[BaseModel], writes: Iterable[str],
             timeout: float | None = None, on_timeout: StateRef[C] | str | None = None, initial: bool = False,
             reads: Iterable[str] = (), description: str = "", max_visits: int | None = None) -> StateRef[C]:
        """Declare a wait state: the run pauses here until ``event`` is delivered, then writes its
        payload (validated by ``payload``) to the one field in ``writes`` and leaves by the
        transitions declared from it, like any state.

        With a store the paused run is committed and the process may exit; ``compiled.deliver(run_id,
        event, payload, store=store)`` continues it, in any process. The code before the wait never
        runs again. ``timeout`` seconds after the run entered the state, if no event came, the run
        goes to ``on_timeout`` instead, along the error transition ``<name>_timeout`` (it routes
        :class:`~.errors.WaitTimedOut`), which the checker's bound counts like any other.
        """
        self._states.append(
            StateSpec(
                name=name,
                action=_await_event,
                reads=_field_names(reads),
                writes=_field_names(writes),
                initial=initial,
                max_visits=max_visits,
                description=description,
                wait=WaitSpec(event, payload, timeout, None if on_timeout is None else
                              self._name(on_timeout, "on_timeout")),
            )
        )
        if on_timeout is not None:
            dst = self._name(on_timeout, "on_timeout")
            order = self._error_exits[name]
            self._error_exits[name] += 1
            self._errors.append(ErrorTransitionSpec(name, WaitTimedOut, dst, None, order, f"{name}_timeout"))
        return StateRef(name, self, _await_event)

    def terminal(self, name: str, *, outcome: Outcome | str = Outcome.SUCCESS,
                 description: str = "") -> StateRef[C]:
        """Declare a terminal state: entering it ends the run with ``outcome``."""
        self._states.append(
            StateSpec(name=name, terminal=True, outcome=_enum(Outcome, outcome), description=description)
        )
        return StateRef(name, self, None)

    # --- tools ----------------------------------------------------------------------------------
    @overload
    def tool(self, fn: Callable[..., Any], /) -> Tool: ...

    @overload
    def tool(self, fn: None = None, /, **options: Unpack[ToolOptions]) -> Callable[[Callable[..., Any]], Tool]: ...

    def tool(self, fn: Callable[..., Any] | None = None, /,
             **options: Unpack[ToolOptions]) -> Tool | Callable[[Callable[..., Any]], Tool]:
        """Register a tool (a sync or async function with typed parameters), bare or with options
        (see :class:`ToolOptions`).

        ``effect`` says what a call does to the world, and so what a durable run may do with a call
        a crash interrupted: ``"read"`` (run it again), ``"idempotent"`` (run it again with the same
        ``idempotency_key``) or ``"at_most_once"`` (never again: ``EffectOutcomeUnknown``, or
        ``reconcile(arguments, key)`` looks the outcome up). See docs/durability.md.
        """
        _known(options, ToolOptions, "tool")

        def decorate(f: Callable[..., Any]) -> Tool:
            return self.add_tool(Tool(f, **options))

        if fn is not None:
            return decorate(fn)
        return decorate

    def add_tool(self, tool: Tool) -> Tool:
        """Register a :class:`~statemachine_agent.tools.Tool` built elsewhere (builder style)."""
        if not isinstance(tool, Tool):
            raise TypeError(f"add_tool() takes a Tool, got {tool!r}: wrap the function, Tool(fn, ...)")
        # Every tool goes into the spec, duplicates included: the checker reports them.
        self._tools.append(tool)
        if tool.name not in self.tools:
            self.tools.add(tool)
        return tool

    # --- transitions ---------------------------------------------------------------------------
    def _name(self, ref: StateRef[Any] | str, role: str) -> str:
        if isinstance(ref, StateRef):
            if ref.workflow is not self:
                self._problems.append(Problem(
                    ProblemCode.FOREIGN_STATE,
                    f"{role} {ref!r} belongs to workflow {ref.workflow.name!r}, not {self.name!r}: "
                    "declare the state in this workflow",
                    ref.name,
                ))
            return ref.name
        return ref  # anything but a name: the checker reports it as an unknown state

    def guard(self, fn: Predicate[C], /, *, name: str | None = None, reads: Iterable[str] = ()) -> Guard[C]:
        """A guard on this workflow's context: mypy checks the predicate (a lambda too) against it."""
        return Guard(fn, name=name, reads=reads)

    def transition(
        self,
        source: StateRef[C] | str,
        target: StateRef[C] | str,
        *,
        guard: Guard[C] | Predicate[C] | None = None,
        default: bool = False,
        max_traversals: int | None = None,
        description: str = "",
        name: str = "",
    ) -> Workflow[C]:
        """Declare a transition; exits of a state are tried in the order they are declared.

        ``name`` (default ``source_to_target``) identifies it to policies, events, diagrams and
        stories; it must match ``[A-Za-z0-9_-]{1,64}`` so an LLM can use it as a function name.
        """
        src, dst = self._name(source, "source"), self._name(target, "target")
        order = self._exits[src]
        self._exits[src] += 1
        # A guard that is not callable is kept as it is: the checker reports it (bad-guard), naming
        # the transition, with every other problem.
        self._transitions.append(
            TransitionSpec(
                source=src,
                target=dst,
                guard=as_guard(guard) if callable(guard) else guard,
                default=default,
                max_traversals=max_traversals,
                description=description,
                order=order,
                name=name,
            )
        )
        return self

    def on_error(
        self,
        source: StateRef[C] | str,
        error: type[Exception],
        target: StateRef[C] | str,
        *,
        max_traversals: int | None = None,
        name: str = "",
    ) -> Workflow[C]:
        """Route ``error`` (and its subclasses) raised by ``source``'s action to ``target``.

        ``name`` defaults to ``source_on_ErrorType``.
        """
        src, dst = self._name(source, "source"), self._name(target, "target")
        order = self._error_exits[src]
        self._error_exits[src] += 1
        self._errors.append(ErrorTransitionSpec(src, error, dst, max_traversals, order, name))
        return self

    # --- results -------------------------------------------------------------------------------
    def spec(self) -> WorkflowSpec:
        """The declaration as plain data (unchecked)."""
        return WorkflowSpec(
            name=self.name,
            context=self.context,
            states=tuple(self._states),
            transitions=tuple(self._transitions),
            error_transitions=tuple(self._errors),
            max_steps=self.max_steps,
            tools=tuple(self._tools),
            problems=tuple(self._problems),
        )

    def analyze(self) -> CheckReport:
        """Run every check and return the report, without raising."""
        return _upward().analyze(self.spec())

    def check(self) -> CheckReport:
        """Run every check; raise :class:`DefinitionError` listing every problem."""
        return _upward().check(self.spec())

    def compile(self) -> CompiledWorkflow[C]:
        """Check the workflow and compile it onto a ``transitions`` machine, ready to run (its
        diagrams: :func:`statemachine_agent.diagrams.diagram`)."""
        compiled: CompiledWorkflow[C] = _upward().compile(self.spec())
        return compiled

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}: {len(self._states)} states, {len(self._transitions)} transitions>"
