"""User code that must type-check under ``mypy --strict``: the README's agent, typed end to end."""

from __future__ import annotations

from statemachine_agent import (
    UNSET,
    CompiledWorkflow,
    Context,
    Decision,
    Guard,
    Option,
    RunResult,
    StateRef,
    Workflow,
    guard,
    result_of,
)
from statemachine_agent.tools import Tools

DOCS = ["Loops are bounded by max_visits", "Guards decide transitions"]


class Research(Context):
    question: str
    query: str = UNSET  # written by `plan` before anything reads it: no `| None` needed
    hits: list[str] = UNSET
    answer: str = UNSET
    draft: str | None = None


wf: Workflow[Research] = Workflow("research", Research)


@wf.tool(timeout=5.0)
def search_docs(query: str) -> list[str]:
    """Full-text search."""
    return [doc for doc in DOCS if query in doc.lower()]


@wf.state(initial=True, reads=["question"], writes=["query"])
def plan(ctx: Research) -> None:
    ctx.query = ctx.question.lower()


@wf.state(reads=["query"], writes=["hits"], max_visits=2, tools=["search_docs"])
async def search(ctx: Research, tools: Tools) -> None:
    ctx.hits = await tools.call("search_docs", query=ctx.query)


@wf.state(reads=["hits"], writes=["answer"], optional_reads=["draft"])
def summarize(ctx: Research) -> None:
    ctx.answer = ctx.hits[0] if ctx.draft is None else ctx.draft  # list[str], not list[str] | None


done = wf.terminal("done")
failed = wf.terminal("failed", outcome="failure")


@guard(reads=["hits"])
def has_hits(ctx: Research) -> bool:
    return bool(ctx.hits)


typed_guard: Guard[Research] = has_hits
wf.transition(plan, search)
wf.transition(search, summarize, guard=has_hits & wf.guard(lambda c: len(c.hits) < 100, reads=["hits"]))
wf.transition(search, failed, default=True)
wf.transition(summarize, done, guard=lambda c: c.answer != "")
wf.transition(summarize, failed, default=True)
wf.on_error(search, OSError, failed)
ref: StateRef[Research] = plan


def pick_first(decision: Decision[Research]) -> Option:
    assert decision.context.question  # the context is typed
    return decision.options[0]


compiled: CompiledWorkflow[Research] = wf.compile()
result: RunResult[Research] = compiled.run_sync(Research(question="loops"), policy=pick_first, timeout=5.0)
answer: str = result.context.answer
try:
    compiled.run_sync({"question": "loops"}, max_steps=10, raise_errors=True)
except Exception as exc:
    failed_run = result_of(exc)
