"""Golden request bodies: what each answer mode puts on the wire, as each server's documentation has it.

The bodies are written out by hand from the protocol (OpenAI's chat completions and structured
outputs, llama.cpp's ``json_object`` + ``schema``, vLLM's ``structured_outputs.choice``), and compared
with what a real HTTP server on 127.0.0.1 received from the adapter.
"""

from __future__ import annotations

from typing import Any

import pytest

from statemachine_agent import Context, FakeClock, Workflow
from statemachine_agent.llm import ChatModel, LLMPolicy, Mode, ServerKind
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


def refuse_until(mode: Mode) -> Any:
    """A server that answers 400 to every request that is not in ``mode``."""

    def script(request: FakeRequest, _: int) -> FakeResponse:
        body = request.body
        sent = (Mode.NAMED_TOOL if "tools" in body else Mode.CHOICE if "structured_outputs" in body
                else Mode.PROMPT if "response_format" not in body
                else Mode.JSON_SCHEMA if body["response_format"]["type"] == "json_schema" else Mode.JSON_OBJECT_SCHEMA)
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
    with FakeOpenAIServer(refuse_until(Mode.JSON_OBJECT_SCHEMA)) as fake:
        chat = ChatModel(base_url=fake.url, model="m", server="llama-cpp-python", max_tokens=64)
        policy = LLMPolicy(chat=chat)
        compiled = triage()
        compiled.run_sync(Ctx(text="a"), policy=policy)
        assert len(fake.requests) == 2
        compiled.run_sync(Ctx(text="b"), policy=policy)
        assert len(fake.requests) == 3
        assert fake.requests[2].body["response_format"]["type"] == "json_object"
        assert chat.refused == {Mode.NAMED_TOOL}
