"""OpenTelemetry spans (statemachine_agent.otel): golden span trees from the SDK's in-memory exporter,
the attribute keys against the GenAI registry, and the trace ids in the library's log records."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from statemachine_agent import UNSET, Context, FakeClock, Workflow
from statemachine_agent.otel import OpenTelemetry
from statemachine_agent.stores import SQLiteStore
from statemachine_agent.tools import Retry
from statemachine_agent.usage import ModelCall

# --- the registry ----------------------------------------------------------------------------------
# Copied from open-telemetry/semantic-conventions, model/gen-ai/registry.yaml (every `- id:` of an
# attribute) and model/error/registry.yaml (error.type), at the releases the hook emits:
# v1.36.0 = commit 4b2c0e6544d740178c9c77809d25705e77acd0b0 (the default forms) and
# v1.41.0 = commit e018fe6f91862f5ed63c082f87697cddac596784 (the latest release holding the GenAI
# conventions before they moved to semantic-conventions-genai; OTEL_SEMCONV_STABILITY_OPT_IN=
# gen_ai_latest_experimental).
REGISTRY_V1_36 = frozenset((
    "gen_ai.agent.description", "gen_ai.agent.id", "gen_ai.agent.name", "gen_ai.conversation.id",
    "gen_ai.data_source.id", "gen_ai.openai.request.service_tier", "gen_ai.openai.response.service_tier",
    "gen_ai.openai.response.system_fingerprint", "gen_ai.operation.name", "gen_ai.output.type",
    "gen_ai.request.choice.count", "gen_ai.request.encoding_formats", "gen_ai.request.frequency_penalty",
    "gen_ai.request.max_tokens", "gen_ai.request.model", "gen_ai.request.presence_penalty",
    "gen_ai.request.seed", "gen_ai.request.stop_sequences", "gen_ai.request.temperature",
    "gen_ai.request.top_k", "gen_ai.request.top_p", "gen_ai.response.finish_reasons", "gen_ai.response.id",
    "gen_ai.response.model", "gen_ai.system", "gen_ai.token.type", "gen_ai.tool.call.id",
    "gen_ai.tool.description", "gen_ai.tool.name", "gen_ai.tool.type", "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens", "error.type",
))
REGISTRY_V1_41 = frozenset((
    "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.request.max_tokens", "gen_ai.request.choice.count",
    "gen_ai.request.temperature", "gen_ai.request.top_p", "gen_ai.request.top_k",
    "gen_ai.request.stop_sequences", "gen_ai.request.frequency_penalty", "gen_ai.request.presence_penalty",
    "gen_ai.request.encoding_formats", "gen_ai.request.seed", "gen_ai.request.stream", "gen_ai.response.id",
    "gen_ai.response.model", "gen_ai.response.finish_reasons", "gen_ai.response.time_to_first_chunk",
    "gen_ai.usage.input_tokens", "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.output_tokens",
    "gen_ai.usage.reasoning.output_tokens", "gen_ai.token.type", "gen_ai.conversation.id", "gen_ai.agent.id",
    "gen_ai.agent.name", "gen_ai.agent.description", "gen_ai.agent.version", "gen_ai.tool.name",
    "gen_ai.tool.call.id", "gen_ai.tool.description", "gen_ai.tool.type", "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result", "gen_ai.tool.definitions", "gen_ai.data_source.id", "gen_ai.operation.name",
    "gen_ai.output.type", "gen_ai.embeddings.dimension.count", "gen_ai.retrieval.documents",
    "gen_ai.retrieval.query.text", "gen_ai.system_instructions", "gen_ai.input.messages",
    "gen_ai.output.messages", "gen_ai.evaluation.name", "gen_ai.evaluation.score.value",
    "gen_ai.evaluation.score.label", "gen_ai.evaluation.explanation", "gen_ai.prompt.name",
    "gen_ai.workflow.name", "error.type",
))
OPERATIONS = frozenset({"chat", "invoke_agent", "execute_tool"})  # gen_ai.operation.name values of both releases
PREFIX = "statemachine_agent."


# --- the harness --------------------------------------------------------------------------------------
@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    return InMemorySpanExporter()


def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp


KEYS = ("gen_ai.operation.name", "gen_ai.tool.name", "statemachine_agent.step.transition",
        "statemachine_agent.step.kind", "statemachine_agent.run.outcome", "statemachine_agent.run.terminal",
        "statemachine_agent.decision.options", "statemachine_agent.decision.chosen",
        "statemachine_agent.decision.rejections", "statemachine_agent.tool.attempts", "error.type",
        "statemachine_agent.tool.effect", "statemachine_agent.step.budget", "gen_ai.request.model",
        "gen_ai.usage.input_tokens", "statemachine_agent.run.waiting_for")


def tree(spans: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> list[Any]:
    """The spans as nested (name, {key attributes}, [children]), children in start order; spans whose
    parent was not exported are roots."""
    ids = {s.context.span_id for s in spans}

    def node(span: ReadableSpan) -> Any:
        attrs = dict(span.attributes or {})
        kids = sorted((s for s in spans if s.parent is not None and s.parent.span_id == span.context.span_id),
                      key=lambda s: (s.start_time or 0))
        return (span.name, {k: attrs[k] for k in KEYS if k in attrs}, [node(k) for k in kids])

    roots = [s for s in spans if s.parent is None or s.parent.span_id not in ids]
    return [node(r) for r in sorted(roots, key=lambda s: (s.start_time or 0))]


def agent(wf: str, terminal: str, outcome: str, *kids: Any, **more: str) -> Any:
    return (f"invoke_agent {wf}", {"gen_ai.operation.name": "invoke_agent", "statemachine_agent.run.outcome": outcome,
                                   "statemachine_agent.run.terminal": terminal, **more}, list(kids))


def step(state: str, transition: str, *kids: Any, kind: str = "transition", **more: Any) -> Any:
    return (f"step {state}", {"statemachine_agent.step.transition": transition, "statemachine_agent.step.kind": kind,
                              **more}, list(kids))


def tool(name: str, attempts: int, effect: str = "read", **more: Any) -> Any:
    return (f"execute_tool {name}", {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
                                     "statemachine_agent.tool.attempts": attempts,
                                     "statemachine_agent.tool.effect": effect, **more}, [])


# --- workflows --------------------------------------------------------------------------------------
class Research(Context):
    question: str
    hits: list[str] = UNSET
    answer: str = UNSET


def research(fail_times: int = 0, *, always_fail: bool = False) -> Any:
    wf = Workflow("research", Research)
    calls = [0]

    def search(query: str) -> list[str]:
        calls[0] += 1
        if always_fail or calls[0] <= fail_times:
            raise OSError("search is down")
        return [f"doc about {query}"]

    wf.tool(search, retry=Retry(attempts=3, backoff=1, jitter=0))

    @wf.state(initial=True, reads=["question"], writes=["hits"], tools=["search"])
    async def look(ctx: Research, tools: Any) -> None:
        ctx.hits = await tools.call("search", query=ctx.question)

    @wf.state(reads=["hits"], writes=["answer"])
    async def summarize(ctx: Research, tools: Any) -> None:
        ctx.answer = ctx.hits[0]
        await tools.record_model_call(ModelCall("openai", "gpt-x", "json_schema", "answer", 12, 3, 0.25, "stop", 1))

    @wf.state(writes=["answer"])
    def apologize(ctx: Research) -> None:
        ctx.answer = "sorry"

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition(look, summarize)
    wf.transition(summarize, "done")
    wf.transition(apologize, "done")
    wf.on_error(look, OSError, apologize)
    return wf.compile()


def test_a_plain_run_is_one_agent_span_over_its_steps_tools_and_model_calls(exporter: InMemorySpanExporter) -> None:
    result = research().run_sync(Research(question="loops"), hooks=[OpenTelemetry(tracer_provider=provider(exporter))],
                                 clock=FakeClock())
    assert result.ok
    assert tree(exporter.get_finished_spans()) == [
        agent("research", "done", "success",
              step("look", "look_to_summarize", tool("search", 1)),
              step("summarize", "summarize_to_done",
                   ("chat gpt-x", {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-x",
                                   "gen_ai.usage.input_tokens": 12}, []))),
    ]
    spans = {s.name: s for s in exporter.get_finished_spans()}
    run = spans["invoke_agent research"]
    assert run.attributes is not None and run.attributes["gen_ai.conversation.id"] == result.run_id
    assert run.attributes["statemachine_agent.run.max_steps"] == research().max_steps
    assert run.kind is SpanKind.CLIENT  # v1.36.0 has only the client invoke_agent span
    assert spans["chat gpt-x"].kind is SpanKind.CLIENT
    assert spans["chat gpt-x"].attributes == {
        "gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-x",
        "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 3, "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.output.type": "json", "statemachine_agent.model.mode": "json_schema",
        "statemachine_agent.model.purpose": "answer", "statemachine_agent.model.attempt": 1,
        "statemachine_agent.model.http_attempts": 1}


def test_retries_are_span_events_and_a_routed_tool_error_marks_its_step(exporter: InMemorySpanExporter) -> None:
    hook = OpenTelemetry(tracer_provider=provider(exporter))
    result = research(always_fail=True).run_sync(Research(question="q"), hooks=[hook], clock=FakeClock())
    assert result.terminal == "done" and result.context.answer == "sorry"
    failed = ("execute_tool search", {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search",
                                      "statemachine_agent.tool.attempts": 3, "error.type": "OSError",
                                      "statemachine_agent.tool.effect": "read"}, [])
    assert tree(exporter.get_finished_spans()) == [
        agent("research", "done", "success",
              step("look", "look_on_OSError", failed, kind="error",
                   **{"error.type": "statemachine_agent.errors.ToolFailed"}),
              step("apologize", "apologize_to_done")),
    ]
    span = next(s for s in exporter.get_finished_spans() if s.name == "execute_tool search")
    assert span.status.status_code is StatusCode.ERROR
    assert [(e.name, dict(e.attributes or {})) for e in span.events] == [
        ("statemachine_agent.tool.attempt_failed", {"statemachine_agent.tool.attempt": n,
                                                    "statemachine_agent.tool.backoff": wait, "error.type": "OSError"})
        for n, wait in ((1, 1.0), (2, 2.0))]


def test_a_retry_that_succeeds_ends_the_tool_span_well(exporter: InMemorySpanExporter) -> None:
    research(fail_times=1).run_sync(Research(question="q"), hooks=[OpenTelemetry(tracer_provider=provider(exporter))],
                                    clock=FakeClock())
    span = next(s for s in exporter.get_finished_spans() if s.name == "execute_tool search")
    assert span.status.status_code is StatusCode.UNSET
    assert [e.name for e in span.events] == ["statemachine_agent.tool.attempt_failed"]
    assert span.attributes is not None and span.attributes["statemachine_agent.tool.attempts"] == 2


class Pick(Context):
    n: int = 0
    out: str = UNSET


def decider() -> Any:
    wf = Workflow("pick", Pick)

    @wf.state(initial=True, reads=["n"], decision=True)
    def choose(ctx: Pick) -> None:
        return None

    @wf.state(writes=["out"])
    def left(ctx: Pick) -> None:
        ctx.out = "left"

    @wf.state(writes=["out"])
    def right(ctx: Pick) -> None:
        ctx.out = "right"

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition(choose, left, name="go_left", description="the left way")
    wf.transition(choose, right, name="go_right", description="the right way")
    wf.transition(left, "done")
    wf.transition(right, "done")
    return wf.compile()


def test_a_decision_records_its_options_choice_and_rejections(exporter: InMemorySpanExporter) -> None:
    answers = iter(["sideways", 42, "go_right"])
    result = decider().run_sync(Pick(), policy=lambda d: next(answers),
                                hooks=[OpenTelemetry(tracer_provider=provider(exporter))])
    assert result.context.out == "right"
    assert len(result.path[0].rejected) == 2
    assert tree(exporter.get_finished_spans()) == [
        agent("pick", "done", "success",
              step("choose", "go_right", **{"statemachine_agent.decision.options": ("go_left", "go_right"),
                                            "statemachine_agent.decision.chosen": "go_right",
                                            "statemachine_agent.decision.rejections": result.path[0].rejected}),
              step("right", "right_to_done")),
    ]


def test_a_budget_that_stops_a_run_fails_its_span(exporter: InMemorySpanExporter) -> None:
    result = research().run_sync(Research(question="q"), max_steps=1,
                                 hooks=[OpenTelemetry(tracer_provider=provider(exporter))], clock=FakeClock())
    assert result.terminal == "failed"
    assert tree(exporter.get_finished_spans()) == [
        agent("research", "failed", "failure",
              step("look", "look_to_summarize", tool("search", 1)),
              step("summarize", "fail", kind="fail", **{"statemachine_agent.step.budget": "max_steps"})),
    ]
    run = next(s for s in exporter.get_finished_spans() if s.name.startswith("invoke_agent"))
    assert run.status.status_code is StatusCode.ERROR


# --- resumed and waiting runs ---------------------------------------------------------------------------
class Crash(BaseException):
    """Stands for the process dying mid-step (never routed by the runner)."""


class Job(Context):
    n: int = 0
    charged: str = UNSET
    done: bool = UNSET


def crashing(crash: list[bool], charges: list[str]) -> Any:
    wf = Workflow("job", Job)

    async def charge(amount: int, idempotency_key: str) -> str:
        charges.append(idempotency_key)
        return f"receipt {amount}"

    wf.tool(charge, effect="idempotent")

    @wf.state(initial=True, reads=["n"], writes=["n"])
    def prepare(ctx: Job) -> None:
        ctx.n = ctx.n + 1

    @wf.state(reads=["n"], writes=["charged"], tools=["charge"])
    async def pay(ctx: Job, tools: Any) -> None:
        ctx.charged = await tools.call("charge", amount=ctx.n)
        if crash:
            crash.pop()
            raise Crash

    @wf.state(writes=["done"])
    def finish(ctx: Job) -> None:
        ctx.done = True

    wf.terminal("ok")
    wf.terminal("failed", outcome="failure")
    wf.transition(prepare, pay)
    wf.transition(pay, finish)
    wf.transition(finish, "ok")
    return wf.compile()


def test_a_crashed_and_resumed_run_links_to_its_earlier_attempt(exporter: InMemorySpanExporter,
                                                                tmp_path: Path) -> None:
    charges: list[str] = []
    compiled = crashing([True], charges)
    tp = provider(exporter)
    with SQLiteStore(tmp_path / "runs.db") as store:
        with pytest.raises(Crash):  # the first process dies in step 1, after its journaled call
            compiled.run_sync(Job(), store=store, run_id="job-1", hooks=[OpenTelemetry(tracer_provider=tp)])
        first = tree(exporter.get_finished_spans())
        exporter.clear()
        stored = store.load("job-1").result().run
        assert set(stored.trace) == {"traceparent"}  # kept with the run's record
        # A new process: a new hook, the run resumed from the store.
        result = compiled.resume_sync("job-1", store=store, hooks=[OpenTelemetry(tracer_provider=tp)])
    assert result.terminal == "ok" and len(charges) == 1
    # The dead attempt's agent span never ended (so is never exported): its finished spans are the
    # first step's and the tool call made before the crash.
    assert first == [step("prepare", "prepare_to_pay"), tool("charge", 1, effect="idempotent")]
    # The call the journal answers is not made again, and has no span.
    assert tree(exporter.get_finished_spans()) == [
        agent("job", "ok", "success", step("pay", "pay_to_finish"), step("finish", "finish_to_ok")),
    ]
    again = next(s for s in exporter.get_finished_spans() if s.name == "invoke_agent job")
    earlier_parent = stored.trace["traceparent"].split("-")
    assert [(format(link.context.trace_id, "032x"), format(link.context.span_id, "016x"),
             dict(link.attributes or {})) for link in again.links] == [
        (earlier_parent[1], earlier_parent[2], {"statemachine_agent.link": "earlier_attempt"})]
    assert again.attributes is not None and again.attributes["statemachine_agent.run.resumed"] is True


class Approval(BaseModel):
    ok: bool


class Order(Context):
    amount: int = 0
    approval: Approval | None = None
    shipped: bool = False


def waiting() -> Any:
    wf = Workflow("order", Order)

    @wf.state(initial=True, reads=["amount"], writes=["amount"])
    def prepare(ctx: Order) -> None:
        ctx.amount = ctx.amount + 1

    wf.wait("approve", event="approval", payload=Approval, writes=["approval"])

    @wf.state(writes=["shipped"])
    def ship(ctx: Order) -> None:
        ctx.shipped = True

    wf.terminal("done")
    wf.terminal("rejected", outcome="failure")
    wf.transition("prepare", "approve")
    wf.transition("approve", "ship", guard=lambda c: c.approval is not None and c.approval.ok)
    wf.transition("approve", "rejected")
    wf.transition("ship", "done")
    return wf.compile()


def test_a_run_that_waited_links_across_the_wait(exporter: InMemorySpanExporter, tmp_path: Path) -> None:
    compiled = waiting()
    tp = provider(exporter)
    with SQLiteStore(tmp_path / "runs.db") as store:
        paused = compiled.run_sync(Order(), store=store, run_id="o-1", hooks=[OpenTelemetry(tracer_provider=tp)])
        assert paused.waiting == "approval"
        before = exporter.get_finished_spans()
        exporter.clear()
        result = compiled.deliver_sync("o-1", "approval", {"ok": True}, store=store,
                                       hooks=[OpenTelemetry(tracer_provider=tp)])
    assert result is not None and result.terminal == "done"
    assert tree(before) == [
        agent("order", "approve", "waiting", step("prepare", "prepare_to_approve"),
              **{"statemachine_agent.run.waiting_for": "approval"}),
    ]
    assert tree(exporter.get_finished_spans()) == [
        agent("order", "done", "success", step("approve", "approve_to_ship"), step("ship", "ship_to_done")),
    ]
    first = next(s for s in before if s.name == "invoke_agent order")
    second = next(s for s in exporter.get_finished_spans() if s.name == "invoke_agent order")
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    assert second.context.trace_id != first.context.trace_id or second.parent is None


# --- conventions ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("latest", [False, True])
def test_every_attribute_key_is_in_the_registry_or_prefixed(latest: bool, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    if latest:
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http,gen_ai_latest_experimental")
    hook = OpenTelemetry(tracer_provider=provider(exporter))
    assert hook.latest is latest
    research().run_sync(Research(question="q"), hooks=[hook], clock=FakeClock())
    research(always_fail=True).run_sync(Research(question="q"), hooks=[hook], clock=FakeClock())
    research().run_sync(Research(question="q"), max_steps=1, hooks=[hook], clock=FakeClock())
    answers = iter(["nope", "go_left"])
    decider().run_sync(Pick(), policy=lambda d: next(answers), hooks=[hook])
    with SQLiteStore(tmp_path / "runs.db") as store:
        waiting().run_sync(Order(), store=store, run_id="o", hooks=[hook])
        waiting().deliver_sync("o", "approval", {"ok": False}, store=store, hooks=[hook])
    spans = exporter.get_finished_spans()
    registry = REGISTRY_V1_41 if latest else REGISTRY_V1_36
    keys = {k for s in spans for k in (s.attributes or {})}
    keys |= {k for s in spans for e in s.events for k in (e.attributes or {})}
    keys |= {k for s in spans for link in s.links for k in (link.attributes or {})}
    assert {k for k in keys if not k.startswith(PREFIX) and k not in registry} == set()
    assert {"gen_ai.operation.name", "gen_ai.agent.name", "gen_ai.conversation.id", "gen_ai.tool.name",
            "gen_ai.tool.call.id", "gen_ai.request.model", "error.type"} <= keys
    assert ("gen_ai.provider.name" in keys, "gen_ai.system" in keys) == (latest, not latest)
    assert {(s.attributes or {}).get("gen_ai.operation.name") for s in spans} - {None} == OPERATIONS
    agents = [s for s in spans if s.name.startswith("invoke_agent")]
    assert {s.kind for s in agents} == {SpanKind.INTERNAL if latest else SpanKind.CLIENT}


def test_with_no_span_recording_the_hook_keeps_nothing() -> None:
    hook = OpenTelemetry(tracer_provider=trace.NoOpTracerProvider())
    seen: list[Any] = []

    def spy(event: Any) -> None:
        seen.append(hook.span_of(event.run_id))

    result = research().run_sync(Research(question="q"), hooks=[hook, spy], clock=FakeClock())
    assert result.ok and seen and all(found is None for found in seen)


def test_a_bad_option_says_what_to_give() -> None:
    with pytest.raises(TypeError, match="get_tracer"):
        OpenTelemetry(tracer_provider=object())
    with pytest.raises(TypeError, match="True, False or None"):
        OpenTelemetry(latest="yes")  # type: ignore[arg-type]


# --- logs -------------------------------------------------------------------------------------------
def test_the_librarys_log_records_carry_the_ids_of_their_span(exporter: InMemorySpanExporter) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("statemachine_agent")
    handler = Keep()
    logger.addHandler(handler)
    try:
        answers = iter(["sideways", "go_left"])
        decider().run_sync(Pick(), policy=lambda d: next(answers),
                           hooks=[OpenTelemetry(tracer_provider=provider(exporter))])
        research().run_sync(Research(question="q"), max_steps=1,
                            hooks=[OpenTelemetry(tracer_provider=provider(exporter))], clock=FakeClock())
    finally:
        logger.removeHandler(handler)
    spans = exporter.get_finished_spans()
    rejected = next(r for r in records if "policy answer rejected" in r.getMessage())
    choose = next(s for s in spans if s.name == "step choose")
    assert (rejected.otelTraceID, rejected.otelSpanID) == (  # type: ignore[attr-defined]
        format(choose.context.trace_id, "032x"), format(choose.context.span_id, "016x"))
    # The budget stops the run before summarize's action: no step began, so the record is the run's.
    fails = next(r for r in records if "fails in state" in r.getMessage())
    run = next(s for s in spans if s.name == "invoke_agent research")
    assert fails.otelSpanID == format(run.context.span_id, "016x")  # type: ignore[attr-defined]
    assert all(hasattr(r, "otelTraceID") for r in records)
