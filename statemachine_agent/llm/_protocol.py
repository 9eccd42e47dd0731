"""The OpenAI chat-completions wire format: request bodies per answer mode, and replies parsed.

Pure functions over plain dicts, no I/O: the golden-body tests pin exactly what each mode sends.
Servers differ in what they enforce, so each server kind has a profile listing the modes to try,
best first; ``_client.py`` falls back along it when a server refuses a mode.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_CALLS_KEPT", "MAX_TEXT_CHARS", "PROFILES", "Mode", "Profile", "Reply", "ServerKind", "build_body",
           "choice_schema", "parse_reply", "reply_from_record", "reply_record"]

MAX_TEXT_CHARS = 256 * 1024
"""The most characters of a reply's content, or of one tool call's arguments, that are kept (and
journaled): past it the text is cut."""
MAX_CALLS_KEPT = 1024
"""The most tool calls of one reply that are kept (and journaled); the others are only counted
(:attr:`Reply.dropped_calls`). ``llm_step(max_tool_calls=)`` runs fewer still."""
_MAX_NAME_CHARS = 256
"""A tool call's id or name is cut to this."""


class Mode(enum.StrEnum):
    """How a request constrains the model's answer."""

    NAMED_TOOL = "named_tool"
    """``tools`` with one function whose parameters are the schema, and ``tool_choice`` naming it."""
    JSON_SCHEMA = "json_schema"
    """OpenAI structured outputs: ``response_format: {"type": "json_schema", ...}``."""
    JSON_OBJECT_SCHEMA = "json_object_schema"
    """llama.cpp's form: ``response_format: {"type": "json_object", "schema": ...}``."""
    CHOICE = "choice"
    """vLLM's ``structured_outputs: {"choice": [...]}``: the answer is one of the names, as text."""
    PROMPT = "prompt"
    """Nothing enforced: the schema is described in the prompt and the reply parsed as it comes."""


class ServerKind(enum.StrEnum):
    """The kinds of OpenAI-compatible server the adapter has a profile for."""

    OPENAI = "openai"
    VLLM = "vllm"
    LLAMA_CPP_PYTHON = "llama-cpp-python"
    """llama-cpp-python's ``python -m llama_cpp.server``."""
    LLAMA_CPP = "llama.cpp"
    """llama.cpp's own C++ ``llama-server``."""
    OLLAMA = "ollama"
    GENERIC = "generic"
    """Unknown: every mode is tried, best first, and what the server refuses is remembered."""


@dataclass(frozen=True, slots=True)
class Profile:
    """What a server kind is known to accept and enforce: :data:`PROFILES` holds one per
    :class:`ServerKind`; build your own for a server they do not describe and pass it as
    ``ChatModel(profile=...)``. ``kind`` labels the calls it makes (``ModelCall.provider``)."""

    kind: ServerKind
    modes: tuple[Mode, ...]
    """Modes to try for a structured answer, best first (``PROMPT`` last: it always works)."""
    enforced: frozenset[Mode]
    """Modes whose answer the server constrains (grammar or strict decoding); the runner validates
    every answer anyway."""
    decision_modes: tuple[Mode, ...] = ()
    """For a choice among names, when it differs from ``modes`` (vLLM's ``choice`` first)."""
    strict: bool = False
    """Whether ``json_schema`` is sent with ``strict: true`` (OpenAI's strict structured outputs)."""

    def __post_init__(self) -> None:
        try:
            kind = ServerKind(self.kind)
        except ValueError:
            kinds = ", ".join(repr(k.value) for k in ServerKind)
            raise ValueError(f"Profile(kind={self.kind!r}): use one of {kinds} (it labels the calls made)") from None
        modes = _modes(self.modes, "modes", tuple)
        if not modes:
            raise ValueError("Profile(modes=()): give at least one mode to try, best first "
                             "(Mode.PROMPT always works)")
        if Mode.CHOICE in modes:
            raise ValueError("Profile(modes=...) holds Mode.CHOICE, which only answers a choice among "
                             "names: put it in decision_modes")
        enforced = _modes(self.enforced, "enforced", frozenset)
        decision_modes = _modes(self.decision_modes, "decision_modes", tuple)
        if type(self.strict) is not bool:
            raise TypeError(f"Profile(strict={self.strict!r}): give True or False")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "modes", modes)
        object.__setattr__(self, "enforced", enforced)
        object.__setattr__(self, "decision_modes", decision_modes)

    def modes_for(self, decision: bool) -> tuple[Mode, ...]:
        """The modes to try, best first."""
        return (self.decision_modes or self.modes) if decision else self.modes


def _modes(value: object, name: str, kind: type[tuple[Any, ...]] | type[frozenset[Any]]) -> Any:
    """``value`` as a ``kind`` of :class:`Mode` members (their names as strings are taken too)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, set, frozenset)):
        raise TypeError(f"Profile({name}={value!r}): give a tuple of Mode members, e.g. (Mode.JSON_SCHEMA, "
                        "Mode.PROMPT)")
    out = []
    for m in value:
        try:
            out.append(Mode(m))
        except ValueError:
            modes = ", ".join(repr(x.value) for x in Mode)
            raise ValueError(f"Profile({name}=...) holds {m!r}, not a mode: use {modes}") from None
    return kind(dict.fromkeys(out))


_ALL = (Mode.NAMED_TOOL, Mode.JSON_SCHEMA, Mode.JSON_OBJECT_SCHEMA, Mode.PROMPT)

PROFILES: Mapping[ServerKind, Profile] = {
    # Named tool choice and strict json_schema are both enforced.
    ServerKind.OPENAI: Profile(ServerKind.OPENAI, (Mode.JSON_SCHEMA, Mode.NAMED_TOOL, Mode.PROMPT),
                               frozenset({Mode.JSON_SCHEMA, Mode.NAMED_TOOL}), strict=True),
    # Grammar backends enforce json_schema and the choice list; named tool choice is enforced too.
    ServerKind.VLLM: Profile(ServerKind.VLLM, (Mode.JSON_SCHEMA, Mode.NAMED_TOOL, Mode.PROMPT),
                             frozenset({Mode.JSON_SCHEMA, Mode.NAMED_TOOL, Mode.CHOICE}),
                             decision_modes=(Mode.CHOICE, Mode.JSON_SCHEMA, Mode.NAMED_TOOL, Mode.PROMPT)),
    # Measured here (0.3.36, benchmarks/llm_decisions.py): its own json_object+schema form and a named
    # tool choice are both enforced (24/24 valid with SmolLM2), the former with half the prompt tokens
    # and a third of the latency, so it goes first; OpenAI's json_schema and tool_choice "required"
    # answer HTTP 500.
    ServerKind.LLAMA_CPP_PYTHON: Profile(ServerKind.LLAMA_CPP_PYTHON,
                                         (Mode.JSON_OBJECT_SCHEMA, Mode.NAMED_TOOL, Mode.PROMPT),
                                         frozenset({Mode.NAMED_TOOL, Mode.JSON_OBJECT_SCHEMA})),
    # llama-server enforces json_schema; a named tool choice silently falls back to auto (#26535).
    ServerKind.LLAMA_CPP: Profile(ServerKind.LLAMA_CPP, (Mode.JSON_SCHEMA, Mode.JSON_OBJECT_SCHEMA, Mode.PROMPT),
                                  frozenset({Mode.JSON_SCHEMA, Mode.JSON_OBJECT_SCHEMA})),
    # Ollama ignores tool_choice (#8421, #17921) and enforces json_schema through its grammars.
    ServerKind.OLLAMA: Profile(ServerKind.OLLAMA, (Mode.JSON_SCHEMA, Mode.PROMPT), frozenset({Mode.JSON_SCHEMA})),
    ServerKind.GENERIC: Profile(ServerKind.GENERIC, _ALL, frozenset()),
}
"""The capability profile of each server kind."""


def choice_schema(names: Sequence[str]) -> dict[str, Any]:
    """The schema of a decision's answer: one transition name, from an enum of the enabled ones."""
    return {"type": "object", "properties": {"transition": {"type": "string", "enum": list(names)}},
            "required": ["transition"], "additionalProperties": False}


def build_body(*, model: str, messages: Sequence[Mapping[str, Any]], mode: Mode, schema: Mapping[str, Any],
               name: str, description: str, temperature: float | None, max_tokens: int | None,
               choices: Sequence[str] = (), strict: bool = False) -> dict[str, Any]:
    """The request body asking for an answer that fits ``schema``, constrained by ``mode``."""
    msgs = [dict(m) for m in messages]
    body: dict[str, Any] = {"model": model, "messages": msgs}
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if mode is Mode.NAMED_TOOL:
        body["tools"] = [{"type": "function",
                          "function": {"name": name, "description": description, "parameters": dict(schema)}}]
        body["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif mode is Mode.JSON_SCHEMA:
        spec: dict[str, Any] = {"name": name, "schema": dict(schema)}
        if strict and _strict_ok(schema):
            spec["strict"] = True
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif mode is Mode.JSON_OBJECT_SCHEMA:
        body["response_format"] = {"type": "json_object", "schema": dict(schema)}
    elif mode is Mode.CHOICE:
        body["structured_outputs"] = {"choice": list(choices)}
    else:  # PROMPT: say it, since nothing enforces it
        hint = (f"Answer with exactly one of: {', '.join(choices)}. Reply with the name only." if choices else
                "Answer with only a JSON object that matches this JSON schema, no prose: "
                + json.dumps(schema, separators=(",", ":")))
        msgs.append({"role": "user", "content": hint})
    return body


def tools_body(*, model: str, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]],
               temperature: float | None, max_tokens: int | None) -> dict[str, Any]:
    """A tool-use round: the model may call any of ``tools`` (OpenAI function schemas) or answer."""
    body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages]}
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    body["tools"] = [{"type": "function", "function": dict(t)} for t in tools]
    body["tool_choice"] = "auto"
    return body


def _strict_ok(schema: Any) -> bool:
    """Whether OpenAI's strict mode accepts ``schema``: every object closed, every property required."""
    if isinstance(schema, Mapping):
        if schema.get("type") == "object" or "properties" in schema:
            props = schema.get("properties", {})
            if schema.get("additionalProperties") is not False or set(schema.get("required", ())) != set(props):
                return False
        return all(_strict_ok(v) for v in schema.values())
    if isinstance(schema, list):
        return all(_strict_ok(v) for v in schema)
    return True


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asked for."""

    id: str
    name: str
    arguments: str
    """The arguments as the model wrote them (JSON text, maybe malformed)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A chat completion, parsed: what the model said, and what it cost in tokens."""

    content: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str
    input_tokens: int
    output_tokens: int
    problem: str | None = None
    """Why the reply cannot be used (no choices, not JSON, ...); ``None`` when it can."""
    dropped_calls: int = 0
    """Tool calls the reply listed past :data:`MAX_CALLS_KEPT`: counted, not kept."""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit]


def parse_reply(body: Any) -> Reply:
    """A response body (parsed JSON) as a :class:`Reply`; never raises, whatever the server sent."""
    if not isinstance(body, Mapping):
        return Reply(None, (), "", 0, 0, f"the server's reply is not a JSON object: {_short(body)}")
    usage = body.get("usage")
    inp = _count(usage.get("prompt_tokens")) if isinstance(usage, Mapping) else 0
    out = _count(usage.get("completion_tokens")) if isinstance(usage, Mapping) else 0
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return Reply(None, (), "", inp, out, "the server's reply has no choices")
    first = choices[0]
    if not isinstance(first, Mapping) or not isinstance(first.get("message"), Mapping):
        return Reply(None, (), "", inp, out, "the server's reply has no message in its first choice")
    message = first["message"]
    finish = first.get("finish_reason")
    finish = finish if isinstance(finish, str) else ""
    content = message.get("content")
    content = _cut(content, MAX_TEXT_CHARS) if isinstance(content, str) else None
    calls: list[ToolCall] = []
    dropped = 0
    raw_calls = message.get("tool_calls")
    if isinstance(raw_calls, list):
        for i, c in enumerate(raw_calls):
            fn = c.get("function") if isinstance(c, Mapping) else None
            if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
                if len(calls) >= MAX_CALLS_KEPT:
                    dropped += 1
                    continue
                args = fn.get("arguments")
                if not isinstance(args, str):  # some servers send the object itself
                    try:
                        args = json.dumps(args) if isinstance(args, (dict, list)) else ""
                    except (TypeError, ValueError, RecursionError):
                        args = ""
                cid = c.get("id") if isinstance(c.get("id"), str) else f"call_{i}"
                calls.append(ToolCall(_cut(cid, _MAX_NAME_CHARS), _cut(fn["name"], _MAX_NAME_CHARS),
                                      _cut(args, MAX_TEXT_CHARS)))
    return Reply(content, tuple(calls), _cut(finish, _MAX_NAME_CHARS), inp, out, dropped_calls=dropped)


def reply_record(reply: Reply) -> dict[str, Any]:
    """``reply`` as the journal keeps it: the parsed message (texts already cut), not the raw body."""
    record: dict[str, Any] = {"content": reply.content,
                              "tool_calls": [[c.id, c.name, c.arguments] for c in reply.tool_calls],
                              "finish_reason": reply.finish_reason, "input_tokens": reply.input_tokens,
                              "output_tokens": reply.output_tokens, "problem": reply.problem}
    if reply.dropped_calls:
        record["dropped_calls"] = reply.dropped_calls
    return record


def reply_from_record(record: Any) -> Reply:
    """A journaled reply (:func:`reply_record`) read back; a malformed one is a reply with a problem."""
    if not isinstance(record, Mapping):
        return Reply(None, (), "", 0, 0, "the journaled reply is malformed")
    content = record.get("content")
    calls = record.get("tool_calls")
    problem = record.get("problem")
    finish = record.get("finish_reason")
    if not (content is None or isinstance(content, str)) or not isinstance(calls, list) \
            or not all(isinstance(c, list) and len(c) == 3 and all(isinstance(x, str) for x in c) for c in calls) \
            or not (problem is None or isinstance(problem, str)) or not isinstance(finish, str):
        return Reply(None, (), "", 0, 0, "the journaled reply is malformed")
    return Reply(content, tuple(ToolCall(*c) for c in calls), finish, _count(record.get("input_tokens")),
                 _count(record.get("output_tokens")), problem, _count(record.get("dropped_calls")))


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def structured(reply: Reply, mode: Mode, name: str) -> tuple[Any, str | None]:
    """The answer object of a structured request, or ``(None, why not)``.

    Whatever mode was asked, the answer is looked for where a server that ignored it would have put
    it: a tool call's arguments first, then the content as JSON (a Markdown fence stripped).
    """
    if reply.problem is not None:
        return None, reply.problem
    calls = [c for c in reply.tool_calls if c.name == name] or list(reply.tool_calls)
    if calls:
        return _json(calls[0].arguments, f"the arguments of the model's call to {calls[0].name!r}")
    text = reply.content
    if text is None or not text.strip():
        return None, f"the model's reply is empty (finish_reason {reply.finish_reason!r})"
    fenced = _FENCE.match(text)
    return _json(fenced.group(1) if fenced else text, "the model's reply")


def _json(text: str, what: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except (ValueError, RecursionError):
        return None, f"{what} is not JSON: {_short(text)}"


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _short(value: Any, limit: int = 200) -> str:
    try:
        text = value if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError):
        text = "<not JSON>"
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
