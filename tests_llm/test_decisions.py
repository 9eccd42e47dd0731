"""Decisions by a real model: every one valid on the first ask, its usage recorded, and the fallback
from request forms the server refuses exercised for real."""

from __future__ import annotations

import pytest
from workflows import TICKETS, TRIAGE, PullRequest, Ticket, enabled_support_exits, support, triage

from statemachine_agent.llm import ChatModel, LLMPolicy, Mode

PULL_REQUESTS = [
    "Fixes a typo in the README. CI is green and two maintainers approved.",
    "Adds a cryptocurrency miner to the build script.",
    "Adds caching to the search endpoint; the idea is good but three unit tests fail.",
    "Rewrites the whole project in another language without discussion.",
    "Bumps a dependency patch version; all checks pass, approved by the owner.",
    "New feature with no tests and no documentation; reviewers asked for both.",
    "Deletes the license file and the test suite.",
    "Refactors the parser; all tests pass and the reviewer says it is clean.",
    "Fixes a crash on empty input, but the new test is flaky and fails one run in three.",
    "Adds tracking that sends users' data to an unknown server.",
    "Improves an error message; CI is green and the change was requested by users.",
    "Adds a useful option but breaks the public API; please keep the old name working.",
]


def _chat(url: str, server: str = "llama-cpp-python") -> ChatModel:
    return ChatModel(base_url=url, model="smollm2", server=server, max_tokens=64, timeout=120.0, retries=2)


def test_pull_request_triage_every_decision_valid_and_recorded(llm_url: str) -> None:
    compiled = triage()
    policy = LLMPolicy(chat=_chat(llm_url))
    taken = []
    for text in PULL_REQUESTS:
        result = compiled.run_sync(PullRequest(description=text), policy=policy)
        (step,) = result.path
        assert step.transition in TRIAGE, text
        assert step.rejected == (), f"{text}: the constrained answer was rejected: {step.rejected}"
        (call,) = step.model_calls  # the model was asked once, and that answer was taken
        assert call.purpose == "decision"
        assert call.mode == Mode.NAMED_TOOL  # the profile's first form, accepted by this server
        assert call.provider == "llama-cpp-python"
        assert call.model == "smollm2"
        assert call.input_tokens > 0
        assert call.output_tokens > 0
        assert call.latency > 0
        assert call.finish_reason == "tool_calls"
        assert call.http_attempts == 1
        assert result.usage.calls == 1
        assert result.usage.input_tokens == call.input_tokens
        assert result.usage.output_tokens == call.output_tokens
        taken.append(step.transition)
    assert policy.chat.refused == set()
    assert len(taken) == len(PULL_REQUESTS)


def test_support_routing_only_enabled_exits_are_taken(llm_url: str) -> None:
    """Guards disable some exits per ticket; the model is only offered, and only takes, enabled ones."""
    compiled = support()
    chat = _chat(llm_url)
    seen_options: list[set[str]] = []

    policy = LLMPolicy(chat=chat)

    def watching(decision):  # type: ignore[no-untyped-def]
        seen_options.append({o.name for o in decision.options})
        return policy(decision)

    for text, amount, vip in TICKETS:
        enabled = enabled_support_exits(text, amount, vip)
        result = compiled.run_sync(Ticket(text=text, amount=amount, vip=vip), policy=watching)
        (step,) = result.path
        assert seen_options[-1] == enabled, text
        assert step.transition in enabled, f"{text}: took {step.transition!r}, enabled {sorted(enabled)}"
        assert step.rejected == (), f"{text}: {step.rejected}"
        (call,) = step.model_calls
        assert call.input_tokens > 0
        assert call.output_tokens > 0
        assert call.latency > 0
        assert call.mode == Mode.NAMED_TOOL
    assert len(seen_options) == len(TICKETS)


@pytest.mark.parametrize("server", ["openai", "generic"])
def test_refused_modes_fall_back_and_are_remembered(llm_url: str, server: str) -> None:
    """The OpenAI profile asks json_schema first: this server answers HTTP 500 to it. The mode must
    land in chat.refused, the same decision be answered by the next form, and later decisions go
    straight to that form. The generic profile starts with the named tool call, which works."""
    compiled = triage()
    chat = _chat(llm_url, server)
    policy = LLMPolicy(chat=chat)
    calls = []
    for text in PULL_REQUESTS[:3]:
        result = compiled.run_sync(PullRequest(description=text), policy=policy)
        (step,) = result.path
        assert step.transition in TRIAGE
        assert step.rejected == ()
        (call,) = step.model_calls
        calls.append(call)
    assert all(c.mode == Mode.NAMED_TOOL for c in calls)
    assert all(c.input_tokens > 0 and c.output_tokens > 0 and c.latency > 0 for c in calls)
    if server == "openai":
        assert chat.refused == {Mode.JSON_SCHEMA}
        assert calls[0].http_attempts == 2  # json_schema refused, then the named tool call
    else:
        assert chat.refused == set()
        assert calls[0].http_attempts == 1
    assert [c.http_attempts for c in calls[1:]] == [1, 1]  # the refused form is never sent again
    assert Mode.NAMED_TOOL in chat.working
