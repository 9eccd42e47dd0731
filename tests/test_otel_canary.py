"""Secrets stay secret in everything this issue adds: spans, JSONL traces and log records (with their
trace ids), and with message content captured, the spans' messages and the content log events.
Canaries: a context field typed SecretStr (shown to a model by an LLM step and a policy), a tool
argument typed SecretStr, and a model API key that a hostile server echoes in every encoding
(tests/test_llm_hostile.py's)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr
from test_llm_hostile import KEY, ToolCtx, canary_workflow, cores, hostile

from statemachine_agent import UNSET, Context, FakeClock, Workflow
from statemachine_agent.llm import ChatModel, LLMPolicy, llm_step
from statemachine_agent.llm.testing import FakeOpenAIServer, FakeRequest, FakeResponse, chat_reply, tool_reply
from statemachine_agent.otel import OpenTelemetry
from statemachine_agent.secrets import FernetSecrets
from statemachine_agent.stores import SQLiteStore
from statemachine_agent.tools import Retry
from statemachine_agent.traces import TraceWriter

CANARY = "canary-7f3a9c-DO-NOT-LEAK"


class Vault(Context):
    user: str
    password: SecretStr
    session: str = UNSET


def vault() -> Any:
    wf = Workflow("vault", Vault)
    attempts = [0]

    def login(user: str, password: SecretStr, idempotency_key: str) -> str:
        attempts[0] += 1
        if attempts[0] == 1:
            raise ConnectionError("the login server hung up")
        assert password.get_secret_value() == CANARY
        return f"session of {user}"

    wf.tool(login, retry=Retry(attempts=2, backoff=1, jitter=0), effect="idempotent")

    @wf.state(initial=True, reads=["user", "password"], writes=["session"], tools=["login"])
    async def sign_in(ctx: Vault, tools: Any) -> None:
        ctx.session = await tools.call("login", user=ctx.user, password=ctx.password)

    wf.terminal("in")
    wf.terminal("failed", outcome="failure")
    wf.transition(sign_in, "in")
    return wf.compile()


class Everything(logging.Handler):
    """Keeps every record whole: its message and every attribute (the extra and the trace ids)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage() + repr(sorted(record.__dict__.items(), key=lambda kv: kv[0])))


def emitted(exporter: InMemorySpanExporter, trace_file: Path, logs: Everything) -> dict[str, str]:
    return {"spans": "\n".join(s.to_json() for s in exporter.get_finished_spans()),
            "jsonl": trace_file.read_text(encoding="utf-8"), "logs": "\n".join(logs.texts)}


@pytest.fixture
def logs() -> Any:
    logger = logging.getLogger("statemachine_agent")
    handler = Everything()
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_a_secret_field_and_a_secret_tool_argument_are_in_no_span_trace_or_log(tmp_path: Path, logs: Everything,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    trace_file = tmp_path / "run.jsonl"
    monkeypatch.setenv("SMA_SECRET_KEY", FernetSecrets.generate_key())
    with SQLiteStore(tmp_path / "runs.db", secrets=FernetSecrets.from_env("SMA_SECRET_KEY")) as store, \
            TraceWriter(trace_file) as writer:
        result = vault().run_sync(Vault(user="ann", password=SecretStr(CANARY)), store=store, clock=FakeClock(),
                                  hooks=[OpenTelemetry(tracer_provider=tp), writer])
    assert result.context.session == "session of ann"
    texts = emitted(exporter, trace_file, logs)
    assert "ConnectionError" in texts["spans"] and "sign_in" in texts["jsonl"] and texts["logs"]  # all looked at
    assert "otelTraceID" in texts["logs"]
    assert {name for name, text in texts.items() if CANARY in text} == set()


CAPTURE = [pytest.param({}, id="no-content"), pytest.param({"capture_content": True}, id="content-v1.36"),
           pytest.param({"capture_content": True, "latest": True}, id="content-latest")]


class Content:
    """An OpenTelemetry hook with an SDK's span and log exporters, and what it recorded as text."""

    def __init__(self, **options: Any) -> None:
        self.spans = InMemorySpanExporter()
        self.logs = InMemoryLogRecordExporter()
        tp = TracerProvider()
        tp.add_span_processor(SimpleSpanProcessor(self.spans))
        lp = LoggerProvider()
        lp.add_log_record_processor(SimpleLogRecordProcessor(self.logs))
        self.hook = OpenTelemetry(tracer_provider=tp, logger_provider=lp, **options)

    def events(self) -> str:
        return "\n".join(r.to_json() for r in self.logs.get_finished_logs())


@pytest.mark.parametrize("options", CAPTURE)
def test_the_model_api_key_is_in_no_span_trace_or_log(tmp_path: Path, logs: Everything,
                                                      monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    otel = Content(**options)
    exporter = otel.spans
    trace_file = tmp_path / "run.jsonl"
    ran: list[str] = []
    with FakeOpenAIServer(hostile) as server, SQLiteStore(tmp_path / "runs.db") as store, \
            TraceWriter(trace_file) as writer:
        chat = ChatModel(base_url=server.url, model="fake", retries=2, backoff=0)
        result = canary_workflow(chat, ran).run_sync(
            ToolCtx(), policy=LLMPolicy(chat=chat), store=store, run_id="canary", clock=FakeClock(),
            raise_errors=False, hooks=[otel.hook, writer])
    assert result.terminal == "refused"
    texts = {**emitted(exporter, trace_file, logs), "content events": otel.events()}
    assert "chat fake" in texts["spans"] and "HTTP 401" in texts["jsonl"]  # the server's words got there, scrubbed
    if options.get("latest"):  # what the server said (scrubbed) is in the captured content
        assert "gen_ai.output.messages" in texts["spans"] and "<the API key>" in texts["spans"]
    elif options:
        assert "gen_ai.choice" in texts["content events"] and "<the API key>" in texts["content events"]
    else:
        assert "<the API key>" not in texts["spans"] and texts["content events"] == ""
    assert json.loads(texts["jsonl"].splitlines()[-1])["type"] == "RunFinished"
    leaks = {(name, core) for name, text in texts.items() for core in cores(KEY) if core in text}
    assert leaks == set()


class Locked(Context):
    user: str
    password: SecretStr
    note: str = UNSET


def locked(chat: ChatModel) -> Any:
    """An LLM step whose prompt formats the secret field, then a decision that reads it (the policy
    shows the model the fields a state reads)."""
    wf = Workflow("locked", Locked)
    wf.add_state("note_it", llm_step(chat, write="note", output=str,
                                     prompt=lambda c: f"Write a note for {c.user} (password {c.password})"),
                 initial=True, reads=["user", "password"], writes=["note"])
    wf.add_state("decide", lambda ctx: None, decision=True, reads=["password", "note"])
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("note_it", "decide")
    wf.transition("decide", "done", description="finish")
    wf.transition("decide", "failed", description="give up")
    return wf.compile()


def answers(request: FakeRequest, _: int) -> FakeResponse:
    tools = request.body.get("tools") or [{}]
    if tools[0].get("function", {}).get("name") == "choose_transition":
        return tool_reply("choose_transition", {"transition": "decide_to_done"})
    return chat_reply(json.dumps({"value": "noted"}))


@pytest.mark.parametrize("options", CAPTURE[1:])
def test_with_content_captured_a_secret_field_a_model_was_shown_is_its_mask(tmp_path: Path, logs: Everything,
                                                                         options: dict[str, Any]) -> None:
    otel = Content(**options)
    trace_file = tmp_path / "run.jsonl"
    with FakeOpenAIServer(answers) as server, TraceWriter(trace_file) as writer:
        chat = ChatModel(base_url=server.url, model="fake")
        result = locked(chat).run_sync(Locked(user="ann", password=SecretStr(CANARY)), policy=LLMPolicy(chat=chat),
                                       clock=FakeClock(), hooks=[otel.hook, writer])
        sent = json.dumps([r.body for r in server.requests])
    assert result.terminal == "done" and result.context.note == "noted"
    texts = {**emitted(otel.spans, trace_file, logs), "content events": otel.events(), "requests": sent}
    content = "\n".join(str((s.attributes or {}).get("gen_ai.input.messages")) for s in otel.spans.get_finished_spans()
                        ) if options.get("latest") else texts["content events"]
    # The model was shown the field (masked) twice: in the step's prompt and in the decision's reads.
    assert "password **********" in content and '- password: \\"**********\\"' in content
    assert {name for name, text in texts.items() if CANARY in text} == set()
