"""Golden request bodies: what each answer mode puts on the wire, as each server's documentation has it.

The bodies are written out by hand from the protocol (OpenAI's chat completions and structured
outputs, llama.cpp's ``json_object`` + ``schema``, vLLM's ``structured_outputs.choice``), and compared
with what a real HTTP server on 127.0.0.1 received from the adapter.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine_agent import Context, FakeClock, Workflow
from statemachine_agent.llm import PROFILES, ChatModel, LLMPolicy, Mode, Profile, ServerKind
from statemachine_agent.llm.testing import FakeOpenAIServer, FakeRequest, FakeResponse, chat_reply, error_reply

NAMES = ["triage_to_approved", "triage_to_rejected"]
SCHEMA = {"type": "object", "properties": {"transition": {"type": "string", "enum": NAMES}},
          "required": ["transition"], "additionalProperties": False}
BASE = {"model": "m", "temperature": 0.0, "max_tokens": 64}
GOLDEN: dict[Mode, dict[str, Any]] = {
    Mode.NAMED_TOOL: {**BASE, "tools": [{"type": "function", "function": {
        "name": "choose_transition", "description": "Choose the next workflow transition.", "parameters": SCHEMA}}],
        "tool_choice": {"type": "function", "function": {"name": "choose_transition"}}},
    Mode.JSON_SCHEMA: {**BASE, "response_format": {"type": "json_schema", "json_schema": {
        "name": "choose_transition", "schema": SCHEMA, "strict": True}}},
    Mode.JSON_OBJECT_SCHEMA: {**BASE, "response_format": {"type": "json_object", "schema": SCHEMA}},
    Mode.CHOICE: {**BASE, "structured_outputs": {"choice": NAMES}},
    Mode.PROMPT: {**BASE},
}


class Ctx(Context):
    """A pull request to triage."""

    text: str


def triage() -> Any:
    wf = Workflow("review", Ctx)
    wf.add_state("triage", lambda ctx: None, initial=True, reads=["text"], decision=True,
                 description="Decide what happens to the pull request.")
    wf.terminal("approved")
    wf.terminal("rejected", outcome="failure")
    wf.transition("triage", "approved", description="the change is good")
    wf.transition("triage", "rejected", description="the change is bad")
    return wf.compile()


def answer_for(mode: Mode) -> FakeResponse:
    if mode is Mode.NAMED_TOOL:
        return chat_reply(None, tool_calls=[("choose_transition", {"transition": "triage_to_approved"})])
    if mode is Mode.CHOICE or mode is Mode.PROMPT:
        return chat_reply("triage_to_approved")
    return chat_reply('{"transition": "triage_to_approved"}')


def sent_mode(body: dict[str, Any]) -> Mode:
    """The mode a request body was sent in, read from its fields."""
    return (Mode.NAMED_TOOL if "tools" in body else Mode.CHOICE if "structured_outputs" in body
            else Mode.PROMPT if "response_format" not in body
            else Mode.JSON_SCHEMA if body["response_format"]["type"] == "json_schema" else Mode.JSON_OBJECT_SCHEMA)


def refuse_until(mode: Mode) -> Any:
    """A server that answers 400 to every request that is not in ``mode``."""

    def script(request: FakeRequest, _: int) -> FakeResponse:
        sent = sent_mode(request.body)
        return answer_for(mode) if sent is mode else error_reply(400, f"{sent} is not supported")

    return script


CASES = [
    (ServerKind.LLAMA_CPP_PYTHON, Mode.NAMED_TOOL),
    (ServerKind.OPENAI, Mode.JSON_SCHEMA),
    (ServerKind.LLAMA_CPP_PYTHON, Mode.JSON_OBJECT_SCHEMA),
    (ServerKind.VLLM, Mode.CHOICE),
    (ServerKind.GENERIC, Mode.PROMPT),
]


@pytest.mark.parametrize(("server", "mode"), CASES, ids=[f"{s}-{m}" for s, m in CASES])
def test_each_mode_sends_its_documented_body(server: ServerKind, mode: Mode) -> None:
    """The request in each mode carries exactly the documented fields, beside the conversation."""
    with FakeOpenAIServer(refuse_until(mode)) as fake:
        policy = LLMPolicy(base_url=fake.url, model="m", server=server)
        result = triage().run_sync(Ctx(text="All tests pass."), policy=policy, clock=FakeClock())
        assert result.terminal == "approved"
        last = fake.requests[-1].body
        messages = last.pop("messages")
        expected = dict(GOLDEN[mode])
        if mode is Mode.JSON_SCHEMA and server is not ServerKind.OPENAI:
            del expected["response_format"]["json_schema"]["strict"]
        assert last == expected
        assert result.path[0].model_calls[0].mode == str(mode)
        if mode is Mode.PROMPT:  # nothing enforces it, so the request says it
            assert messages[-1] == {"role": "user", "content": "Answer with exactly one of: triage_to_approved, "
                                    "triage_to_rejected. Reply with the name only."}


def test_the_conversation_shows_the_state_its_reads_and_the_enabled_options() -> None:
    """The messages name the state, show its declared reads only, and list each option with its target."""
    with FakeOpenAIServer([answer_for(Mode.NAMED_TOOL)]) as fake:
        policy = LLMPolicy(base_url=fake.url, model="m", server="llama-cpp-python", instructions="Be careful.")
        triage().run_sync(Ctx(text="All tests pass."), policy=policy)
        assert fake.requests[0].body["messages"] == [
            {"role": "system", "content": "Be careful."},
            {"role": "user", "content": "Workflow: review\nState: triage\n"
             "About this state: Decide what happens to the pull request.\n"
             "Context:\n- text: \"All tests pass.\"\n"
             "Transitions you may take:\n"
             "- triage_to_approved (goes to approved): the change is good\n"
             "- triage_to_rejected (goes to rejected): the change is bad\n"
             "Which transition? Answer with its name."},
        ]


def test_a_refused_mode_is_not_sent_again() -> None:
    """After a 400 on a mode, the same ChatModel goes straight to the mode that worked."""
    with FakeOpenAIServer(refuse_until(Mode.NAMED_TOOL)) as fake:
        chat = ChatModel(base_url=fake.url, model="m", server="llama-cpp-python", max_tokens=64)
        policy = LLMPolicy(chat=chat)
        compiled = triage()
        compiled.run_sync(Ctx(text="a"), policy=policy)
        assert len(fake.requests) == 2
        assert fake.requests[0].body["response_format"]["type"] == "json_object"  # its profile's first
        compiled.run_sync(Ctx(text="b"), policy=policy)
        assert len(fake.requests) == 3
        assert fake.requests[2].body["tool_choice"]["function"]["name"] == "choose_transition"
        assert chat.refused == {Mode.JSON_OBJECT_SCHEMA}


STEP_MODES = [m for m in Mode if m is not Mode.CHOICE]


@settings(max_examples=15, deadline=None)
@given(kind=st.sampled_from(list(ServerKind)),
       modes=st.lists(st.sampled_from(STEP_MODES), min_size=1, max_size=4, unique=True),
       decision_modes=st.lists(st.sampled_from(list(Mode)), max_size=5, unique=True),
       strict=st.booleans())
def test_a_profile_of_your_own_is_followed_mode_by_mode(kind: ServerKind, modes: list[Mode],
                                                        decision_modes: list[Mode], strict: bool) -> None:
    """ChatModel(profile=Profile(...)) tries the profile's decision modes (else its modes), in order,
    on a real HTTP server that refuses all but the last; the answer is taken in that mode and the call
    is labelled with the profile's kind."""
    profile = Profile(kind, tuple(modes), frozenset(), decision_modes=tuple(decision_modes), strict=strict)
    tried = decision_modes or modes
    with FakeOpenAIServer(refuse_until(tried[-1])) as fake:
        chat = ChatModel(base_url=fake.url, model="m", profile=profile, max_tokens=64)
        result = triage().run_sync(Ctx(text="a"), policy=LLMPolicy(chat=chat), clock=FakeClock())
        assert [sent_mode(r.body) for r in fake.requests] == tried
    assert result.terminal == "approved"
    [call] = result.path[0].model_calls
    assert (call.mode, call.provider) == (str(tried[-1]), str(kind))
    assert chat.profile is profile and chat.refused == set(tried[:-1])


@pytest.mark.parametrize("kind", list(ServerKind))
def test_profile_takes_a_server_kind_as_server_does(kind: ServerKind) -> None:
    """profile="vllm" (or ServerKind.VLLM) picks the same built-in profile as server="vllm"."""
    for given_kind in (kind, kind.value):
        assert ChatModel(base_url="http://127.0.0.1:1/v1", model="m", profile=given_kind).profile is PROFILES[kind]
        assert ChatModel(base_url="http://127.0.0.1:1/v1", model="m", server=given_kind).profile is PROFILES[kind]
    assert ChatModel(base_url="http://127.0.0.1:1/v1", model="m").profile is PROFILES[ServerKind.GENERIC]


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"server": "vllm", "profile": "vllm"}, TypeError, "give one of the two"),
    ({"profile": "bogus"}, ValueError, "or a statemachine_agent.llm.Profile"),
    ({"profile": 42}, ValueError, "profile=42: use one of 'openai'"),
    ({"server": "bogus"}, ValueError, "server='bogus': use one of 'openai'"),
])
def test_a_bad_profile_or_server_is_refused_saying_what_to_give(options: dict[str, Any], error: type[Exception],
                                                                message: str) -> None:
    with pytest.raises(error, match=message):
        ChatModel(base_url="http://127.0.0.1:1/v1", model="m", **options)


@pytest.mark.parametrize(("fields", "error", "message"), [
    ({"modes": ()}, ValueError, "at least one mode"),
    ({"modes": (Mode.CHOICE, Mode.PROMPT)}, ValueError, "put it in decision_modes"),
    ({"modes": ("bogus",)}, ValueError, "holds 'bogus', not a mode"),
    ({"modes": "prompt"}, TypeError, "give a tuple of Mode members"),
    ({"modes": (Mode.PROMPT,), "enforced": None}, TypeError, "enforced=None"),
    ({"modes": (Mode.PROMPT,), "strict": "yes"}, TypeError, "give True or False"),
    ({"modes": (Mode.PROMPT,), "kind": "my-server"}, ValueError, "kind='my-server'"),
])
def test_a_malformed_profile_cannot_be_built(fields: dict[str, Any], error: type[Exception], message: str) -> None:
    """A Profile checks its fields when built, so a ChatModel never holds one it cannot follow."""
    args: dict[str, Any] = {"kind": ServerKind.GENERIC, "enforced": frozenset(), **fields}
    with pytest.raises(error, match=message):
        Profile(**args)


def test_a_profile_takes_mode_names_and_lists_as_their_typed_form() -> None:
    profile = Profile("generic", ["json_schema", Mode.PROMPT], {"json_schema"})  # type: ignore[arg-type]
    assert profile == Profile(ServerKind.GENERIC, (Mode.JSON_SCHEMA, Mode.PROMPT), frozenset({Mode.JSON_SCHEMA}))
    assert type(profile.modes) is tuple and type(profile.kind) is ServerKind
