"""Decisions by a real model, on each server kind: every one valid on the first ask in the first form
of the kind's profile (one the server enforces), its usage recorded, and the fallback from request
forms the server refuses exercised for real."""

from __future__ import annotations

import pytest
from _server import Served
from workflows import TICKETS, TRIAGE, PullRequest, Ticket, enabled_support_exits, support, triage

from statemachine_agent.llm import PROFILES, ChatModel, LLMPolicy, Mode, Profile, ServerKind

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




def _chat(url: str, server: str | Profile) -> ChatModel:
    kind = {"profile": server} if isinstance(server, Profile) else {"server": server}
    return ChatModel(base_url=url, model="smollm2", max_tokens=64, timeout=120.0, retries=2, **kind)


def _first_mode(kind: str) -> Mode:
    profile = PROFILES[ServerKind(kind)]
    mode = profile.modes_for(decision=True)[0]
    assert mode in profile.enforced  # the profile leads with a form the server constrains
    return mode


def test_pull_request_triage_every_decision_valid_and_recorded(llm: Served) -> None:
    compiled = triage()
    chat = _chat(llm.url, llm.kind)
    policy = LLMPolicy(chat=chat)
    first = _first_mode(llm.kind)
    taken = []
    for text in PULL_REQUESTS:
        result = compiled.run_sync(PullRequest(description=text), policy=policy)
        (step,) = result.path
        assert step.transition in TRIAGE, text
        assert step.rejected == (), f"{text}: the constrained answer was rejected: {step.rejected}"
        (call,) = step.model_calls  # the model was asked once, and that answer was taken
        assert call.purpose == "decision"
        assert call.mode == first  # the profile's first form, accepted and enforced by this server
        assert call.provider == llm.kind
        assert call.model == "smollm2"
        assert call.input_tokens > 0
        assert call.output_tokens > 0
        assert call.latency > 0
        assert call.finish_reason == ("tool_calls" if first is Mode.NAMED_TOOL else "stop")
        assert call.http_attempts == 1
        assert result.usage.calls == 1
        assert result.usage.input_tokens == call.input_tokens
        assert result.usage.output_tokens == call.output_tokens
        taken.append(step.transition)
    assert chat.refused == set()
    assert chat.working == {first}
    assert len(taken) == len(PULL_REQUESTS)


@pytest.mark.slow_llm
def test_support_routing_only_enabled_exits_are_taken(llm: Served) -> None:
    """Guards disable some exits per ticket; the model is only offered, and only takes, enabled ones."""
    compiled = support()
    chat = _chat(llm.url, llm.kind)
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
        assert call.mode == _first_mode(llm.kind)
    assert len(seen_options) == len(TICKETS)


@pytest.mark.parametrize("then", [None, Mode.PROMPT])
def test_a_refused_mode_falls_back_and_is_remembered(refusing: tuple[Served, Mode], then: Mode | None) -> None:
    """A profile leading with a form the server refuses: the mode lands in chat.refused, the same
    decision is answered in the next form, and later decisions go straight to it. ``then=None``:
    the kind's own profile after it (its first form is enforced, so every answer is valid);
    ``Mode.PROMPT``: nothing enforced after it, and what the model says is still only ever taken
    when it names an enabled transition."""
    served, refused = refusing
    after = [m for m in PROFILES[ServerKind(served.kind)].modes_for(decision=True) if m is not refused]
    modes = (refused, *after) if then is None else (refused, then)
    chat = _chat(served.url, Profile(ServerKind.GENERIC, modes, frozenset()))
    policy = LLMPolicy(chat=chat)
    compiled = triage()
    calls = []
    for text in PULL_REQUESTS[:3]:
        result = compiled.run_sync(PullRequest(description=text), policy=policy)
        (step,) = result.path
        assert result.terminal in {"approved", "rejected", "changes_requested"}
        if then is None:
            assert step.transition in TRIAGE
            assert step.rejected == ()
        # Whatever was said, only an enabled name is ever taken; anything else is a rejection
        # with its reason, and the model is asked again.
        assert step.transition in TRIAGE or step.transition is None or step.rejected
        assert len(step.model_calls) == len(step.rejected) + (step.transition in TRIAGE)
        calls.extend(step.model_calls)
    assert chat.refused == {refused}
    assert all(c.mode == modes[1] for c in calls)
    assert all(c.input_tokens > 0 and c.output_tokens > 0 and c.latency > 0 for c in calls)
    assert calls[0].http_attempts == 2  # the refused form, then the next one
    assert [c.http_attempts for c in calls[1:]] == [1] * (len(calls) - 1)  # the refused form is never sent again
    assert modes[1] in chat.working
