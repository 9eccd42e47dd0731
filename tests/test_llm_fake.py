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

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from statemachine_agent import UNSET, Budget, Context, Workflow
from statemachine_agent.clock import FakeClock
from statemachine_agent.errors import ModelAnswerInvalid, ModelError, ModelRefused, ModelUnavailable
from statemachine_agent.llm import ChatModel, LLMPolicy, Mode, Price, ServerKind, llm_step
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


# --- targeted: one behaviour each --------------------------------------------------------------

def decide(script: list[FakeResponse] | Callable[[FakeRequest, int], FakeResponse], *, k: int = 2,
           routed: bool = False, chat: dict[str, Any] | None = None, runs: int = 1,
           **options: Any) -> tuple[list[Any], list[FakeRequest], FakeClock, ChatModel]:
    """Run the decision workflow ``runs`` times against one server and one ChatModel."""
    compiled, _ = decision_workflow(k, routed=routed)
    clock = FakeClock()
    options.setdefault("raise_errors", False)
    with FakeOpenAIServer(script) as server:
        model = ChatModel(base_url=server.url, model="fake", **(chat or {}))
        policy = LLMPolicy(chat=model)

        async def go() -> list[Any]:
            try:
                return [await compiled.run(Ctx(), policy=policy, clock=clock, **options) for _ in range(runs)]
            finally:
                await model.aclose()

        results = asyncio.run(go())
        return results, list(server.requests), clock, model


VALID = tool_reply(TOOL, {"transition": "triage_to_end1"})


@pytest.mark.parametrize(("header", "waited"), [("7", 7.0), ("0", 0.0), ("2.5", 2.5), ("3600", 30.0)])
def test_429_waits_what_retry_after_says_on_the_run_clock_capped_at_max_backoff(header: str, waited: float) -> None:
    """A 429's Retry-After (seconds) is slept on the run's clock, at most max_backoff, then retried."""
    (result,), requests, clock, _ = decide([error_reply(429, retry_after=header), VALID])
    assert result.terminal == "end1"
    assert clock.sleeps == [waited]
    assert len(requests) == 2
    assert requests[0].body == requests[1].body  # the same request again
    assert result.path[0].model_calls[0].http_attempts == 2


def test_429_with_an_http_date_waits_until_then() -> None:
    """Retry-After as an HTTP date: the wait is the time until then (a date past waits 0)."""
    soon = email.utils.formatdate(time.time() + 20, usegmt=True)
    past = email.utils.formatdate(time.time() - 3600, usegmt=True)
    (result,), _, clock, _ = decide([error_reply(429, retry_after=soon), error_reply(429, retry_after=past), VALID])
    assert result.terminal == "end1"
    assert len(clock.sleeps) == 2
    assert 15 <= clock.sleeps[0] <= 20  # the date has whole seconds; the test took < 5 s to get here
    assert clock.sleeps[1] == 0.0


def test_429_with_a_small_max_backoff_is_capped_and_garbage_retry_after_backs_off() -> None:
    """The cap is max_backoff; an unreadable Retry-After falls back to the exponential backoff."""
    script = [error_reply(429, retry_after="86400"), error_reply(429, retry_after="soon"),
              error_reply(429, retry_after="nan"), VALID]
    (result,), _, clock, _ = decide(script, chat={"max_backoff": 5.0, "backoff": 0.5, "retries": 4})
    assert result.terminal == "end1"
    assert clock.sleeps[0] == 5.0
    assert all(0 < s <= 5.0 for s in clock.sleeps[1:]) and len(clock.sleeps) == 3


def test_503_with_retry_after_waits_what_it_says() -> None:
    """Retry-After on 503 Service Unavailable (RFC 9110 15.6.4) is honoured like a 429's."""
    (result,), requests, clock, _ = decide([error_reply(503, retry_after="9"), VALID])
    assert result.terminal == "end1"
    assert clock.sleeps == [9.0]
    assert len(requests) == 2


def test_rate_limited_through_every_retry_is_model_unavailable() -> None:
    """429 on every attempt: ModelUnavailable after exactly ``retries`` requests, each wait recorded."""
    (result,), requests, clock, _ = decide([error_reply(429, retry_after="1")], chat={"retries": 3})
    assert isinstance(result.error, ModelUnavailable)
    assert result.terminal == "failed"
    assert len(requests) == 3 and clock.sleeps == [1.0, 1.0]


def mode_of(body: dict[str, Any]) -> str:
    """Which answer mode a request body uses."""
    if "tools" in body:
        return "named_tool"
    fmt = body.get("response_format")
    if fmt is not None:
        return "json_schema" if fmt["type"] == "json_schema" else "json_object_schema"
    if "structured_outputs" in body:
        return "choice"
    return "prompt"


def test_a_refused_mode_falls_back_and_the_next_run_starts_with_the_mode_that_worked() -> None:
    """400 on named tools, 422 on json_schema: json_object works, and the second run asks it first."""
    content = chat_reply(json.dumps({"transition": "triage_to_end0"}))
    script = [error_reply(400, "tools unsupported"), error_reply(422, "no response_format"), content, content]
    (r1, r2), requests, _, chat = decide(script, runs=2)
    assert r1.terminal == r2.terminal == "end0"
    assert [mode_of(q.body) for q in requests] == ["named_tool", "json_schema", "json_object_schema",
                                                   "json_object_schema"]
    assert chat.refused == {Mode.NAMED_TOOL, Mode.JSON_SCHEMA}
    assert chat.working == {Mode.JSON_OBJECT_SCHEMA}
    first = r1.path[0].model_calls[0]
    assert (first.mode, first.http_attempts) == ("json_object_schema", 3)
    assert r2.path[0].model_calls[0].http_attempts == 1


def test_a_500_on_a_mode_that_worked_is_retried_not_refused() -> None:
    """500 on a mode never seen working is a refusal; on one that worked, a transient failure."""
    script = [VALID, error_reply(500, "hiccup"), VALID]
    (r1, r2), requests, clock, chat = decide(script, runs=2)
    assert r1.terminal == r2.terminal == "end1"
    assert [mode_of(q.body) for q in requests] == ["named_tool"] * 3
    assert chat.refused == set() and len(clock.sleeps) == 1


def test_every_mode_refused_is_model_refused_and_prompt_is_the_last_resort() -> None:
    """A server refusing every form: one request per mode, then ModelRefused (nothing retried)."""
    (result,), requests, clock, _ = decide([error_reply(400, "no")])
    assert isinstance(result.error, ModelRefused)
    assert [mode_of(q.body) for q in requests] == ["named_tool", "json_schema", "json_object_schema", "prompt"]
    assert clock.sleeps == []
    assert "400" in str(result.error)


def test_401_is_model_refused_without_retries() -> None:
    """401: ModelRefused at once, one request, no sleep; raised by default, with its result attached."""
    from statemachine_agent import result_of

    with pytest.raises(ModelRefused, match="401") as info:
        decide([error_reply(401, "bad key")], raise_errors=True)
    found = result_of(info.value)
    assert found is not None and found.terminal == "failed"
    (result,), requests, clock, _ = decide([error_reply(401, "bad key")])
    assert isinstance(result.error, ModelRefused)
    assert len(requests) == 1 and clock.sleeps == []


def test_a_server_that_never_answers_is_model_unavailable_routed_by_on_error() -> None:
    """A hang times out (0.3 s client timeout), each retry too; ModelUnavailable takes the error route."""
    (result,), requests, _, _ = decide([FakeResponse(hang=True)], routed=True, chat={"timeout": 0.3, "retries": 2})
    step = result.path[0]
    assert step.kind is StepKind.ERROR and result.terminal == "model_down"
    assert isinstance(step.error, ModelUnavailable) and "no answer within 0.3 s" in str(step.error)
    assert len(requests) == 2


def test_a_closed_port_is_model_unavailable() -> None:
    """Nothing listening: ModelUnavailable after the retries, on the fake clock."""
    with FakeOpenAIServer([VALID]) as server:
        url = server.url
    compiled, _ = decision_workflow(2)
    clock = FakeClock()
    result = compiled.run_sync(Ctx(), policy=LLMPolicy(base_url=url, model="fake", retries=2), clock=clock,
                               raise_errors=False)
    assert isinstance(result.error, ModelUnavailable) and len(clock.sleeps) == 1


def test_empty_choices_and_malformed_json_are_recorded_rejections() -> None:
    """No choices, bytes that are not JSON, a JSON array: each a NoChoice, recorded with its reason."""
    script = [FakeResponse(200, {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 0}}),
              FakeResponse(200, raw=b"{not json"), FakeResponse(200, [1, 2]),
              FakeResponse(200, {"choices": [{"message": "hi"}]}), VALID]
    (result,), _, _, _ = decide(script, max_policy_attempts=5)
    assert result.terminal == "end1"
    rejected = result.path[0].rejected
    assert len(rejected) == 4
    assert "no choices" in rejected[0]
    assert "not a JSON object" in rejected[1] and "{not json" in rejected[1]
    assert "not a JSON object" in rejected[2]
    assert "no message" in rejected[3]
    assert result.usage.input_tokens == 4 + 10 and result.usage.calls == 5


def test_tool_call_with_non_json_arguments_and_a_json_non_object_are_rejections() -> None:
    """Arguments that are not JSON, or JSON naming no transition: rejected with the reason, asked again."""
    script = [tool_reply(TOOL, "{oops"), tool_reply(TOOL, "[1, 2]"), tool_reply(TOOL, '{"transition": 7}'), VALID]
    (result,), requests, _, _ = decide(script, max_policy_attempts=4)
    assert result.terminal == "end1"
    r = result.path[0].rejected
    assert "not JSON" in r[0] and "names no transition" in r[1] and "names no transition" in r[2]
    # The model is shown what it said and why it was rejected.
    last = requests[-1].body["messages"]
    assert [m["role"] for m in last[2:]] == ["assistant", "user"] * 3
    assert "That answer was rejected" in last[3]["content"]


class Flags(BaseModel):
    seen: list[Any] = []


def budget_events() -> tuple[list[Any], Callable[[Any], None]]:
    from statemachine_agent.events import BudgetExhausted

    got: list[Any] = []

    def hook(e: Any) -> None:
        if isinstance(e, BudgetExhausted):
            got.append(e.budget)

    return got, hook


def test_a_token_budget_smaller_than_one_reply_ends_the_run_with_budget_tokens() -> None:
    """One reply of 13 tokens against a budget of 5: failure terminal, Budget.TOKENS, one request."""
    got, hook = budget_events()
    (result,), requests, _, _ = decide([VALID], token_budget=5, hooks=[hook])
    assert result.terminal == "failed" and got == [Budget.TOKENS]
    assert len(requests) == 1
    assert result.usage.total_tokens == 13  # the call that went over is still recorded


class Two(Context):
    text: str = "t"
    a: str = UNSET
    b: str = UNSET
    tries: int = 0


def two_llm_steps(chat: ChatModel, *, stubborn: bool = False) -> Any:
    """Two LLM steps in a row; with ``stubborn`` the second catches every error and asks 5 times."""
    wf = Workflow("two", Two)
    first = llm_step(chat, write="a", output=str, prompt="first")
    second = llm_step(chat, write="b", output=str, prompt="second")
    wf.add_state("one", first, initial=True, writes=["a"])

    async def keep_asking(ctx: Two, site: Any) -> None:
        for _ in range(5):
            try:
                await second(ctx, site)
            except Exception:  # this action tries to ignore the budget, on purpose
                continue
            return
        ctx.b = "gave up"

    wf.add_state("two", keep_asking if stubborn else second, writes=["b"])
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("one", "two")
    wf.transition("two", "done")
    return wf.compile()


@pytest.mark.parametrize("stubborn", [False, True])
def test_a_spent_token_budget_makes_no_further_request_even_when_the_action_catches_it(stubborn: bool) -> None:
    """Budget 13, first reply 13 tokens: the second step's calls are refused before any request, and the
    run ends in the failure terminal with Budget.TOKENS, even when the action catches the refusal."""
    got, hook = budget_events()
    answer = chat_reply(json.dumps({"value": "x"}))
    with FakeOpenAIServer([answer]) as server:
        chat = ChatModel(base_url=server.url, model="fake")
        result = two_llm_steps(chat, stubborn=stubborn).run_sync(Two(), token_budget=13, clock=FakeClock(),
                                                                  hooks=[hook], raise_errors=False)
        assert len(server.requests) == 1  # holds either way: no request once the budget is spent
    assert result.context.a == "x"
    assert [s.state for s in result.path] == ["one", "two"]
    assert result.terminal == "failed"
    assert got == [Budget.TOKENS]


def test_a_cost_budget_with_a_price_ends_the_run_with_budget_cost() -> None:
    """Price per million tokens: 10 prompt tokens at 1e6/M cost 10 > cost_budget 5."""
    got, hook = budget_events()
    (result,), requests, _, _ = decide([VALID], chat={"prices": {"fake": Price(1_000_000, 0)}}, cost_budget=5.0,
                                       hooks=[hook])
    assert result.terminal == "failed" and got == [Budget.COST]
    assert result.usage.cost == 10.0 and len(requests) == 1
    (ok,), _, _, _ = decide([VALID], chat={"prices": Price(1.0, 2.0)}, cost_budget=1.0)
    assert ok.terminal == "end1" and ok.usage.cost == pytest.approx((10 * 1 + 3 * 2) / 1e6)


SECRET = "sk-test-0123456789abcdef"


def test_the_api_key_goes_in_the_header_and_in_no_error_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key from the env var is sent as a bearer token; errors never show it, even when the server
    echoes it back in its error body."""
    monkeypatch.setenv("SMA_TEST_KEY", SECRET)
    chat = {"api_key_env": "SMA_TEST_KEY", "retries": 2}
    (ok,), requests, _, model = decide([VALID], chat=chat)
    assert ok.terminal == "end1"
    assert requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in json.dumps(requests[0].body) and SECRET not in repr(model)
    echo = f"Incorrect API key provided: {SECRET}"
    errors = []
    for script in ([error_reply(401, echo)], [error_reply(403, echo)], [error_reply(400, echo)],
                   [error_reply(500, echo)], [error_reply(503, echo)], [error_reply(429, echo)]):
        (failed,), _, _, _ = decide(script, chat=chat)
        assert isinstance(failed.error, ModelError), script
        errors.append(failed.error)
        assert SECRET not in (failed.reason or "")
    for e in errors:
        assert SECRET not in str(e) and SECRET not in repr(e) and SECRET not in repr(e.args)


def test_no_key_in_the_environment_sends_no_authorization_header(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset env var: no Authorization header at all (not "Bearer None")."""
    monkeypatch.delenv("SMA_NO_SUCH_KEY", raising=False)
    _, requests, _, _ = decide([VALID], chat={"api_key_env": "SMA_NO_SUCH_KEY"})
    assert "authorization" not in requests[0].headers


# --- LLM steps -----------------------------------------------------------------------------------

class Summary(BaseModel):
    title: str
    score: int


class StepCtx(Context):
    text: str = "the text"
    summary: Summary | None = None
    count: int | None = None
    note: str | None = None


def summarizer(chat: ChatModel, *, max_attempts: int = 2, output: Any = Summary, write: str = "summary",
               routed: bool = True) -> Any:
    wf = Workflow("summarize", StepCtx)
    wf.add_state("work", llm_step(chat, write=write, output=output, max_attempts=max_attempts,
                                  prompt=lambda c: f"Summarize: {c.text}"),
                 initial=True, reads=["text"], writes=[write])
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("work", "done")
    if routed:
        wf.terminal("invalid", outcome="failure")
        wf.on_error("work", ModelAnswerInvalid, "invalid")
    return wf.compile()


def run_step(script: list[FakeResponse], **kwargs: Any) -> tuple[Any, list[FakeRequest]]:
    with FakeOpenAIServer(script) as server:
        chat = ChatModel(base_url=server.url, model="fake")
        result = summarizer(chat, **kwargs).run_sync(StepCtx(), clock=FakeClock(), raise_errors=False)
        return result, list(server.requests)


def test_llm_step_writes_a_validated_pydantic_model() -> None:
    """A valid answer (a named tool call) is validated and written as the declared type."""
    result, requests = run_step([tool_reply("answer", {"title": "T", "score": 3})])
    assert result.terminal == "done"
    assert result.context.summary == Summary(title="T", score=3)
    assert requests[0].body["tool_choice"]["function"]["name"] == "answer"
    assert requests[0].body["messages"][-1]["content"] == "Summarize: the text"
    assert result.path[0].model_calls[0].purpose == "answer"


def test_llm_step_feeds_validation_errors_back_then_takes_the_corrected_answer() -> None:
    """An answer that does not validate is shown back with the error; the next one is taken."""
    result, requests = run_step([tool_reply("answer", {"title": "T", "score": "lots"}),
                                 tool_reply("answer", {"title": "T", "score": 4})])
    assert result.context.summary == Summary(title="T", score=4)
    second = requests[1].body["messages"]
    assert second[-2] == {"role": "assistant", "content": json.dumps({"title": "T", "score": "lots"})}
    assert "That answer was rejected" in second[-1]["content"] and "score" in second[-1]["content"]
    assert [c.attempt for c in result.path[0].model_calls] == [1, 2]


def test_llm_step_raises_model_answer_invalid_after_max_attempts() -> None:
    """Answers that never validate: exactly max_attempts requests, then ModelAnswerInvalid (routed)."""
    bad = [tool_reply("answer", {"title": 1}), chat_reply("no JSON here"), FakeResponse(200, raw=b"{not json")]
    result, requests = run_step(bad, max_attempts=3)
    assert result.terminal == "invalid"
    assert isinstance(result.path[0].error, ModelAnswerInvalid)
    assert "rejected 3 time(s)" in str(result.path[0].error)
    assert len(requests) == 3 and result.context.summary is None
    unrouted, _ = run_step(bad, max_attempts=1, routed=False)
    assert unrouted.terminal == "failed" and isinstance(unrouted.error, ModelAnswerInvalid)


def test_llm_step_with_a_scalar_output_is_wrapped_and_unwrapped() -> None:
    """output=int: the schema is {"value": int}; the answer's value is written."""
    result, requests = run_step([chat_reply('```json\n{"value": 7}\n```')], output=int, write="count")
    assert result.context.count == 7
    assert requests[0].body["tools"][0]["function"]["parameters"]["required"] == ["value"]


# --- tool rounds ---------------------------------------------------------------------------------

class ToolCtx(Context):
    q: str = "q"
    a: str | None = None


def tool_workflow(chat: ChatModel, *, max_rounds: int, max_attempts: int, ran: list[str],
                  visits: int = 1) -> Any:
    wf = Workflow("tooling", ToolCtx)

    @wf.tool
    def lookup(q: str) -> str:
        """Look something up."""
        ran.append(f"lookup {q}")
        return f"found {q}"

    @wf.tool
    def secret() -> str:
        """Registered, but not declared by the LLM step's state."""
        ran.append("secret")
        return "s3cret"

    wf.add_state("work", llm_step(chat, write="a", output=str, prompt="go", tools=["lookup"], max_rounds=max_rounds,
                                  max_attempts=max_attempts),
                 initial=True, writes=["a"], tools=["lookup"], max_visits=visits)

    @wf.state(tools=["secret"], writes=["a"])
    async def other(ctx: ToolCtx, tools: Any) -> None:
        ctx.a = await tools.call("secret")

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("work", other, guard=wf.guard(lambda c: c.a == "other", name="elsewhere", reads=["a"]))
    wf.transition("work", "work", guard=wf.guard(lambda c: c.a != "stop", name="again", reads=["a"]))
    wf.transition("work", "done")
    wf.transition(other, "done")
    wf.on_error("work", ModelAnswerInvalid, "failed")
    return wf


def is_tool_round(request: FakeRequest) -> bool:
    return request.body.get("tool_choice") == "auto"


def test_a_call_to_an_undeclared_tool_gets_an_error_back_and_never_runs() -> None:
    """The model calls 'secret' (registered, not declared here) and 'rm_rf' (unknown): each gets an
    error message as the tool's answer; neither runs; then 'lookup' runs once."""
    ran: list[str] = []
    script = [tool_reply("secret", {}), tool_reply("rm_rf", {"path": "/"}), tool_reply("lookup", {"q": "x"}),
              chat_reply('{"value": "stop"}')]
    with FakeOpenAIServer(script) as server:
        chat = ChatModel(base_url=server.url, model="fake")
        result = tool_workflow(chat, max_rounds=3, max_attempts=1, ran=ran).compile().run_sync(
            ToolCtx(), clock=FakeClock(), raise_errors=False)
        requests = list(server.requests)
    assert ran == ["lookup x"]
    assert result.terminal == "done" and result.context.a == "stop"
    tools_offered = [t["function"]["name"] for t in requests[0].body["tools"]]
    assert tools_offered == ["lookup"]
    assert "idempotency_key" not in json.dumps(requests[0].body["tools"])
    tool_msgs = [m for m in requests[3].body["messages"] if m["role"] == "tool"]
    assert [m["content"].startswith("error: there is no tool") for m in tool_msgs] == [True, True, False]
    assert tool_msgs[2]["content"] == json.dumps("found x")


def test_tool_rounds_never_exceed_max_rounds() -> None:
    """A model that only ever calls tools: max_rounds tool rounds, then max_attempts asks, no more."""
    ran: list[str] = []

    def always_tools(request: FakeRequest, _: int) -> FakeResponse:
        return tool_reply("lookup", {"q": "again"})

    with FakeOpenAIServer(always_tools) as server:
        chat = ChatModel(base_url=server.url, model="fake")
        result = tool_workflow(chat, max_rounds=2, max_attempts=2, ran=ran).compile().run_sync(
            ToolCtx(), clock=FakeClock(), raise_errors=False)
        requests = list(server.requests)
    assert [is_tool_round(q) for q in requests] == [True, True, False, False]
    assert ran == ["lookup again"] * 2
    assert result.terminal == "failed" and isinstance(result.path[0].error, ModelAnswerInvalid)


STEP_KINDS = ("lookup", "undeclared", "bad_args", "nested_args", "answer_stop", "answer_again", "answer_bad",
              "prose", "empty", "malformed")


def step_reply(kind: str) -> FakeResponse:
    return {
        "lookup": tool_reply("lookup", {"q": "x"}),
        "undeclared": tool_reply("secret", {}),
        "bad_args": tool_reply("lookup", "{oops"),
        "nested_args": tool_reply("lookup", "[" * 5000 + "]" * 5000),
        "answer_stop": chat_reply('{"value": "stop"}'),
        "answer_again": tool_reply("answer", {"value": "again"}),
        "answer_bad": tool_reply("answer", {"value": 3}),
        "prose": chat_reply("sure thing"),
        "empty": FakeResponse(200, {"choices": []}),
        "malformed": FakeResponse(200, raw=b"{not json"),
    }[kind]


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
       st.lists(st.sampled_from(STEP_KINDS), min_size=1, max_size=20))
def test_the_checkers_worst_case_model_calls_bounds_the_requests_made(rounds: int, attempts: int, visits: int,
                                                                       kinds: list[str]) -> None:
    """Whatever the model answers (all 200s), the requests a run makes are at most the checker's
    worst_case_model_calls, every call is recorded, and the secret tool never runs."""
    ran: list[str] = []
    script = [step_reply(k) for k in kinds]
    with FakeOpenAIServer(script) as server:
        chat = ChatModel(base_url=server.url, model="fake")
        wf = tool_workflow(chat, max_rounds=rounds, max_attempts=attempts, ran=ran, visits=visits)
        bound = wf.analyze().worst_case_model_calls
        result = wf.compile().run_sync(ToolCtx(), clock=FakeClock(), raise_errors=False)
        n = len(server.requests)
    assert bound is not None and bound == visits * (rounds + attempts)
    assert 1 <= n <= bound
    assert result.usage.calls == n
    assert "secret" not in ran
    assert result.terminal in {"done", "failed"}


# --- hostile inputs ------------------------------------------------------------------------------

def test_a_one_megabyte_reply_is_a_bounded_rejection() -> None:
    """1 MB of prose: rejected with a reason of bounded size, and what is shown back to the model is
    bounded too (the next request does not carry the megabyte)."""
    huge = chat_reply("x" * 1_000_000)
    (result,), requests, _, _ = decide([huge, huge, VALID])
    assert result.terminal == "end1"
    assert len(result.path[0].rejected) == 2
    assert all(len(r) < 5000 for r in result.path[0].rejected)
    assert len(json.dumps(requests[-1].body)) < 20_000


def nested_body(depth: int) -> bytes:
    args = "[" * depth + "]" * depth
    call = {"id": "c", "type": "function", "function": {"name": TOOL, "arguments": "@@"}}
    body = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [call]},
                         "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    return json.dumps(body).replace('"@@"', args).encode()


@pytest.mark.parametrize("where", ["arguments_text", "arguments_object", "whole_body"])
def test_deeply_nested_json_is_a_rejection_not_a_crash(where: str) -> None:
    """10,000 levels of [[[...]]] as the arguments' text, as the arguments themselves, or as the whole
    body: a recorded rejection (or a failed step with a reason), never a RecursionError."""
    depth = 10_000
    if where == "arguments_text":
        bad = tool_reply(TOOL, "[" * depth + "]" * depth)
    elif where == "arguments_object":
        bad = FakeResponse(200, raw=nested_body(depth))
    else:
        bad = FakeResponse(200, raw=b"[" * depth + b"]" * depth)
    (result,), _, _, _ = decide([bad, VALID])
    assert result.error is None, repr(result.error)
    assert result.terminal == "end1"
    assert len(result.path[0].rejected) == 1


def test_a_deeply_nested_answer_to_an_llm_step_is_a_rejection() -> None:
    """The same for an LLM step: fed back as an invalid answer, then the next one is taken."""
    result, _ = run_step([FakeResponse(200, raw=nested_body(10_000)), tool_reply("answer", {"title": "T", "score": 1})])
    assert result.error is None, repr(result.error)
    assert result.context.summary == Summary(title="T", score=1)


class Hostile:
    """Its repr and str raise; it is not JSON."""

    def __repr__(self) -> str:
        raise RuntimeError("repr refused")

    __str__ = __repr__


class EvilStr(str):
    """A str whose comparisons and hash raise."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq refused")

    def __ne__(self, other: object) -> bool:
        raise RuntimeError("ne refused")

    def __hash__(self) -> int:
        raise RuntimeError("hash refused")


class AnyCtx(Context):
    model_config = Context.model_config | {"arbitrary_types_allowed": True}
    thing: Any = "unset"
    word: Any = "unset"


def test_context_fields_whose_repr_or_eq_raise_are_shown_to_the_policy_safely() -> None:
    """A read field whose repr raises and one holding a str subclass with hostile __eq__/__hash__: the
    decision is still asked and taken."""
    wf = Workflow("hostile", AnyCtx)

    @wf.state(initial=True, reads=["thing", "word"], decision=True)
    def triage(ctx: AnyCtx) -> None:
        pass

    wf.terminal("a")
    wf.terminal("b")
    wf.terminal("failed", outcome="failure")
    wf.transition(triage, "a", description="go to a")
    wf.transition(triage, "b", description="go to b")
    with FakeOpenAIServer([tool_reply(TOOL, {"transition": "triage_to_b"})]) as server:
        policy = LLMPolicy(base_url=server.url, model=EvilStr("fake"), instructions=EvilStr("Choose."))
        result = wf.compile().run_sync(AnyCtx(thing=Hostile(), word=EvilStr("approve")), policy=policy,
                                       clock=FakeClock(), raise_errors=False)
        body = server.requests[0].body
    assert result.terminal == "b", result.reason
    shown = body["messages"][1]["content"]
    assert "- thing: " in shown and '- word: "approve"' in shown
    assert body["model"] == "fake"


def test_a_policy_answer_that_is_a_hostile_str_is_judged_as_plain_text() -> None:
    """A wrapper returning the model's answer as an EvilStr: compared as plain str, taken."""
    compiled, _ = decision_workflow(2)
    with FakeOpenAIServer([VALID]) as server:
        inner = LLMPolicy(base_url=server.url, model="fake")

        async def policy(decision: Any) -> Any:
            answer = await inner(decision)
            return EvilStr(answer) if isinstance(answer, str) else answer

        result = compiled.run_sync(Ctx(), policy=policy, clock=FakeClock(), raise_errors=False)
    assert result.terminal == "end1"


def test_cancelling_a_run_mid_request_leaks_no_task_and_the_run_can_go_on() -> None:
    """The server hangs on the first request; the run's task is cancelled while it waits. No task is
    left behind, the step did not happen, and the same run, driven again, finishes."""
    compiled, names = decision_workflow(2)

    def script(_: FakeRequest, i: int) -> FakeResponse:
        return FakeResponse(hang=True) if i == 0 else VALID

    with FakeOpenAIServer(script) as server:
        chat = ChatModel(base_url=server.url, model="fake", timeout=30.0)

        async def go() -> Any:
            run = compiled.start(Ctx(), policy=LLMPolicy(chat=chat), clock=FakeClock())
            task = asyncio.create_task(run.run_to_end())
            for _ in range(2000):  # until the request is in (not a timing assumption: we wait for it)
                if server.requests:
                    break
                await asyncio.sleep(0.005)
            assert server.requests
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0)
            leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert leftover == []
            assert run.path == [] and not run.done
            result = await run.run_to_end()
            await chat.aclose()
            return result

        result = asyncio.run(go())
        assert len(server.requests) == 2
    assert result.terminal == "end1" and result.path[0].transition in names
    assert result.usage.calls == 1


def test_a_500_in_a_tool_round_is_retried_not_taken_as_a_refusal() -> None:
    """A tool round has no other form to fall back to: a 500 there is a transient failure, retried
    after a backoff on the run's clock, not a ModelRefused ending the step."""
    ran: list[str] = []
    script = [error_reply(500, "hiccup"), tool_reply("lookup", {"q": "x"}), chat_reply("done looking"),
              chat_reply('{"value": "stop"}')]
    clock = FakeClock()
    with FakeOpenAIServer(script) as server:
        chat = ChatModel(base_url=server.url, model="fake")
        result = tool_workflow(chat, max_rounds=3, max_attempts=1, ran=ran).compile().run_sync(
            ToolCtx(), clock=clock, raise_errors=False)
        n = len(server.requests)
    assert result.error is None, repr(result.error)
    assert result.terminal == "done" and ran == ["lookup x"]
    assert n == 4 and len(clock.sleeps) == 1
    assert result.path[0].model_calls[0].http_attempts == 2


def test_the_fake_server_closes_without_waiting_for_a_poll() -> None:
    """FakeOpenAIServer serves with a short shutdown poll: close() used to wait up to 0.5 s (the
    socketserver default), a test suite starting a server per Hypothesis example waited minutes."""
    server = FakeOpenAIServer([VALID])
    try:
        assert server._thread._kwargs.get("poll_interval", 0.5) <= 0.05  # type: ignore[attr-defined]
    finally:
        server.close()
    assert not server._thread.is_alive()
