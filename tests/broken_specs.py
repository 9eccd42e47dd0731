"""One small broken workflow per checker rule; shared by the unit tests and the docs test."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel

from statemachine_agent import Context, DefinitionError, Workflow, guard
from statemachine_agent.check import CheckReport, analyze, check
from statemachine_agent.spec import Outcome, StateSpec, TransitionSpec, WorkflowSpec
from statemachine_agent.tools import Tool


class Ctx(Context):
    """A context with one required input and a few optional fields."""

    question: str
    query: str | None = None
    hits: list[str] | None = None
    answer: str | None = None
    attempts: int = 0


def base(name: str = "demo") -> Workflow[Ctx]:
    """A workflow with the two usual terminals already declared."""
    wf = Workflow(name, Ctx)
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    return wf


def noop(ctx: Ctx) -> None:
    """An action that does nothing."""


class Checkable(Protocol):
    """What the tests use of a broken example: a Workflow, or a spec built by hand."""

    def spec(self) -> WorkflowSpec: ...
    def analyze(self) -> CheckReport: ...
    def check(self) -> CheckReport: ...


class SpecCase:
    """A spec built by hand (what ``Workflow`` would refuse to declare), checked like a Workflow."""

    def __init__(self, spec: WorkflowSpec) -> None:
        self._spec = spec

    def spec(self) -> WorkflowSpec:
        return self._spec

    def analyze(self) -> CheckReport:
        return analyze(self._spec)

    def check(self) -> CheckReport:
        return check(self._spec)


def by_hand(*states: StateSpec, transitions: tuple[TransitionSpec, ...] = (), tools: tuple[Any, ...] = (),
            with_terminals: bool = True) -> SpecCase:
    """A hand-built spec of ``states`` (plus the two usual terminals)."""
    terminals = (StateSpec("done", terminal=True, outcome=Outcome.SUCCESS),
                 StateSpec("failed", terminal=True, outcome=Outcome.FAILURE)) if with_terminals else ()
    return SpecCase(WorkflowSpec("demo", Ctx, (*states, *terminals), transitions, tools=tools))


def search(q: str) -> list[str]:
    """A tool."""
    return [q]


def unknown_state() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "dne", guard=guard(lambda c: c.attempts > 0, name="retrying"))
    wf.transition("plan", "done", default=True)
    return wf


def duplicate_state() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.add_state("plan", noop)
    wf.transition("plan", "done")
    return wf


def no_initial() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop)
    wf.transition("plan", "done")
    return wf


def several_initial() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.add_state("search", noop, initial=True)
    wf.transition("plan", "done")
    wf.transition("search", "done")
    return wf


def terminal_exit() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done")
    wf.transition("done", "plan")
    return wf


def bad_action() -> Workflow[Ctx]:
    wf = base()

    def three_args(ctx: Ctx, tools: object, extra: int) -> None:
        """Needs an argument the runner never passes."""

    wf.add_state("plan", three_args, initial=True)
    wf.transition("plan", "done")
    return wf


def bad_guard() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done", guard=lambda: True)
    wf.transition("plan", "failed", default=True)
    return wf


def bad_error_type() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done")
    wf.on_error("plan", int, "failed")  # type: ignore[arg-type]
    return wf


def unroutable_error() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done")
    wf.on_error("plan", KeyboardInterrupt, "failed")  # type: ignore[arg-type]
    return wf


def bad_bound() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True, max_visits=0)
    wf.transition("plan", "done")
    return wf


def unreachable_state() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.add_state("orphan", noop)
    wf.transition("plan", "done")
    wf.transition("orphan", "done")
    return wf


def trap_state() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.add_state("stuck", noop)
    wf.add_state("sink", noop)  # no exit at all: reported as no-exit, and 'stuck' leads only there
    wf.transition("plan", "stuck", guard=guard(lambda c: c.attempts > 0, name="retrying"))
    wf.transition("stuck", "sink")
    wf.transition("plan", "done", default=True)
    return wf


def trap_cycle() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.add_state("search", noop, max_visits=3)
    wf.add_state("refine", noop)
    wf.transition("plan", "search", guard=guard(lambda c: c.attempts == 0, name="first try"))
    wf.transition("plan", "done", default=True)
    wf.transition("search", "refine")
    wf.transition("refine", "search")
    return wf


def unbounded_cycle() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("search", noop, initial=True)
    wf.add_state("refine", noop)
    wf.transition("search", "done", guard=guard(lambda c: c.attempts > 2, name="enough"))
    wf.transition("search", "refine", default=True)
    wf.transition("refine", "search")
    return wf


def dead_transition() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done")
    wf.transition("plan", "failed", guard=guard(lambda c: c.attempts > 3, name="too many"))
    return wf


def no_exit() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done", guard=guard(lambda c: c.attempts == 0, name="fresh"))
    return wf


def unset_read() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True, reads=["question"], writes=["query"])
    wf.add_state("summarize", noop, reads=["hits"], writes=["answer"])
    wf.transition("plan", "summarize")
    wf.transition("summarize", "done")
    return wf


def unset_read_via_error() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("search", noop, initial=True, reads=["question"], writes=["hits"])
    wf.add_state("summarize", noop, reads=["hits"], writes=["answer"])
    wf.transition("search", "summarize")
    wf.on_error("search", OSError, "summarize")
    wf.transition("summarize", "done")
    return wf


def unknown_field() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True, reads=["qestion"], writes=["query"])
    wf.transition("plan", "done")
    return wf


def missing_description() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("route", noop, initial=True, decision=True)
    wf.transition("route", "done", description="answer now")
    wf.transition("route", "failed")
    return wf


def no_failure_terminal() -> Workflow[Ctx]:
    wf = Workflow("demo", Ctx)
    wf.add_state("plan", noop, initial=True)
    wf.terminal("done")
    wf.transition("plan", "done")
    return wf


class Loose(BaseModel):
    """A model that does not validate on assignment."""

    question: str


def context_model() -> Workflow[Loose]:
    wf = Workflow("demo", Loose)
    wf.add_state("plan", noop, initial=True)
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("plan", "done")
    return wf


def bad_state() -> SpecCase:
    return by_hand(StateSpec("plan", noop, initial=True), "not a state",  # type: ignore[arg-type]
                   transitions=(TransitionSpec("plan", "done"),))


def bad_transition() -> SpecCase:
    return by_hand(StateSpec("plan", noop, initial=True),
                   transitions=(TransitionSpec("plan", "done"), "not a transition"))  # type: ignore[arg-type]


def bad_name() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done", name="plan to done")
    return wf


def duplicate_name() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done", guard=guard(lambda c: c.attempts == 0, name="fresh"), name="go")
    wf.transition("plan", "failed", default=True, name="go")
    return wf


def bad_field() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True, reads=["question"], optional_reads=["question"])
    wf.transition("plan", "done")
    return wf


def bad_option() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True, on_no_exit="bogus")
    wf.transition("plan", "done")
    return wf


def bad_tool() -> SpecCase:
    return by_hand(StateSpec("plan", noop, initial=True), transitions=(TransitionSpec("plan", "done"),),
                   tools=("search",))


def duplicate_tool() -> SpecCase:
    return by_hand(StateSpec("plan", noop, initial=True), transitions=(TransitionSpec("plan", "done"),),
                   tools=(Tool(search), Tool(search)))


def unknown_tool() -> Workflow[Ctx]:
    wf = base()
    wf.tool(search)

    async def plan(ctx: Ctx, tools: Any) -> None:
        """Declares a tool that is not registered."""

    wf.add_state("plan", plan, initial=True, tools=["serch"])
    wf.transition("plan", "done")
    return wf


def undeclared_tool() -> Workflow[Ctx]:
    wf = base()
    wf.tool(search)

    async def plan(ctx: Ctx, tools: Any) -> None:
        """Calls a tool its state does not declare."""
        await tools.call("search", "q")

    wf.add_state("plan", plan, initial=True)
    wf.transition("plan", "done")
    return wf


def unrouted_unknown_outcome() -> Workflow[Ctx]:
    wf = base()

    def charge(amount: int) -> str:
        """Charges a card: must never happen twice."""
        return f"charged {amount}"

    wf.tool(charge, effect="at_most_once")

    async def pay(ctx: Ctx, tools: Any) -> None:
        """Calls an at_most_once tool, with no route for a crash-interrupted call."""
        await tools.call("charge", amount=1)

    wf.add_state("pay", pay, initial=True, tools=["charge"])
    wf.transition("pay", "done")
    return wf


class Approval(BaseModel):
    ok: bool


def bad_wait() -> Workflow[Ctx]:
    wf = base()
    wf.wait("plan", event="approval", payload=Approval, writes=["question"], timeout=3600.0, initial=True)
    wf.transition("plan", "done")
    return wf


def bad_llm_step() -> Workflow[Ctx]:
    from statemachine_agent.llm import ChatModel, llm_step

    chat = ChatModel(base_url="http://127.0.0.1:9/v1", model="m")
    wf = base()
    wf.add_state("plan", llm_step(chat, write="answer", output=str, prompt="Say hi."), initial=True, writes=["query"])
    wf.transition("plan", "done")
    return wf


def foreign_state() -> Checkable:
    other = base("other")
    x = other.add_state("x", noop, initial=True)
    wf = base("this")
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done")
    try:
        wf.transition(x, "done")
    except DefinitionError as err:  # a Workflow that raises at once: report it like a collected one
        return SpecCase(dataclasses.replace(wf.spec(), problems=err.problems))
    return wf


def initial_terminal() -> SpecCase:
    return by_hand(StateSpec("start", terminal=True, initial=True, outcome=Outcome.SUCCESS),
                   StateSpec("failed", terminal=True, outcome=Outcome.FAILURE), with_terminals=False)


def no_terminal() -> Workflow[Ctx]:
    wf = Workflow("demo", Ctx)
    wf.add_state("plan", noop, initial=True, on_no_exit="fail")
    return wf


def terminal_action() -> SpecCase:
    return by_hand(StateSpec("plan", noop, initial=True),
                   StateSpec("done", noop, terminal=True, outcome=Outcome.SUCCESS),
                   StateSpec("failed", terminal=True, outcome=Outcome.FAILURE),
                   transitions=(TransitionSpec("plan", "done"),), with_terminals=False)


def terminal_decision() -> SpecCase:
    return by_hand(StateSpec("plan", noop, initial=True),
                   StateSpec("done", terminal=True, decision=True, outcome=Outcome.SUCCESS),
                   StateSpec("failed", terminal=True, outcome=Outcome.FAILURE),
                   transitions=(TransitionSpec("plan", "done"),), with_terminals=False)


def terminal_outcome() -> Workflow[Ctx]:
    wf = Workflow("demo", Ctx)
    wf.add_state("plan", noop, initial=True)
    wf.terminal("done", outcome="meh")
    wf.terminal("failed", outcome="failure")
    wf.transition("plan", "done")
    return wf


def guarded_default() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True, on_no_exit="fail")
    wf.transition("plan", "done", default=True, guard=guard(lambda c: c.attempts == 0, name="fresh"))
    return wf


def duplicate_error_route() -> Workflow[Ctx]:
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done")
    wf.on_error("plan", ValueError, "failed").on_error("plan", ValueError, "done")
    return wf


BROKEN: dict[str, Callable[[], Checkable]] = {
    "unknown-state": unknown_state,
    "duplicate-state": duplicate_state,
    "no-initial": no_initial,
    "several-initial": several_initial,
    "terminal-exit": terminal_exit,
    "bad-action": bad_action,
    "bad-guard": bad_guard,
    "bad-error-type": bad_error_type,
    "bad-bound": bad_bound,
    "unreachable-state": unreachable_state,
    "trap-state": trap_state,
    "trap-cycle": trap_cycle,
    "unbounded-cycle": unbounded_cycle,
    "dead-transition": dead_transition,
    "no-exit": no_exit,
    "unset-read": unset_read,
    "unknown-field": unknown_field,
    "missing-description": missing_description,
    "no-failure-terminal": no_failure_terminal,
    "context-model": context_model,
    "bad-state": bad_state,
    "bad-transition": bad_transition,
    "bad-name": bad_name,
    "duplicate-name": duplicate_name,
    "bad-field": bad_field,
    "bad-option": bad_option,
    "bad-tool": bad_tool,
    "duplicate-tool": duplicate_tool,
    "unknown-tool": unknown_tool,
    "undeclared-tool": undeclared_tool,
    "unrouted-unknown-outcome": unrouted_unknown_outcome,
    "bad-wait": bad_wait,
    "bad-llm-step": bad_llm_step,
    "foreign-state": foreign_state,
    "initial-terminal": initial_terminal,
    "no-terminal": no_terminal,
    "terminal-action": terminal_action,
    "terminal-decision": terminal_decision,
    "terminal-outcome": terminal_outcome,
    "guarded-default": guarded_default,
    "duplicate-error-route": duplicate_error_route,
}
"""Each rule's code, and a workflow that breaks exactly that rule (and maybe its consequences)."""
