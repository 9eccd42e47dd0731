"""The LLM adapter against a hostile OpenAI-compatible server (real HTTP, llm.testing.FakeOpenAIServer).

Whatever the server answers (valid and invalid names, prose, HTTP errors, rate limits, silence,
malformed bytes), a decision either takes an enabled transition or the run ends in the failure
terminal with every rejected answer recorded or a ModelError: never a crash, never a disabled
transition. Time is a FakeClock everywhere: Retry-After and backoff waits are recorded, not slept;
only the cases that make the server hang wait, for a 0.3 s client timeout.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from statemachine_agent import UNSET, Context, Workflow
from statemachine_agent.clock import FakeClock
from statemachine_agent.errors import ModelError, ModelRefused, ModelUnavailable
from statemachine_agent.llm import ChatModel, LLMPolicy, ServerKind
from statemachine_agent.llm.testing import (
    FakeOpenAIServer,
    FakeRequest,
    FakeResponse,
    chat_reply,
    error_reply,
    tool_reply,
)
from statemachine_agent.result import StepKind

TOOL = "choose_transition"
DISABLED = "triage_to_failed"


class Ctx(Context):
    text: str = "all good"
    n: int = 0
    summary: str = UNSET


def decision_workflow(k: int, *, routed: bool = False) -> tuple[Any, list[str]]:
    """A decision state with ``k`` enabled exits and one guarded off (to the failure terminal)."""
    wf = Workflow("review", Ctx)

    @wf.state(initial=True, reads=["text", "n"], decision=True)
    def triage(ctx: Ctx) -> None:
        pass

    names = []
    for i in range(k):
        wf.terminal(f"end{i}")
        wf.transition(triage, f"end{i}", description=f"option {i}")
        names.append(f"triage_to_end{i}")
    wf.terminal("failed", outcome="failure")
    wf.transition(triage, "failed", guard=wf.guard(lambda c: c.n > 100, name="hopeless", reads=["n"]),
                  description="give up")
    if routed:
        wf.terminal("model_down", outcome="failure")
        wf.on_error(triage, ModelError, "model_down")
    return wf.compile(), names


def usage_of(response: FakeResponse) -> tuple[int, int]:
    """The tokens a 200 reply's body says it used (0, 0 for raw bytes or no usage)."""
    if response.status != 200 or response.raw is not None or not isinstance(response.body, dict):
        return 0, 0
    u = response.body.get("usage") or {}
    return int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))


# --- the property ------------------------------------------------------------------------------

KINDS = ("valid_tool", "invalid_name", "prose", "disabled", "content_json", "err400", "err500",
         "rate_limited", "rate_limited_date", "hang", "malformed", "empty_choices", "bad_args",
         "ignored_tool_choice", "bare_name", "err401", "err503")


@st.composite
def responses(draw: st.DrawFn, names: list[str]) -> FakeResponse:
    kind = draw(st.sampled_from(KINDS))
    p, c = draw(st.integers(0, 50)), draw(st.integers(0, 20))
    name = draw(st.sampled_from(names))
    if kind == "valid_tool":
        return tool_reply(TOOL, {"transition": name}, prompt_tokens=p, completion_tokens=c)
    if kind == "invalid_name":
        return tool_reply(TOOL, {"transition": draw(st.sampled_from(["bogus", "", "end0", "TRIAGE_TO_END0"]))},
                          prompt_tokens=p, completion_tokens=c)
    if kind == "prose":
        return chat_reply("I think the change looks fine, so let's go ahead.", prompt_tokens=p, completion_tokens=c)
    if kind == "disabled":
        return tool_reply(TOOL, {"transition": DISABLED}, prompt_tokens=p, completion_tokens=c)
    if kind == "content_json":
        return chat_reply(json.dumps({"transition": name}), prompt_tokens=p, completion_tokens=c)
    if kind == "ignored_tool_choice":
        return chat_reply(f"```json\n{json.dumps({'transition': name})}\n```", prompt_tokens=p, completion_tokens=c)
    if kind == "bare_name":
        return chat_reply(f"`{name}`.", prompt_tokens=p, completion_tokens=c)
    if kind == "err400":
        return error_reply(400, "unsupported parameter")
    if kind == "err401":
        return error_reply(401, "invalid api key")
    if kind == "err503":
        return error_reply(503, "overloaded")
    if kind == "err500":
        return error_reply(500, "internal error")
    if kind == "rate_limited":
        return error_reply(429, "slow down", retry_after=str(draw(st.sampled_from([0, 1, 2.5, 7, 3600]))))
    if kind == "rate_limited_date":
        when = time.time() + draw(st.integers(-60, 120))
        return error_reply(429, "slow down", retry_after=email.utils.formatdate(when, usegmt=True))
    if kind == "hang":
        return FakeResponse(hang=True)
    if kind == "malformed":
        return FakeResponse(200, raw=b"{not json")
    if kind == "empty_choices":
        return FakeResponse(200, {"id": "x", "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c}})
    assert kind == "bad_args"
    return tool_reply(TOOL, "{oops", prompt_tokens=p, completion_tokens=c)


@dataclass
class Scenario:
    k: int
    kind: ServerKind
    attempts: int
    routed: bool
    script: list[FakeResponse]
    tail: FakeResponse


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    k = draw(st.integers(2, 4))
    names = [f"triage_to_end{i}" for i in range(k)]
    # Runs of one behaviour (a server that keeps refusing a form, or keeps rate limiting).
    runs = draw(st.lists(st.tuples(responses(names), st.integers(1, 4)), min_size=1, max_size=6))
    script = [r for r, times in runs for _ in range(times)]
    # At most one hang per example: it costs one real client timeout.
    first_hang = next((i for i, r in enumerate(script) if r.hang), None)
    if first_hang is not None:
        script = script[: first_hang + 1]
    tail = draw(responses(names).filter(lambda r: not r.hang))
    return Scenario(k, draw(st.sampled_from(list(ServerKind))), draw(st.integers(1, 4)), draw(st.booleans()),
                    script, tail)


def serve(script: list[FakeResponse], tail: FakeResponse) -> tuple[Callable[[FakeRequest, int], FakeResponse],
                                                                  list[FakeResponse]]:
    """A script function that also records what it answered, in order."""
    served: list[FakeResponse] = []

    def answer(_: FakeRequest, i: int) -> FakeResponse:
        r = script[i] if i < len(script) else tail
        served.append(r)
        return r

    return answer, served


PROPERTY_EXAMPLES = 200


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_any_server_behaviour_ends_in_an_enabled_transition_or_a_recorded_failure(sc: Scenario) -> None:
    """Whatever the server does, the decision takes an enabled transition, or the run fails with each
    rejected answer recorded or with a ModelError; the run's usage is exactly what the 200 replies said."""
    compiled, names = decision_workflow(sc.k, routed=sc.routed)
    hangs = any(r.hang for r in sc.script)
    answer, served = serve(sc.script, sc.tail)
    clock = FakeClock()
    with FakeOpenAIServer(answer) as server:
        chat = ChatModel(base_url=server.url, model="fake", server=sc.kind, timeout=0.3 if hangs else 10.0,
                         retries=1 if hangs else 3, max_backoff=30.0)
        policy = LLMPolicy(chat=chat)

        async def go() -> Any:
            try:
                return await compiled.run(Ctx(), policy=policy, clock=clock, raise_errors=False,
                                          max_policy_attempts=sc.attempts)
            finally:
                await chat.aclose()

        result = asyncio.run(go())
        n_requests = len(server.requests)
    step = result.path[0]
    event(f"{step.kind}: {type(result.error).__name__}, {len(step.rejected)} rejected, hang={hangs}")
    assert step.state == "triage"
    assert len(step.rejected) <= sc.attempts
    assert all(isinstance(why, str) and why for why in step.rejected)
    decisions = [c for c in step.model_calls if c.purpose == "decision"]
    assert [c.attempt for c in decisions] == list(range(1, len(decisions) + 1))
    if step.kind is StepKind.TRANSITION:
        assert step.transition in names
        assert step.transition != DISABLED
        assert result.terminal == step.target and result.ok
        assert len(step.rejected) == len(decisions) - 1  # every answer before the taken one was rejected
    elif step.kind is StepKind.ERROR:
        assert sc.routed and isinstance(step.error, (ModelUnavailable, ModelRefused))
        assert result.terminal == "model_down"
        assert len(step.rejected) == len(decisions)  # the ask that raised gave no answer
    else:
        assert step.kind is StepKind.FAIL and result.terminal == "failed" and not result.ok
        if result.error is None:
            assert len(step.rejected) == sc.attempts == len(decisions)
            assert result.reason is not None and result.reason.startswith("the policy gave no valid choice")
        else:
            assert isinstance(result.error, (ModelUnavailable, ModelRefused)), result.error
            assert not sc.routed
            assert len(step.rejected) == len(decisions)
    # Usage: exactly the 200 replies, each counted once.
    assert len(served) == n_requests
    ok = [r for r in served if r.status == 200 and not r.hang]
    assert result.usage.calls == len(ok) == len(decisions)
    assert result.usage.input_tokens == sum(usage_of(r)[0] for r in ok)
    assert result.usage.output_tokens == sum(usage_of(r)[1] for r in ok)
    assert sum(c.http_attempts for c in decisions) <= n_requests
    # Every wait was on the fake clock, each within max_backoff.
    assert all(0 <= s <= 30.0 for s in clock.sleeps)
