"""Secrets stay secret in everything this issue adds: spans, JSONL traces and log records (with their
trace ids). Canaries: a context field typed SecretStr, a tool argument typed SecretStr, and a model
API key that a hostile server echoes in every encoding (tests/test_llm_hostile.py's)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr
from test_llm_hostile import KEY, ToolCtx, canary_workflow, cores, hostile

from statemachine_agent import UNSET, Context, FakeClock, Workflow
from statemachine_agent.llm import ChatModel, LLMPolicy
from statemachine_agent.llm.testing import FakeOpenAIServer
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


def test_the_model_api_key_is_in_no_span_trace_or_log(tmp_path: Path, logs: Everything,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    trace_file = tmp_path / "run.jsonl"
    ran: list[str] = []
    with FakeOpenAIServer(hostile) as server, SQLiteStore(tmp_path / "runs.db") as store, \
            TraceWriter(trace_file) as writer:
        chat = ChatModel(base_url=server.url, model="fake", retries=2, backoff=0)
        result = canary_workflow(chat, ran).run_sync(
            ToolCtx(), policy=LLMPolicy(chat=chat), store=store, run_id="canary", clock=FakeClock(),
            raise_errors=False, hooks=[OpenTelemetry(tracer_provider=tp), writer])
    assert result.terminal == "refused"
    texts = emitted(exporter, trace_file, logs)
    assert "chat fake" in texts["spans"] and "HTTP 401" in texts["jsonl"]  # the server's words got there, scrubbed
    assert json.loads(texts["jsonl"].splitlines()[-1])["type"] == "RunFinished"
    leaks = {(name, core) for name, text in texts.items() for core in cores(KEY) if core in text}
    assert leaks == set()
