"""The checker reads what LLM steps declare: their field, their tools, and the model calls they may make."""

from __future__ import annotations

from statemachine_agent import Context, Workflow
from statemachine_agent.llm import ChatModel, llm_step
from statemachine_agent.tools import Tools

CHAT = ChatModel(base_url="http://127.0.0.1:9/v1", model="m")


class Ctx(Context):
    """A question, notes and an answer."""

    question: str
    notes: str | None = None
    answer: str | None = None
    tries: int = 0


def looped(max_visits: int, rounds: int, attempts: int) -> Workflow[Ctx]:
    wf = Workflow("loop", Ctx)

    @wf.tool
    def lookup(term: str) -> str:
        """Look a term up."""
        return term

    wf.add_state("draft", llm_step(CHAT, write="answer", output=str, prompt="Answer.", tools=["lookup"],
                                   max_rounds=rounds, max_attempts=attempts),
                 initial=True, reads=["question"], writes=["answer"], tools=["lookup"], max_visits=max_visits)

    @wf.state(reads=["tries"], writes=["tries"], decision=True)
    def review(ctx: Ctx) -> None:
        ctx.tries += 1

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("draft", "review")
    wf.transition("review", "draft", description="try again")
    wf.transition("review", "done", description="good enough")
    return wf


def test_model_calls_are_bounded_by_visits_times_calls_per_visit() -> None:
    """A looping LLM step with max_visits=3, 2 tool rounds and 2 answers makes at most 3 * 4 calls; the
    decision after it is asked at most as often as it can be visited."""
    report = looped(3, 2, 2).analyze()
    assert report.ok, report.problems
    assert report.worst_case_model_calls == 12
    # review runs after each of draft's 3 visits: 3 real decisions at most, under a sound bound
    assert report.worst_case_decisions is not None
    assert 3 <= report.worst_case_decisions <= report.worst_case_steps


def test_a_step_outside_loops_counts_one_visit() -> None:
    """With no loop, each LLM step is visited at most once: its calls per visit are the bound."""
    wf = Workflow("line", Ctx)
    wf.add_state("draft", llm_step(CHAT, write="answer", output=str, prompt="Answer.", max_attempts=3),
                 initial=True, reads=["question"], writes=["answer"])
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("draft", "done")
    report = wf.analyze()
    assert report.ok, report.problems
    assert report.worst_case_model_calls == 3


def test_an_llm_step_may_not_reach_undeclared_tools() -> None:
    """A model offered a tool its state does not declare is a definition problem, naming both."""
    wf = Workflow("sneaky", Ctx)

    @wf.tool
    def delete_everything() -> str:
        """Do damage."""
        return "gone"

    async def plain(ctx: Ctx, tools: Tools) -> None:
        ctx.answer = "x"

    wf.add_state("draft", llm_step(CHAT, write="answer", output=str, prompt="Answer.", tools=["delete_everything"]),
                 initial=True, reads=["question"], writes=["answer"])
    wf.terminal("done")
    wf.transition("draft", "done")
    codes = [(p.code, p.subject) for p in wf.analyze().problems]
    assert ("bad-llm-step", "draft") in codes
    assert any("delete_everything" in p.message for p in wf.analyze().problems)
