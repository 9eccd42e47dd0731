"""OpenTelemetry spans of runs, on the GenAI semantic conventions: ``pip install 'statemachine-agent[otel]'``.

``compiled.run(ctx, hooks=[OpenTelemetry()])`` (or ``Workflow(..., hooks=[...])``) traces each run
through whatever tracer provider the application set up (``opentelemetry.trace.set_tracer_provider``):

- ``invoke_agent {workflow}``, one span per attempt of a run (``gen_ai.conversation.id`` is the run
  id); a run that goes on after a crash or a wait links to its earlier attempt's span;
- one span per step (``step {state}``), with the transition taken, its kind, and for a decision the
  enabled options, the choice and the rejected answers;
- ``execute_tool {tool}`` per tool call made (a call the journal answers makes none), with each
  failed attempt and its backoff as a span event;
- ``chat {model}`` per model call, with its usage, finish reason and answer mode.

It is a hook over the run's events, so nothing is built while it is not given; while no span is
recording (no SDK, or a run not sampled) each event costs one dictionary look-up.

The GenAI conventions are at Development status. By default this emits the forms of semantic
conventions v1.36.0 (``gen_ai.system`` names the provider), as the conventions' transition plan asks
of existing instrumentations; with ``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`` (or
``latest=True``) it emits those of v1.41.0, the latest release holding them (``gen_ai.provider.name``).
``invoke_agent`` is a client span by default (v1.36.0 defines no other) and an internal one in the latest
forms. Every attribute is a key of that registry or starts with ``statemachine_agent.``. A model answer
the journal gives (a durable run replayed) makes no ``chat`` span, as a journaled tool call makes no
``execute_tool`` span: no request was made.

Message content (the messages a model was sent and its reply) is recorded only when asked, as the
conventions say: ``capture_content=True``, or the environment variable
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` (``true`` in the default forms; ``SPAN_ONLY`` or
``SPAN_AND_EVENT`` in the latest ones, as opentelemetry-util-genai reads it). In the v1.36.0 forms it is
log events (``gen_ai.system.message``, ``gen_ai.user.message``, ``gen_ai.assistant.message``,
``gen_ai.tool.message``, ``gen_ai.choice``) in the chat span's context, through the logger provider
(``logger_provider=``, default the global one; they need an SDK ``LoggerProvider`` to go anywhere); in
the latest forms it is the chat span's ``gen_ai.input.messages`` and ``gen_ai.output.messages``, JSON text
in the shape of the conventions' JSON schemas. Content is what the model saw: a context field typed
``SecretStr`` shows as its mask there, and the API key is never in it (it goes in a header, and what the
server says is scrubbed of it).

When a hook of this module is alive, the library's own log records get the ids of the span they
happened in (``otelTraceID``, ``otelSpanID``, ``otelTraceSampled``, the names
opentelemetry-instrumentation-logging uses), so ``%(otelTraceID)s`` can go in a log format.
"""

from __future__ import annotations

import json
import logging
import os
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from .errors import StateMachineAgentError
from .events import (
    BudgetExhausted,
    DecisionOffered,
    ErrorRouted,
    Event,
    ModelCalled,
    PolicyChoiceRejected,
    RunFinished,
    RunStarted,
    RunWaiting,
    StepStarted,
    ToolAttemptFailed,
    ToolCallFailed,
    ToolCallFinished,
    ToolCallStarted,
    TransitionTaken,
)

try:
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as _missing:  # pragma: no cover - the extra is not installed
    raise ImportError("statemachine_agent.otel needs the OpenTelemetry API: pip install "
                      "'statemachine-agent[otel]' (it brings opentelemetry-api only; add an SDK and an exporter "
                      "to send spans anywhere)") from _missing

__all__ = ["CAPTURE_ENV", "LATEST_OPT_IN", "SCHEMA_DEFAULT", "SCHEMA_LATEST", "OpenTelemetry"]

CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""The environment variable that turns message content on when ``capture_content`` is not given."""
_CAPTURE_LATEST = frozenset({"SPAN_ONLY", "SPAN_AND_EVENT"})

LATEST_OPT_IN = "gen_ai_latest_experimental"
"""The value of ``OTEL_SEMCONV_STABILITY_OPT_IN`` (a comma-separated list) that selects the latest forms."""
SCHEMA_DEFAULT = "https://opentelemetry.io/schemas/1.36.0"
SCHEMA_LATEST = "https://opentelemetry.io/schemas/1.41.0"

_P = "statemachine_agent."
_PROPAGATOR = TraceContextTextMapPropagator()
_INTERNAL = SpanKind.INTERNAL


class OpenTelemetryError(StateMachineAgentError, TypeError):
    """``OpenTelemetry(...)`` was given something it cannot use; the message says what to give."""


class _Open:
    """What the hook holds of one attempt of a run while it is in flight."""

    __slots__ = ("ctx", "options", "rejected", "run", "step", "step_ctx", "tools")

    def __init__(self, run: Any, ctx: Any) -> None:
        self.run = run
        self.ctx = ctx
        self.step: Any = None
        self.step_ctx: Any = None
        self.tools: dict[int, Any] = {}
        self.options: tuple[str, ...] = ()
        self.rejected: list[str] = []

    def innermost(self) -> Any:
        return self.step if self.step is not None else self.run


class OpenTelemetry:
    """A hook tracing runs with OpenTelemetry (see the module's docstring).

    ``tracer_provider``: where spans go (default: the global one). ``latest``: emit the latest
    experimental GenAI forms (default: whether ``OTEL_SEMCONV_STABILITY_OPT_IN`` lists
    ``gen_ai_latest_experimental``). ``capture_content``: record the messages of model calls
    (default: what ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` says; off when unset).
    ``logger_provider``: where the v1.36.0 content events go (default: the global one). One object
    may serve any number of runs at once.
    """

    __slots__ = ("__weakref__", "_agent_kind", "_handlers", "_logger", "_provider_key", "_runs", "_tracer",
                 "capture_content", "latest")

    def __init__(self, *, tracer_provider: Any = None, latest: bool | None = None,
                 capture_content: bool | None = None, logger_provider: Any = None) -> None:
        if latest is None:
            opted = os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "")
            latest = LATEST_OPT_IN in {v.strip() for v in opted.split(",")}
        if type(latest) is not bool:
            raise OpenTelemetryError(f"latest={latest!r}: give True, False or None (None reads "
                                     "OTEL_SEMCONV_STABILITY_OPT_IN)")
        if tracer_provider is not None and not callable(getattr(tracer_provider, "get_tracer", None)):
            raise OpenTelemetryError(f"tracer_provider={type(tracer_provider).__name__} has no get_tracer(): give an "
                                     "opentelemetry TracerProvider (e.g. opentelemetry.sdk.trace.TracerProvider()), "
                                     "or None for the global one")
        if capture_content is None:
            said = os.environ.get(CAPTURE_ENV, "").strip()
            capture_content = said.upper() in _CAPTURE_LATEST if latest else said.lower() == "true"
        if type(capture_content) is not bool:
            raise OpenTelemetryError(f"capture_content={capture_content!r}: give True, False or None (None reads "
                                     f"{CAPTURE_ENV})")
        if logger_provider is not None and not callable(getattr(logger_provider, "get_logger", None)):
            raise OpenTelemetryError(f"logger_provider={type(logger_provider).__name__} has no get_logger(): give an "
                                     "opentelemetry LoggerProvider (e.g. opentelemetry.sdk._logs.LoggerProvider()), "
                                     "or None for the global one")
        self.latest = latest
        """Whether the latest experimental GenAI forms are emitted."""
        self.capture_content = capture_content
        """Whether the messages of model calls are recorded."""
        self._logger: Any = None
        if capture_content and not latest:
            from opentelemetry._logs import get_logger  # noqa: PLC0415  (only when content events are wanted)

            self._logger = get_logger("statemachine_agent", _version(), logger_provider=logger_provider,
                                      schema_url=SCHEMA_DEFAULT)
        self._tracer = trace.get_tracer("statemachine_agent", _version(), tracer_provider=tracer_provider,
                                        schema_url=SCHEMA_LATEST if latest else SCHEMA_DEFAULT)
        self._provider_key = "gen_ai.provider.name" if latest else "gen_ai.system"
        self._agent_kind = SpanKind.INTERNAL if latest else SpanKind.CLIENT
        self._runs: dict[str, _Open] = {}
        self._handlers: dict[type, Callable[[Any], None]] = {
            RunStarted: self._run_started, StepStarted: self._step_started, TransitionTaken: self._transition,
            DecisionOffered: self._decision, PolicyChoiceRejected: self._rejected, ErrorRouted: self._routed,
            BudgetExhausted: self._budget, ModelCalled: self._model_called, ToolCallStarted: self._tool_started,
            ToolAttemptFailed: self._tool_retry, ToolCallFinished: self._tool_finished,
            ToolCallFailed: self._tool_failed, RunFinished: self._run_finished, RunWaiting: self._run_waiting,
        }
        _LOG_IDS.hooks.add(self)

    def __call__(self, event: Event) -> None:
        if type(event) is not RunStarted and event[0] not in self._runs:
            return  # not traced (not recording, or a run this hook did not see start)
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def span_of(self, run_id: str) -> Any:
        """The innermost open span of run ``run_id`` (its step's, else its own), or ``None``."""
        found = self._runs.get(run_id)
        return None if found is None else found.innermost()

    # --- the run -----------------------------------------------------------------------------------
    def _run_started(self, event: RunStarted) -> None:
        carrier = event.trace
        links: tuple[Link, ...] = ()
        earlier = None
        if carrier:
            earlier = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
            if earlier.is_valid:
                links = (Link(earlier, {f"{_P}link": "earlier_attempt"}),)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": event.workflow,
            "gen_ai.conversation.id": event.run_id,
            f"{_P}run.max_steps": event.max_steps,
        }
        if earlier is not None:
            attributes[f"{_P}run.resumed"] = True
        # v1.36.0 defines invoke_agent as a client span only; v1.41.0 adds the in-process (internal) one.
        span = self._tracer.start_span(f"invoke_agent {event.workflow}", kind=self._agent_kind,
                                       attributes=attributes, links=links)
        if not span.is_recording():
            return
        stale = self._runs.pop(event.run_id, None)
        if stale is not None:  # an earlier attempt this hook saw stopped without an end (cancelled, crashed)
            self._close_step(stale)
            stale.run.set_status(Status(StatusCode.ERROR, "the attempt stopped without ending"))
            stale.run.end()
        ctx = trace.set_span_in_context(span)
        self._runs[event.run_id] = _Open(span, ctx)
        if isinstance(carrier, dict):
            carrier.clear()
            _PROPAGATOR.inject(carrier, context=ctx)

    def _run_finished(self, event: RunFinished) -> None:
        found = self._runs.pop(event.run_id)
        self._close_step(found)
        result = event.result
        span = found.run
        span.set_attributes({f"{_P}run.terminal": result.terminal, f"{_P}run.outcome": str(result.outcome.value),
                             f"{_P}run.steps": result.steps})
        if result.reason is not None:
            span.set_attribute(f"{_P}run.reason", result.reason)
        if result.error is not None:
            span.set_attribute("error.type", _qualname(result.error))
        if str(result.outcome.value) == "failure":
            span.set_status(Status(StatusCode.ERROR, result.reason))
        span.end()

    def _run_waiting(self, event: RunWaiting) -> None:
        found = self._runs.pop(event.run_id)
        self._close_step(found)
        span = found.run
        span.set_attributes({f"{_P}run.outcome": "waiting", f"{_P}run.terminal": event.state,
                             f"{_P}run.waiting_for": event.event})
        span.end()

    # --- steps -------------------------------------------------------------------------------------
    def _step_started(self, event: StepStarted) -> None:
        found = self._runs[event[0]]
        self._close_step(found)
        found.step = span = self._tracer.start_span(
            f"step {event.state}", context=found.ctx, kind=_INTERNAL,
            attributes={f"{_P}step.number": event.step, f"{_P}step.state": event.state,
                        f"{_P}step.visit": event.visit})
        found.step_ctx = trace.set_span_in_context(span)

    def _open_step(self, found: _Open, step: int, state: str, start: int | None = None) -> Any:
        """The step's span, opened now when no StepStarted came (a budget stopped the step before
        its action, or a hook joined mid-step)."""
        if found.step is None:
            found.step = span = self._tracer.start_span(
                f"step {state}", context=found.ctx, kind=_INTERNAL, start_time=start,
                attributes={f"{_P}step.number": step, f"{_P}step.state": state})
            found.step_ctx = trace.set_span_in_context(span)
        return found.step

    def _transition(self, event: TransitionTaken) -> None:
        found = self._runs[event[0]]
        span = self._open_step(found, event.step, event.source, time.time_ns() - int(event.duration * 1e9))
        span.set_attributes({f"{_P}step.transition": event.transition, f"{_P}step.target": event.target,
                             f"{_P}step.kind": str(event.kind.value)})
        if found.options:
            span.set_attributes({f"{_P}decision.options": found.options, f"{_P}decision.chosen": event.transition})
        if found.rejected:
            span.set_attribute(f"{_P}decision.rejections", tuple(found.rejected))
        if str(event.kind.value) == "fail":
            span.set_status(Status(StatusCode.ERROR))
        self._close_step(found)

    def _close_step(self, found: _Open) -> None:
        for span in found.tools.values():  # calls a cancellation left open
            span.end()
        found.tools.clear()
        if found.step is not None:
            found.step.end()
            found.step = found.step_ctx = None
        found.options = ()
        found.rejected = []

    def _decision(self, event: DecisionOffered) -> None:
        found = self._runs[event[0]]
        self._open_step(found, event.step, event.state)
        found.options = tuple(event.options)

    def _rejected(self, event: PolicyChoiceRejected) -> None:
        found = self._runs[event[0]]
        self._open_step(found, event.step, event.state)
        found.rejected.append(event.reason)

    def _routed(self, event: ErrorRouted) -> None:
        found = self._runs[event[0]]
        self._open_step(found, event.step, event.state).set_attribute("error.type", _qualname(event.error))

    def _budget(self, event: BudgetExhausted) -> None:
        found = self._runs[event[0]]
        self._open_step(found, event.step, event.state).set_attribute(f"{_P}step.budget", str(event.budget.value))

    # --- model calls and tool calls ----------------------------------------------------------------
    def _model_called(self, event: ModelCalled) -> None:
        call = event.call
        if call.journaled:
            return  # the journal answered: no request was made (as a journaled tool call has no span)
        found = self._runs[event[0]]
        self._open_step(found, event.step, event.state)
        end = time.time_ns()
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            self._provider_key: call.provider,
            "gen_ai.request.model": call.model,
            "gen_ai.usage.input_tokens": call.input_tokens,
            "gen_ai.usage.output_tokens": call.output_tokens,
            "gen_ai.response.finish_reasons": (call.finish_reason,),
            "gen_ai.output.type": "text" if call.mode == "prompt" else "json",
            f"{_P}model.mode": call.mode,
            f"{_P}model.purpose": call.purpose,
            f"{_P}model.attempt": call.attempt,
            f"{_P}model.http_attempts": call.http_attempts,
        }
        if call.cost is not None:
            attributes[f"{_P}model.cost"] = call.cost
        content = call.content if self.capture_content else None
        if content is not None and self.latest:
            attributes["gen_ai.input.messages"] = json.dumps([_message(m) for m in content.messages],
                                                             ensure_ascii=False, default=str)
            attributes["gen_ai.output.messages"] = json.dumps(
                [{**_message(content.reply), "finish_reason": call.finish_reason}], ensure_ascii=False, default=str)
        span = self._tracer.start_span(f"chat {call.model}", context=found.step_ctx, kind=SpanKind.CLIENT,
                                       attributes=attributes, start_time=end - int(call.latency * 1e9))
        if content is not None and self._logger is not None and span.is_recording():
            self._content_events(span, call, content, end)
        span.end(end_time=end)

    def _content_events(self, span: Any, call: Any, content: Any, at: int) -> None:
        """The v1.36.0 content events of a chat: one per message sent, then ``gen_ai.choice``."""
        from opentelemetry._logs import LogRecord  # noqa: PLC0415

        ctx = trace.set_span_in_context(span)
        attributes = {"gen_ai.system": call.provider}
        emit = self._logger.emit
        for message in content.messages:
            name, body = _event_body(message)
            emit(LogRecord(timestamp=at, context=ctx, body=body, attributes=attributes, event_name=name))
        reply = content.reply
        said: dict[str, Any] = {}
        if reply.get("content") is not None:
            said["content"] = reply["content"]
        if reply.get("tool_calls"):
            said["tool_calls"] = [_v136_call(c) for c in reply["tool_calls"]]
        emit(LogRecord(timestamp=at, context=ctx, attributes=attributes, event_name="gen_ai.choice",
                       body={"index": 0, "finish_reason": call.finish_reason, "message": said}))

    def _tool_started(self, event: ToolCallStarted) -> None:
        found = self._runs[event[0]]
        self._open_step(found, event.step, event.state)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": event.tool,
            "gen_ai.tool.type": "function",
            "gen_ai.tool.call.id": event.key if event.key is not None else str(event.call_id),
            f"{_P}tool.effect": event.effect,
        }
        if event.key is not None:
            attributes[f"{_P}tool.journal_key"] = event.key
        found.tools[event.call_id] = self._tracer.start_span(f"execute_tool {event.tool}", context=found.step_ctx,
                                                             kind=_INTERNAL, attributes=attributes)

    def _tool_retry(self, event: ToolAttemptFailed) -> None:
        span = self._runs[event[0]].tools.get(event.call_id)
        if span is not None:
            attributes: dict[str, Any] = {f"{_P}tool.attempt": event.attempt, f"{_P}tool.backoff": event.wait}
            if event.error is not None:
                attributes["error.type"] = _qualname(event.error)
            span.add_event(f"{_P}tool.attempt_failed", attributes)

    def _tool_finished(self, event: ToolCallFinished) -> None:
        span = self._runs[event[0]].tools.pop(event.call_id, None)
        if span is not None:
            span.set_attributes({f"{_P}tool.attempts": event.attempts, f"{_P}tool.fallback": event.fallback})
            span.end()

    def _tool_failed(self, event: ToolCallFailed) -> None:
        span = self._runs[event[0]].tools.pop(event.call_id, None)
        if span is not None:
            last = event.errors[-1] if event.errors else None
            span.set_attribute(f"{_P}tool.attempts", len(event.errors))
            if last is not None:
                span.set_attribute("error.type", _qualname(last))
            span.set_status(Status(StatusCode.ERROR, None if last is None else _qualname(last)))
            span.end()


# --- message content ---------------------------------------------------------------------------------
_EVENT_OF_ROLE = {"system": "gen_ai.system.message", "user": "gen_ai.user.message",
                  "assistant": "gen_ai.assistant.message", "tool": "gen_ai.tool.message"}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _v136_call(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {"id": call.get("id"), "type": call.get("type", "function"),
            "function": {"name": function.get("name"), "arguments": function.get("arguments")}}


def _event_body(message: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A chat message as a v1.36.0 content event: its name and body (``role`` only when the event's
    name does not say it)."""
    role = str(message.get("role", "user"))
    name = _EVENT_OF_ROLE.get(role, "gen_ai.user.message")
    body: dict[str, Any] = {}
    if message.get("content") is not None:
        body["content"] = message["content"]
    if role not in _EVENT_OF_ROLE:
        body["role"] = role
    if message.get("tool_calls"):
        body["tool_calls"] = [_v136_call(c) for c in message["tool_calls"]]
    if role == "tool":
        body["id"] = message.get("tool_call_id")
    return name, body


def _arguments(text: Any) -> Any:
    """A tool call's arguments as the model wrote them: parsed when they are JSON, else the text."""
    if isinstance(text, str):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    """A chat message in the shape of the conventions' input (and output) messages JSON schema."""
    role = str(message.get("role", "user"))
    parts: list[dict[str, Any]] = []
    content = message.get("content")
    if role == "tool":
        parts.append({"type": "tool_call_response", "id": message.get("tool_call_id"),
                      "response": "" if content is None else content})
    elif content is not None and content != "":
        parts.append({"type": "text", "content": _text(content)})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts.append({"type": "tool_call", "id": call.get("id"), "name": str(function.get("name", "")),
                      "arguments": _arguments(function.get("arguments"))})
    return {"role": role, "parts": parts}


def _qualname(error: BaseException) -> str:
    kind = type(error)
    module = kind.__module__
    return kind.__qualname__ if module in ("builtins", "") else f"{module}.{kind.__qualname__}"


def _version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version("statemachine-agent")
    except Exception:
        return "0"


# --- log records ------------------------------------------------------------------------------------
class _LogIds(logging.Filter):
    """Puts the trace and span ids into the library's log records: the span of the record's run
    (the library logs ``run_id`` in ``extra``) when a live hook traces it, else the current span."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks: weakref.WeakSet[OpenTelemetry] = weakref.WeakSet()
        self.installed = False

    def filter(self, record: logging.LogRecord) -> bool:
        run_id = getattr(record, "run_id", None)
        span = None
        if isinstance(run_id, str):
            for hook in list(self.hooks):
                span = hook.span_of(run_id)
                if span is not None:
                    break
        context = (span if span is not None else trace.get_current_span()).get_span_context()
        if context.is_valid:
            record.otelTraceID = trace.format_trace_id(context.trace_id)
            record.otelSpanID = trace.format_span_id(context.span_id)
            record.otelTraceSampled = context.trace_flags.sampled
        return True


_LOG_IDS = _LogIds()
logging.getLogger("statemachine_agent").addFilter(_LOG_IDS)


def trace_ids(record: logging.LogRecord) -> Mapping[str, Any]:
    """The OpenTelemetry ids this module put in ``record`` (empty when it was not traced)."""
    return {k: getattr(record, k) for k in ("otelTraceID", "otelSpanID", "otelTraceSampled") if hasattr(record, k)}
