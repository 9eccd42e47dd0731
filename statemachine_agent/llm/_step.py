"""LLM steps: a state action that asks a model and writes one declared field with its validated answer,
optionally after a bounded number of rounds of calling the state's declared tools."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from .._rules import MODEL_USE
from .._tooldef import KEY_PARAMETER
from ..errors import ModelAnswerInvalid, ToolArgumentError, UndeclaredTool, UnknownTool
from ..policies import safe_repr
from ..tools import Tools
from ._client import ChatModel
from ._protocol import MAX_CALLS_KEPT, Reply, structured

__all__ = ["MARKER", "ModelUse", "llm_step"]

MARKER = MODEL_USE
"""The attribute the checker reads on an action to know it asks a model (see ``_rules.py``)."""

DEFAULT_INSTRUCTIONS = "You are one step of a workflow. Do what the user asks and answer in the form asked."
DEFAULT_MAX_TOOL_CALLS = 16
"""The most tool calls one round runs, unless ``llm_step(max_tool_calls=)`` says otherwise."""


@dataclass(frozen=True, slots=True)
class ModelUse:
    """What an LLM step declares, read back by the checker: the field it writes, the tools it may
    call, the most model calls one visit can make, and the most tool calls its model can have run."""

    model: str
    write: str
    tools: tuple[str, ...]
    max_rounds: int
    max_attempts: int
    max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS

    @property
    def calls_per_visit(self) -> int:
        """Tool rounds (when it has tools) plus structured asks."""
        return (self.max_rounds if self.tools else 0) + self.max_attempts

    @property
    def tool_calls_per_visit(self) -> int:
        """The most tool calls the model can have run in one visit: rounds times the cap per round."""
        return self.max_rounds * self.max_tool_calls if self.tools else 0


def llm_step(chat: ChatModel, *, write: str, output: Any, prompt: str | Callable[[Any], str],
             instructions: str = DEFAULT_INSTRUCTIONS, tools: Sequence[str] = (), max_rounds: int = 3,
             max_attempts: int = 2, max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS) -> Callable[[Any, Tools], Any]:
    """An action that asks ``chat`` and writes its answer, validated as ``output``, to ``write``.

    ``prompt`` is a string or a function of the context (reading only what the state declares). With
    ``tools``, the model may first call those tools (each must be in the state's ``tools=[...]``),
    for at most ``max_rounds`` rounds, running at most ``max_tool_calls`` of the calls it lists in
    one round (the first ones; it is told the others were not run, and may ask for them in the next
    round); the results go back to it. Then it is asked for the answer
    in the most constrained form its server enforces; an answer that does not validate is shown
    back with the errors, up to ``max_attempts`` asks in all, after which the step raises
    :class:`~statemachine_agent.errors.ModelAnswerInvalid` (route it with ``on_error``).

    The checker reads what the step declares: ``write`` must be in the state's writes and ``tools``
    in its tools, and the most model calls (and tool calls) a run can make counts these rounds.
    """
    if not isinstance(chat, ChatModel):
        raise TypeError(f"llm_step(chat={safe_repr(chat)}): give a statemachine_agent.llm.ChatModel")
    if not isinstance(write, str) or not write:
        raise TypeError(f"llm_step(write={safe_repr(write)}): give the name of the field the answer goes to")
    if not (isinstance(prompt, str) or callable(prompt)):
        raise TypeError(f"llm_step(prompt={safe_repr(prompt)}): give a string or a function of the context")
    for name, value in (("max_rounds", max_rounds), ("max_attempts", max_attempts),
                        ("max_tool_calls", max_tool_calls)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"llm_step({name}={value!r}): give a whole number >= 1")
    if isinstance(tools, str) or not all(isinstance(t, str) for t in tools):
        raise TypeError(f"llm_step(tools={safe_repr(tools)}): give a list of tool names")
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(output)
        schema = adapter.json_schema()
    except Exception as exc:
        raise TypeError(f"llm_step(output={safe_repr(output)}): not a type pydantic can validate and describe "
                        f"as JSON schema ({type(exc).__name__}: {exc})") from None
    wrapped = schema.get("type") != "object"
    if wrapped:  # structured outputs want an object at the top
        schema = {"type": "object", "properties": {"value": schema}, "required": ["value"],
                  "additionalProperties": False, **({"$defs": schema.pop("$defs")} if "$defs" in schema else {})}
    allowed = tuple(tools)
    if max_tool_calls > MAX_CALLS_KEPT:
        raise ValueError(f"llm_step(max_tool_calls={max_tool_calls!r}): at most {MAX_CALLS_KEPT} calls of one reply "
                         "are kept; give a smaller number")
    use = ModelUse(chat.model, write, allowed, max_rounds, max_attempts, max_tool_calls)

    async def llm_action(ctx: Any, site: Tools) -> None:
        text = prompt(ctx) if callable(prompt) else prompt
        if not isinstance(text, str):
            raise TypeError(f"the prompt function of LLM step writing {write!r} returned {safe_repr(text)}, "
                            "not a string")
        messages: list[dict[str, Any]] = [{"role": "system", "content": instructions},
                                          {"role": "user", "content": text}]
        if allowed:
            await _tool_rounds(chat, site, messages, allowed, max_rounds=max_rounds, max_tool_calls=max_tool_calls)
            if messages[-1]["role"] == "assistant":
                # The rounds ended in prose (no tool call, or a server that ignores tools). A conversation
                # ending on the assistant's turn asks llama.cpp's server to continue that turn, which it
                # cannot also constrain (HTTP 400, read as a refused form): ask in a turn of its own.
                messages.append({"role": "user", "content": "Now give the answer, in the form asked."})
        for attempt in range(1, max_attempts + 1):
            exchange = await chat.ask(messages, schema=schema, name="answer",
                                      description="Give the answer in this form.", purpose="answer",
                                      attempt=attempt, site=site)
            value, why = structured(exchange.reply, exchange.mode, "answer")
            if why is None:
                try:
                    result = adapter.validate_python(value["value"] if wrapped and isinstance(value, dict)
                                                     and "value" in value else value)
                except ValidationError as exc:
                    why = "it does not fit the form asked: " + "; ".join(
                        f"{'.'.join(map(str, e['loc'])) or '(answer)'}: {e['msg']}" for e in exc.errors()[:5])
                else:
                    setattr(ctx, write, result)
                    return
            if attempt == max_attempts:
                raise ModelAnswerInvalid(chat.model, f"the model's answer for {write!r} was rejected {max_attempts} "
                                         f"time(s); last: {why}")
            messages.append({"role": "assistant", "content": _said(exchange.reply)})
            messages.append({"role": "user", "content": f"That answer was rejected: {why}. Answer again, in the "
                             "form asked."})

    llm_action.__doc__ = f"Ask model {chat.model!r} and write the answer to {write!r}."
    setattr(llm_action, MARKER, use)
    return llm_action


async def _tool_rounds(chat: ChatModel, site: Tools, messages: list[dict[str, Any]], allowed: tuple[str, ...], *,
                       max_rounds: int, max_tool_calls: int) -> None:
    specs = []
    for spec in site.schemas():
        if spec["name"] in allowed:
            params = dict(spec["parameters"])
            props = {k: v for k, v in params.get("properties", {}).items() if k != KEY_PARAMETER}
            params["properties"] = props
            if "required" in params:
                params["required"] = [r for r in params["required"] if r != KEY_PARAMETER]
            specs.append({**spec, "parameters": params})
    for round_ in range(1, max_rounds + 1):
        exchange = await chat.tool_round(messages, specs, attempt=round_, site=site)
        reply = exchange.reply
        if reply.problem is not None or not reply.tool_calls:
            if reply.content:
                messages.append({"role": "assistant", "content": reply.content})
            return
        # Only the first max_tool_calls run; the conversation shows the model only those (every call
        # it is shown must have its answer), then says the rest were not run.
        asked = len(reply.tool_calls) + reply.dropped_calls
        run = reply.tool_calls[:max_tool_calls]
        messages.append({"role": "assistant", "content": reply.content,
                         "tool_calls": [{"id": c.id, "type": "function",
                                         "function": {"name": c.name, "arguments": c.arguments}}
                                        for c in run]})
        for call in run:
            messages.append({"role": "tool", "tool_call_id": call.id,
                             "content": await _run_tool(site, call.name, call.arguments, allowed)})
        if asked > len(run):
            messages.append({"role": "user", "content": f"You asked for {asked} tool calls in one round; only the "
                             f"first {len(run)} were run (at most {max_tool_calls} per round). Ask again for any "
                             "others you still need."})


async def _run_tool(site: Tools, name: str, arguments: str, allowed: tuple[str, ...]) -> str:
    """A tool call the model asked for, run through the step's handle; mistakes go back to the model
    as the tool's answer (it may correct them), failures of the tool itself route as usual."""
    if name not in allowed:
        return f"error: there is no tool {name!r} here; the tools are: {', '.join(allowed)}"
    try:
        args = json.loads(arguments) if arguments.strip() else {}
    except (ValueError, RecursionError):
        return f"error: the arguments are not JSON: {arguments[:200]!r}"
    if not isinstance(args, dict):
        return "error: the arguments must be a JSON object"
    try:
        result = await site.call(name, **{str(k): v for k, v in args.items() if k != KEY_PARAMETER})
    except (ToolArgumentError, UnknownTool, UndeclaredTool) as exc:
        return f"error: {exc}"
    try:
        return json.dumps(to_jsonable_python(result, fallback=safe_repr), ensure_ascii=False)[:20000]
    except (TypeError, ValueError, RecursionError):
        return safe_repr(result, limit=20000)


def _said(reply: Reply) -> str:
    if reply.tool_calls:
        return reply.tool_calls[0].arguments[:2000]
    return (reply.content or "(nothing)")[:2000]
