"""LLM steps against the real model, on each server kind: a pydantic-validated answer written to the
declared field in the first form the kind's profile gives (one the server enforces), a refused form
falling back, tools the server ignores falling back to the enforced answer, and an answer that
cannot validate routed after feedback."""

from __future__ import annotations

from _server import LocalServer, Served
from pydantic import BaseModel, Field, field_validator

from statemachine_agent import UNSET, Context, Workflow
from statemachine_agent.errors import ModelAnswerInvalid
from statemachine_agent.llm import PROFILES, ChatModel, Mode, Profile, ServerKind, llm_step


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


CASES = [("Alice is 31 years old.", "Alice", 31), ("Bob, aged 45, lives in Paris.", "Bob", 45)]


def _extracts(chat: ChatModel, mode: Mode, refused: set[Mode]) -> None:
    compiled = _compile(chat)
    for i, (text, name, age) in enumerate(CASES):
        result = compiled.run_sync(Note(text=text))
        assert result.terminal == "done", result.reason
        person = result.context.person
        assert type(person) is Person
        assert (person.name, person.age) == (name, age)  # measured: SmolLM2 extracts these in every enforced form
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


def test_llm_step_writes_a_validated_model(llm: Served) -> None:
    """The kind's own profile: its first form is accepted and enforced."""
    profile = PROFILES[ServerKind(llm.kind)]
    assert profile.modes[0] in profile.enforced
    chat = ChatModel(base_url=llm.url, model="smollm2", server=llm.kind, max_tokens=64, timeout=120.0)
    _extracts(chat, profile.modes[0], set())


def test_llm_step_falls_back_from_a_refused_form(refusing: tuple[Served, Mode]) -> None:
    """A profile leading with a form the server refuses: the step's answer comes in the next one."""
    served, refused = refusing
    after = PROFILES[ServerKind(served.kind)].modes[0]  # the kind's own first form, after the refused one
    assert after is not refused
    profile = Profile(ServerKind(served.kind), (refused, after, Mode.PROMPT), frozenset({after}))
    chat = ChatModel(base_url=served.url, model="smollm2", profile=profile, max_tokens=64, timeout=120.0)
    _extracts(chat, after, {refused})


def test_tools_the_server_ignores_fall_back_to_the_enforced_answer(local_server: LocalServer) -> None:
    """llama.cpp's server with SmolLM2's chat template ignores ``tools``: the model answers the tool
    round in prose. The step then asks for its answer in the profile's enforced form, which
    validates; the tool is never run."""
    chat = ChatModel(base_url=local_server.url, model="smollm2", server="llama.cpp", max_tokens=64, timeout=120.0)
    looked_up: list[str] = []
    wf = Workflow("extract_with_tools", Note)

    @wf.tool()
    def lookup_person(name: str) -> str:
        """Look a person up in the directory."""
        looked_up.append(name)
        return f"{name} is in the directory"

    extract = wf.state(name="extract", initial=True, reads=["text"], writes=["person"], tools=["lookup_person"])(
        llm_step(chat, write="person", output=Person, prompt=lambda ctx: ctx.text, tools=["lookup_person"],
                 max_rounds=2, instructions="Extract the person's name and age from the text. You may look the "
                                            "person up first."))
    done = wf.terminal("done")
    invalid = wf.terminal("invalid", outcome="failure")
    wf.transition(extract, done)
    wf.on_error(extract, ModelAnswerInvalid, invalid)
    result = wf.compile().run_sync(Note(text=CASES[0][0]))
    assert result.terminal == "done", result.reason
    assert type(result.context.person) is Person
    (step,) = result.path
    tools_call, *answers = step.model_calls
    assert tools_call.purpose == "tools"
    assert tools_call.finish_reason == "stop"  # prose: no tool call, though the tools were offered
    assert looked_up == []
    assert [c.purpose for c in answers] == ["answer"] * len(answers)
    assert answers[0].mode == PROFILES[ServerKind.LLAMA_CPP].modes[0]
    assert chat.refused == set()


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


def test_an_answer_that_never_validates_is_fed_back_then_routed(llm: Served) -> None:
    """The grammar cannot enforce a Python validator: both asks fail validation, the second after the
    errors were shown to the model, and the step's ModelAnswerInvalid goes to its route."""
    chat = ChatModel(base_url=llm.url, model="smollm2", server=llm.kind, max_tokens=32, timeout=120.0)
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
