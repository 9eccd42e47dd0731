"""Model calls in durable runs: journaled, replayed without a request, never asked again on resume,
and their usage kept with the stored steps (real HTTP to llm.testing.FakeOpenAIServer)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from statemachine_agent import UNSET, Budget, Context, ModelAnswerInvalid, Workflow
from statemachine_agent.clock import FakeClock
from statemachine_agent.llm import ChatModel, LLMPolicy, llm_step
from statemachine_agent.llm.testing import FakeOpenAIServer, FakeRequest, FakeResponse, chat_reply, tool_reply
from statemachine_agent.stores import MemoryStore, SQLiteStore
from statemachine_agent.stores._records import CallStatus
from statemachine_agent.usage import ModelCall


class Crash(BaseException):
    """Stands for the process dying: never routed, never caught by the runner."""


class Doc(Context):
    text: str = "a change"
    summary: str = UNSET
    acted: int = 0


def answer_script(request: FakeRequest, _: int) -> FakeResponse:
    """Answers an LLM step's ask with a summary and a decision with 'triage_to_act'."""
    tools = request.body.get("tools") or [{}]
    if tools[0].get("function", {}).get("name") == "choose_transition":
        return tool_reply("choose_transition", {"transition": "triage_to_act"}, prompt_tokens=20, completion_tokens=5)
    return chat_reply(json.dumps({"value": "looks fine"}), prompt_tokens=30, completion_tokens=7)


def workflow(chat: ChatModel, crashes: list[str]) -> Any:
    """summarize (LLM step) -> triage (decision) -> act (crashes once when asked) -> done."""
    wf = Workflow("durable-llm", Doc)
    wf.add_state("summarize", llm_step(chat, write="summary", output=str, prompt=lambda c: f"Summarize {c.text}"),
                 initial=True, reads=["text"], writes=["summary"])

    @wf.state(reads=["summary"], decision=True)
    def triage(ctx: Doc) -> None:
        pass

    @wf.state(writes=["acted"])
    def act(ctx: Doc) -> None:
        if "act" in crashes:
            crashes.remove("act")
            raise Crash
        ctx.acted += 1

    wf.terminal("done")
    wf.terminal("dropped")
    wf.terminal("failed", outcome="failure")
    wf.transition("summarize", triage)
    wf.transition(triage, act, description="act on it")
    wf.transition(triage, "dropped", description="drop it")
    wf.transition(act, "done")
    return wf.compile()


@contextmanager
def a_store(kind: str, tmp_path: Path) -> Iterator[Any]:
    if kind == "memory":
        yield MemoryStore()
    else:
        with SQLiteStore(tmp_path / "runs.db") as store:
            yield store


STORES = ["memory", "sqlite"]


@pytest.mark.parametrize("kind", STORES)
def test_model_replies_are_journaled_and_replay_asks_nothing(kind: str, tmp_path: Path) -> None:
    """Both the LLM step's and the policy's replies are in the journal as 'model:fake'; a replay follows
    the whole run from the record without a single request."""
    with FakeOpenAIServer(answer_script) as server, a_store(kind, tmp_path) as store:
        chat = ChatModel(base_url=server.url, model="fake")
        compiled = workflow(chat, [])
        result = compiled.run_sync(Doc(), policy=LLMPolicy(chat=chat), store=store, run_id="r1", clock=FakeClock())
        assert result.terminal == "done" and result.context.summary == "looks fine"
        assert len(server.requests) == 2
        stored = store.load("r1").result()
        model_rows = [c for c in stored.calls if c.tool == "model:fake"]
        assert [c.step for c in model_rows] == [0, 1]
        assert all(c.status is CallStatus.DONE for c in model_rows), model_rows
        # The journal keeps the parsed reply (id, name, arguments of each call), not the raw body.
        assert model_rows[1].result["reply"]["tool_calls"][0][1] == "choose_transition"
        assert "response" not in model_rows[1].result
        report = compiled.replay_sync("r1", store=store)
        assert report.reason == "" and report.matched == report.recorded == 3
        assert report.calls_replayed >= 1
        assert len(server.requests) == 2  # the replay asked nothing


@pytest.mark.parametrize("kind", STORES)
def test_a_resumed_run_never_asks_again_for_committed_steps_and_keeps_their_usage(kind: str,
                                                                                 tmp_path: Path) -> None:
    """A crash in the step after the decision: the resume runs only that step (no request), and the
    resumed result's usage counts the model calls of the steps committed before the crash."""
    crashes = ["act"]
    with FakeOpenAIServer(answer_script) as server, a_store(kind, tmp_path) as store:
        chat = ChatModel(base_url=server.url, model="fake")
        compiled = workflow(chat, crashes)
        with pytest.raises(Crash):
            compiled.run_sync(Doc(), policy=LLMPolicy(chat=chat), store=store, run_id="r2", clock=FakeClock())
        assert len(server.requests) == 2
        stored = store.load("r2").result()
        assert [len(s.model_calls) for s in stored.steps] == [1, 1]
        first = ModelCall.from_dict(stored.steps[0].model_calls[0])
        assert (first.purpose, first.input_tokens, first.output_tokens) == ("answer", 30, 7)
        result = compiled.resume_sync("r2", store=store, policy=LLMPolicy(chat=chat), clock=FakeClock())
        assert result.terminal == "done" and result.context.acted == 1
        assert len(server.requests) == 2  # nothing asked again
        assert [len(s.model_calls) for s in result.path] == [1, 1, 0]
        assert result.usage.calls == 2
        assert (result.usage.input_tokens, result.usage.output_tokens) == (50, 12)
        again = compiled.resume_sync("r2", store=store)  # a done run: its stored result
        assert (again.usage.calls, again.usage.total_tokens) == (2, 62)


@pytest.mark.parametrize("kind", STORES)
def test_a_resumed_run_counts_earlier_usage_against_its_token_budget(kind: str, tmp_path: Path) -> None:
    """62 tokens spent before a crash; resumed with a token budget of 50, the run is already over it and
    ends in the failure terminal with Budget.TOKENS before running another step, asking nothing."""
    from statemachine_agent.events import BudgetExhausted

    got: list[Any] = []

    def hook(event: Any) -> None:
        if isinstance(event, BudgetExhausted):
            got.append(event.budget)

    with FakeOpenAIServer(answer_script) as server, a_store(kind, tmp_path) as store:
        chat = ChatModel(base_url=server.url, model="fake")
        compiled = workflow(chat, ["act"])
        with pytest.raises(Crash):
            compiled.run_sync(Doc(), policy=LLMPolicy(chat=chat), store=store, run_id="r3", clock=FakeClock())
        result = compiled.resume_sync("r3", store=store, policy=LLMPolicy(chat=chat), clock=FakeClock(),
                                      token_budget=50, hooks=[hook], raise_errors=False)
        assert len(server.requests) == 2
    assert result.terminal == "failed" and got == [Budget.TOKENS]
    assert result.context.acted == 0
    assert result.usage.total_tokens == 62


NOT_STORABLE = [
    b'{"choices": [{"message": {"content": "{\\"value\\": \\"x\\"}"}}], "usage": {"prompt_tokens": NaN}}',
    b'{"choices": [{"message": {"content": "{\\"value\\": \\"x\\"}"}}], "usage": {"completion_tokens": 1e999}}',
    b'{"choices": [{"message": {"content": "{\\"value\\": \\"x\\"}"}}], "x": ' + b"[" * 100 + b"]" * 100 + b"}",
]


@pytest.mark.parametrize("raw", NOT_STORABLE, ids=["nan", "infinity", "100-deep"])
def test_a_reply_no_store_can_hold_is_a_rejection_not_a_broken_commit(raw: bytes, tmp_path: Path) -> None:
    """A reply with NaN, an infinite number or 100 levels of nesting is parsed Python JSON but not storable:
    it is taken as a reply that is not JSON (a reason the model is shown), and every step still commits."""
    with FakeOpenAIServer([FakeResponse(200, raw=raw)]) as server:
        chat = ChatModel(base_url=server.url, model="fake", retries=1)
        store = SQLiteStore(tmp_path / "runs.db")
        try:
            result = workflow(chat, []).run_sync(Doc(), store=store, run_id="odd", raise_errors=False)
            stored = store.load("odd").result()
        finally:
            store.close()
    assert result.terminal == "failed"
    assert isinstance(result.error, ModelAnswerInvalid) and "is not a JSON object" in str(result.error)
    assert len(stored.steps) == len(result.path)
    assert stored.run.terminal == "failed"
