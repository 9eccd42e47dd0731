"""OpenTelemetry, issue 19's follow-ups: message content (opt-in, in both forms of the GenAI
conventions), no chat span for a model answer the journal gives, and a run that starts in a wait
linking across it. Real HTTP to llm.testing.FakeOpenAIServer, real SQLiteStore, the SDK's in-memory
span and log exporters."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel
from test_otel import REGISTRY_V1_36, REGISTRY_V1_41

from statemachine_agent import UNSET, Context, FakeClock, Workflow
from statemachine_agent._durable import replay
from statemachine_agent.llm import ChatModel, LLMPolicy, llm_step
from statemachine_agent.llm.testing import FakeOpenAIServer, FakeRequest, FakeResponse, chat_reply, tool_reply
from statemachine_agent.otel import CAPTURE_ENV, OpenTelemetry
from statemachine_agent.stores import SQLiteStore

SCHEMAS = Path(__file__).parent / "fixtures" / "semconv"  # v1.41.0's, as the registry in test_otel.py


class Crash(BaseException):
    """Stands for the process dying mid-step."""


class Doc(Context):
    text: str = "a change"
    summary: str = UNSET
    checked: str = UNSET
    acted: int = 0


def script(request: FakeRequest, _: int) -> FakeResponse:
    """A tool round asks for `lookup` once, then answers in prose; the answer is JSON; a decision
    picks `triage_to_act`."""
    body = request.body
    names = [t.get("function", {}).get("name") for t in body.get("tools") or ()]
    if "choose_transition" in names:
        return tool_reply("choose_transition", {"transition": "triage_to_act"}, prompt_tokens=20, completion_tokens=5)
    if "lookup" in names:
        if any(m.get("role") == "tool" for m in body["messages"]):
            return chat_reply("the lookup says fine", prompt_tokens=9, completion_tokens=4)
        return chat_reply(None, tool_calls=[("lookup", {"topic": "change"})], finish_reason="tool_calls")
    return chat_reply(json.dumps({"value": "looks fine"}), prompt_tokens=30, completion_tokens=7)


def workflow(chat: ChatModel, crashes: list[str]) -> Any:
    """summarize (an LLM step with a tool round) -> triage (decision) -> act (crashes when asked) -> done."""
    wf = Workflow("content", Doc)

    def lookup(topic: str) -> str:
        return f"notes on {topic}"

    wf.tool(lookup)
    wf.add_state("summarize", llm_step(chat, write="summary", output=str, tools=["lookup"],
                                       prompt=lambda c: f"Summarize {c.text}"),
                 initial=True, reads=["text"], writes=["summary"], tools=["lookup"])

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


class Sinks:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.logs = InMemoryLogRecordExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.logger_provider = LoggerProvider()
        self.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.logs))

    def hook(self, **options: Any) -> OpenTelemetry:
        return OpenTelemetry(tracer_provider=self.tracer_provider, logger_provider=self.logger_provider, **options)

    def chats(self) -> list[ReadableSpan]:
        return sorted((s for s in self.spans.get_finished_spans() if s.name.startswith("chat ")),
                      key=lambda s: s.start_time or 0)


@pytest.fixture
def sinks() -> Sinks:
    return Sinks()


def run_once(sinks: Sinks, tmp_path: Path, **options: Any) -> list[FakeRequest]:
    with FakeOpenAIServer(script) as server, SQLiteStore(tmp_path / "runs.db") as store:
        chat = ChatModel(base_url=server.url, model="fake")
        result = workflow(chat, []).run_sync(Doc(), policy=LLMPolicy(chat=chat), store=store, clock=FakeClock(),
                                             hooks=[sinks.hook(**options)])
        assert result.terminal == "done"
        return list(server.requests)


def reply_of(response_body: dict[str, Any]) -> dict[str, Any]:
    return response_body["choices"][0]["message"]  # type: ignore[no-any-return]


# --- content: off by default ------------------------------------------------------------------------
@pytest.mark.parametrize("latest", [False, True])
def test_without_opting_in_no_message_content_is_recorded(sinks: Sinks, tmp_path: Path, latest: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CAPTURE_ENV, raising=False)
    requests = run_once(sinks, tmp_path, latest=latest)
    chats = sinks.chats()
    assert len(chats) == len(requests) == 4  # two tool rounds, the answer, the decision
    keys = {k for s in sinks.spans.get_finished_spans() for k in (s.attributes or {})}
    assert not keys & {"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions"}
    assert sinks.logs.get_finished_logs() == ()
    assert "Summarize a change" not in "".join(s.to_json() for s in sinks.spans.get_finished_spans())


@pytest.mark.parametrize(("latest", "value", "on"), [
    (False, "true", True), (False, "TRUE", True), (False, "false", False), (False, "SPAN_ONLY", False),
    (False, "", False), (True, "SPAN_ONLY", True), (True, "span_and_event", True), (True, "EVENT_ONLY", False),
    (True, "NO_CONTENT", False), (True, "true", False), (True, "", False)])
def test_the_environment_variable_opts_in_as_each_form_reads_it(latest: bool, value: str, on: bool,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CAPTURE_ENV, value)
    assert OpenTelemetry(latest=latest).capture_content is on
    assert OpenTelemetry(latest=latest, capture_content=not on).capture_content is (not on)  # the option wins


def test_a_bad_content_option_says_what_to_give() -> None:
    with pytest.raises(TypeError, match="True, False or None"):
        OpenTelemetry(capture_content="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="get_logger"):
        OpenTelemetry(capture_content=True, logger_provider=object())


# --- content: the v1.36.0 log events -------------------------------------------------------------------
def test_opted_in_the_default_forms_emit_one_event_per_message_and_a_choice(sinks: Sinks, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CAPTURE_ENV, "true")
    requests = run_once(sinks, tmp_path, latest=False)
    chats = sinks.chats()
    logs = [r.log_record for r in sinks.logs.get_finished_logs()]
    assert len(chats) == len(requests)
    names = {"system": "gen_ai.system.message", "user": "gen_ai.user.message",
             "assistant": "gen_ai.assistant.message", "tool": "gen_ai.tool.message"}
    for span, request in zip(chats, requests, strict=True):
        mine = [r for r in logs if r.span_id == span.context.span_id]
        assert all(r.trace_id == span.context.trace_id for r in mine)
        sent = request.body["messages"]
        assert [r.event_name for r in mine] == [names[m["role"]] for m in sent] + ["gen_ai.choice"]
        for record, message in zip(mine, sent, strict=False):
            body = dict(record.body)  # type: ignore[arg-type]
            assert body.get("content") == message.get("content")
            if message["role"] == "tool":
                assert body["id"] == message["tool_call_id"]
            if message.get("tool_calls"):
                assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in body["tool_calls"]] == [
                    (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
        choice = dict(mine[-1].body)  # type: ignore[arg-type]
        assert choice["index"] == 0 and choice["finish_reason"] == span.attributes["gen_ai.response.finish_reasons"][0]
        assert all(dict(r.attributes or {}) == {"gen_ai.system": "generic"} for r in mine)
        assert set(dict(mine[0].attributes or {})) <= REGISTRY_V1_36
    # What the model answered is in the choices: the decision's tool call, the step's JSON answer.
    said = [dict(dict(r.body)["message"]) for r in logs if r.event_name == "gen_ai.choice"]  # type: ignore[arg-type]
    assert {"content": json.dumps({"value": "looks fine"})} in said
    assert any(c.get("tool_calls", [{}])[0].get("function", {}).get("name") == "choose_transition" for c in said)


# --- content: the latest forms' attributes ---------------------------------------------------------------
def conforms(value: Any, schema: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    """What in ``value`` breaks the conventions' JSON schema (its required keys, part types and
    string fields: all the schema asks of the parts this library sends)."""
    problems: list[str] = []
    item = defs[schema["items"]["$ref"].rsplit("/", 1)[1]]
    parts_by_type = {d["properties"]["type"]["const"]: d for d in defs.values()
                     if "const" in d.get("properties", {}).get("type", {})}
    if not isinstance(value, list):
        return ["not a list"]
    for m in value:
        problems += [f"message lacks {k}" for k in item["required"] if k not in m]
        for p in m.get("parts", []):
            spec = parts_by_type.get(p.get("type"))
            if spec is None:
                problems.append(f"unknown part {p.get('type')}")
                continue
            problems += [f"{p['type']} lacks {k}" for k in spec["required"] if k not in p]
            problems += [f"{p['type']}.{k} is not text" for k, v in spec["properties"].items()
                         if v.get("type") == "string" and k in p and not isinstance(p[k], str)]
    return problems


def test_opted_in_the_latest_forms_record_messages_in_the_schemas_shape(sinks: Sinks, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    monkeypatch.setenv(CAPTURE_ENV, "SPAN_ONLY")
    requests = run_once(sinks, tmp_path)
    inputs = json.loads((SCHEMAS / "gen-ai-input-messages.json").read_text())
    outputs = json.loads((SCHEMAS / "gen-ai-output-messages.json").read_text())
    chats = sinks.chats()
    assert len(chats) == len(requests) and sinks.logs.get_finished_logs() == ()
    for span, request in zip(chats, requests, strict=True):
        attributes = dict(span.attributes or {})
        assert {k for k in attributes if not k.startswith("statemachine_agent.")} <= REGISTRY_V1_41
        sent = json.loads(attributes["gen_ai.input.messages"])
        got = json.loads(attributes["gen_ai.output.messages"])
        assert conforms(sent, inputs, inputs["$defs"]) == [] and conforms(got, outputs, outputs["$defs"]) == []
        messages = request.body["messages"]
        assert [m["role"] for m in sent] == [m["role"] for m in messages]
        for mine, theirs in zip(sent, messages, strict=True):
            texts = [p["content"] for p in mine["parts"] if p["type"] == "text"]
            responses = [(p["id"], p["response"]) for p in mine["parts"] if p["type"] == "tool_call_response"]
            calls = [(p["id"], p["name"], p["arguments"]) for p in mine["parts"] if p["type"] == "tool_call"]
            if theirs["role"] == "tool":
                assert responses == [(theirs["tool_call_id"], theirs["content"])] and texts == []
            else:
                assert texts == ([theirs["content"]] if theirs.get("content") else [])
            assert calls == [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                             for c in theirs.get("tool_calls") or ()]
        assert len(got) == 1 and got[0]["role"] == "assistant"
        assert got[0]["finish_reason"] == attributes["gen_ai.response.finish_reasons"][0]
    outs = [json.loads(dict(s.attributes or {})["gen_ai.output.messages"])[0]["parts"] for s in chats]
    assert [{"type": "text", "content": json.dumps({"value": "looks fine"})}] in outs


# --- a model answer from the journal -----------------------------------------------------------------
def test_a_model_answer_the_journal_gives_makes_no_chat_span(sinks: Sinks, tmp_path: Path) -> None:
    """Crash and resume on a real SQLiteStore, then a replay of the whole run: a chat span for each
    request the server saw, and none for an answer the journal gave."""
    crashes = ["act"]
    with FakeOpenAIServer(script) as server, SQLiteStore(tmp_path / "runs.db") as store:
        chat = ChatModel(base_url=server.url, model="fake")
        compiled = workflow(chat, crashes)
        with pytest.raises(Crash):
            compiled.run_sync(Doc(), policy=LLMPolicy(chat=chat), store=store, run_id="r", clock=FakeClock(),
                              hooks=[sinks.hook()])
        asked = len(server.requests)
        assert len(sinks.chats()) == asked == 4
        sinks.spans.clear()
        result = compiled.resume_sync("r", store=store, policy=LLMPolicy(chat=chat), clock=FakeClock(),
                                      hooks=[sinks.hook()])
        assert result.terminal == "done" and len(server.requests) == asked  # the committed steps are not run again
        assert sinks.chats() == []
        sinks.spans.clear()
        # The replay's run answers every call from the journal. compiled.replay takes no hooks; the
        # function under it does (its options are a resume's), and that is what is traced here.
        report = asyncio.run(replay(compiled, "r", store, {"hooks": [sinks.hook()]}))
        assert report.reason == "" and report.calls_replayed >= asked  # every answer came from the journal
        assert len(server.requests) == asked
        spans = sinks.spans.get_finished_spans()
        assert {s.name for s in spans} >= {"step summarize", "step triage"}  # the steps that asked models
        assert sinks.chats() == []
        # The usage of the answers the journal gave still counts (as the result of the first run did).
        assert result.usage.calls == asked


def test_a_crash_before_the_commit_asks_again_and_that_request_has_its_span(sinks: Sinks, tmp_path: Path) -> None:
    """A step's model answers are committed with the step: a crash inside it asks again on resume,
    and each attempt's chat spans are exactly its requests."""
    crashes = ["summarize"]
    with FakeOpenAIServer(script) as server, SQLiteStore(tmp_path / "runs.db") as store:
        chat = ChatModel(base_url=server.url, model="fake")
        wf = Workflow("again", Doc)
        step = llm_step(chat, write="summary", output=str, prompt="Summarize it")

        async def summarize(ctx: Doc, tools: Any) -> None:
            await step(ctx, tools)
            if crashes:
                crashes.pop()
                raise Crash

        wf.add_state("summarize", summarize, initial=True, writes=["summary"])
        wf.terminal("done")
        wf.terminal("failed", outcome="failure")
        wf.transition("summarize", "done")
        compiled = wf.compile()
        with pytest.raises(Crash):
            compiled.run_sync(Doc(), store=store, run_id="a", clock=FakeClock(), hooks=[sinks.hook()])
        assert len(sinks.chats()) == len(server.requests) == 1
        sinks.spans.clear()
        compiled.resume_sync("a", store=store, clock=FakeClock(), hooks=[sinks.hook()])
        assert len(sinks.chats()) == len(server.requests) - 1 == 1


# --- a run that starts in a wait -----------------------------------------------------------------------
class Approval(BaseModel):
    ok: bool


class Gate(Context):
    approval: Approval | None = None
    shipped: bool = False


def gate() -> Any:
    wf = Workflow("gate", Gate)
    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], initial=True)

    @wf.state(writes=["shipped"])
    def ship(ctx: Gate) -> None:
        ctx.shipped = True

    wf.terminal("done")
    wf.terminal("rejected", outcome="failure")
    wf.transition("approve", "ship", guard=lambda c: c.approval is not None and c.approval.ok)
    wf.transition("approve", "rejected")
    wf.transition("ship", "done")
    return wf.compile()


def test_a_run_that_starts_in_a_wait_links_across_its_first_wait(sinks: Sinks, tmp_path: Path) -> None:
    compiled = gate()
    with SQLiteStore(tmp_path / "runs.db") as store:
        paused = compiled.run_sync(Gate(), store=store, run_id="g", hooks=[sinks.hook()])
        assert paused.waiting == "approval"
        first = [s for s in sinks.spans.get_finished_spans() if s.name == "invoke_agent gate"]
        stored = store.load("g").result().run
        assert len(first) == 1 and set(stored.trace) == {"traceparent"}
        assert stored.trace["traceparent"].split("-")[2] == format(first[0].context.span_id, "016x")
        sinks.spans.clear()
        result = compiled.deliver_sync("g", "approval", {"ok": True}, store=store, hooks=[sinks.hook()])
    assert result is not None and result.terminal == "done"
    assert dict(first[0].attributes or {})["statemachine_agent.run.outcome"] == "waiting"
    second = next(s for s in sinks.spans.get_finished_spans() if s.name == "invoke_agent gate")
    assert [link.context.span_id for link in second.links] == [first[0].context.span_id]
    assert dict(second.attributes or {})["statemachine_agent.run.outcome"] == "success"
