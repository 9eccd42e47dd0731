"""User code with the mistakes mypy must catch; each marked line must get exactly that error code."""

from __future__ import annotations

from statemachine_agent import Context, Decision, Option, Workflow, guard


class Research(Context):
    question: str
    hits: list[str] | None = None


class Other(Context):
    title: str


wf: Workflow[Research] = Workflow("research", Research)
bad: Workflow[int] = Workflow("x", int)  # E: type-var type-var


def for_other(ctx: Other) -> None:
    print(ctx.title)


wf.add_state("wrong", for_other)  # E: arg-type
wf.transition("a", "b", guard=lambda c: c.hitz is not None)  # E: attr-defined
wf.transition("a", "b", guard=lambda c: c.hits)  # E: arg-type return-value
wf.guard(lambda c: c.questoin == "", reads=["question"])  # E: attr-defined


@guard
def other_guard(ctx: Other) -> bool:
    return bool(ctx.title)


wf.transition("a", "b", guard=other_guard)  # E: arg-type


def policy(decision: Decision[Research]) -> Option:
    return decision.context.nothing  # E: attr-defined no-any-return


compiled = wf.compile()
compiled.run_sync(Other(title="t"))  # E: arg-type
compiled.run_sync(Research(question="q"), timeout="soon")  # E: arg-type
compiled.run_sync(Research(question="q"), max_step=3)  # E: call-arg
result = compiled.run_sync(Research(question="q"))
title: str = result.context.title  # E: attr-defined

