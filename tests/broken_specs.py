"""One small broken workflow per checker rule; shared by the unit tests and the docs test."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from statemachine_agent import Context, Workflow, guard


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
    wf.add_state("stuck", noop, on_no_exit="error")
    wf.transition("plan", "stuck", guard=guard(lambda c: c.attempts > 0, name="retrying"))
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


BROKEN: dict[str, Callable[[], Workflow[object]]] = {  # type: ignore[dict-item]
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
}
"""Each rule's code, and a workflow that breaks exactly that rule (and maybe its consequences)."""
