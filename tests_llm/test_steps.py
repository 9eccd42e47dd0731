"""LLM steps against the real model: a pydantic-validated answer written to the declared field, in
both forms this server enforces, and an answer that cannot validate routed after feedback."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, field_validator

from statemachine_agent import UNSET, Context, Workflow
from statemachine_agent.errors import ModelAnswerInvalid
from statemachine_agent.llm import ChatModel, Mode, llm_step


class Person(BaseModel):
    name: str = Field(min_length=1)
    age: int = Field(ge=0, le=150)


class Note(Context):
    text: str
    person: Person = UNSET


def _compile(chat: ChatModel, output: type[BaseModel] = Person):  # type: ignore[no-untyped-def]
    wf = Workflow("extract", Note)
    extract = wf.state(name="extract", initial=True, reads=["text"], writes=["person"])(
        llm_step(chat, write="person", output=output, prompt=lambda ctx: ctx.text,
                 instructions="Extract the person's name and age from the text."))
    done = wf.terminal("done")
    invalid = wf.terminal("invalid", outcome="failure")
    wf.transition(extract, done)
    wf.on_error(extract, ModelAnswerInvalid, invalid)
    return wf.compile()


@pytest.mark.parametrize(("server", "mode", "refused"), [
    ("llama-cpp-python", Mode.NAMED_TOOL, set()),
    # llama.cpp's profile asks json_schema first, which this server answers with HTTP 500: the
    # step falls back to the json_object + schema form.
    ("llama.cpp", Mode.JSON_OBJECT_SCHEMA, {Mode.JSON_SCHEMA}),
])
def test_llm_step_writes_a_validated_model(llm_url: str, server: str, mode: Mode, refused: set[Mode]) -> None:
    chat = ChatModel(base_url=llm_url, model="smollm2", server=server, max_tokens=64, timeout=120.0)
    compiled = _compile(chat)
    cases = [("Alice is 31 years old.", "Alice", 31), ("Bob, aged 45, lives in Paris.", "Bob", 45)]
    for i, (text, name, age) in enumerate(cases):
        result = compiled.run_sync(Note(text=text))
        assert result.terminal == "done", result.reason
        person = result.context.person
        assert type(person) is Person
        assert (person.name, person.age) == (name, age)  # measured: SmolLM2 extracts these in both forms
        (step,) = result.path
        assert step.writes == ("person",)
        (call,) = step.model_calls
        assert call.purpose == "answer"
        assert call.mode == mode
        assert call.input_tokens > 0
        assert call.output_tokens > 0
        assert call.latency > 0
        assert call.http_attempts == (1 + len(refused) if i == 0 else 1)
    assert chat.refused == refused


class Coded(BaseModel):
    code: str

    @field_validator("code")
    @classmethod
    def _known(cls, value: str) -> str:
        if value != "XK-7731-QZ":
            raise ValueError("must be the ticket's secret code")
        return value


class CodedNote(Context):
    text: str
    person: Coded = UNSET


def test_an_answer_that_never_validates_is_fed_back_then_routed(llm_url: str) -> None:
    """The grammar cannot enforce a Python validator: both asks fail validation, the second after the
    errors were shown to the model, and the step's ModelAnswerInvalid goes to its route."""
    chat = ChatModel(base_url=llm_url, model="smollm2", server="llama-cpp-python", max_tokens=32, timeout=120.0)
    wf = Workflow("coded", CodedNote)
    extract = wf.state(name="extract", initial=True, reads=["text"], writes=["person"])(
        llm_step(chat, write="person", output=Coded, prompt=lambda ctx: ctx.text, max_attempts=2))
    done = wf.terminal("done")
    invalid = wf.terminal("invalid", outcome="failure")
    wf.transition(extract, done)
    wf.on_error(extract, ModelAnswerInvalid, invalid)
    result = wf.compile().run_sync(CodedNote(text="Give the code of this ticket."))
    assert result.terminal == "invalid"
    (step,) = result.path
    assert isinstance(step.error, ModelAnswerInvalid)
    assert "rejected 2 time(s)" in str(step.error)
    assert "secret code" in str(step.error)
    assert [c.attempt for c in step.model_calls] == [1, 2]
    assert all(c.output_tokens > 0 for c in step.model_calls)
    assert result.usage.calls == 2
