"""A policy that asks a model to pick among the enabled transitions, and nothing else."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from pydantic_core import to_jsonable_python

from .._views import plain
from ..context import is_unset
from ..policies import Decision, NoChoice, safe_repr
from ..usage import Price
from ._client import DEFAULT_MAX_REPLY_BYTES, ChatModel
from ._protocol import Mode, ServerKind, choice_schema, structured

__all__ = ["LLMPolicy"]

_TOOL = "choose_transition"
DEFAULT_INSTRUCTIONS = (
    "You control one step of a workflow. Read the state and its context, then choose the next "
    "transition from the ones offered, by its exact name."
)


class LLMPolicy:
    """Ask a model which enabled transition to take, in decision states.

    The model is shown the state (its name and description), only the fields the state declares it
    reads, and the enabled transitions (names, descriptions, targets); its answer is constrained
    to their names wherever the server can enforce it (see ``docs/llm.md``). An answer that is not
    an enabled name is rejected by the runner, as any policy's; the next ask shows the model its
    answer and why it was rejected, within the run's ``max_policy_attempts``.

    ``LLMPolicy(base_url=..., model=...)`` makes its own :class:`ChatModel` (keyword arguments as
    there); ``LLMPolicy(chat=ChatModel(...))`` shares one with LLM steps.
    """

    def __init__(self, *, chat: ChatModel | None = None, base_url: str | None = None, model: str | None = None,
                 instructions: str = DEFAULT_INSTRUCTIONS, server: ServerKind | str = ServerKind.GENERIC,
                 api_key_env: str = "OPENAI_API_KEY", temperature: float | None = 0.0, max_tokens: int | None = 64,
                 timeout: float = 60.0, retries: int = 3, prices: Mapping[str, Price] | Price | None = None,
                 max_field_chars: int = 4000, max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES) -> None:
        if chat is None:
            if base_url is None or model is None:
                raise TypeError("LLMPolicy needs chat=ChatModel(...), or base_url= and model=")
            chat = ChatModel(base_url=base_url, model=model, server=server, api_key_env=api_key_env,
                             temperature=temperature, max_tokens=max_tokens, timeout=timeout, retries=retries,
                             prices=prices, max_reply_bytes=max_reply_bytes)
        elif not isinstance(chat, ChatModel):
            raise TypeError(f"chat={chat!r}: give a statemachine_agent.llm.ChatModel")
        if not isinstance(instructions, str):
            raise TypeError(f"instructions={safe_repr(instructions)}: give a string")
        self.chat = chat
        self.instructions = instructions
        self.max_field_chars = max_field_chars
        self._said: OrderedDict[tuple[str, int], list[str]] = OrderedDict()
        """What the model answered at each open decision, by (run, step): shown back with the reason
        when that answer is rejected. Bounded: the oldest decisions are forgotten first."""

    def __repr__(self) -> str:
        return f"<LLMPolicy over {self.chat!r}>"

    async def __call__(self, decision: Decision[Any]) -> str | NoChoice:
        names = [o.name for o in decision.options]
        said = self._said.setdefault((decision.run_id, decision.step), [])
        while len(self._said) > 1000:
            self._said.popitem(last=False)
        messages = self.messages(decision, said)
        exchange = await self.chat.ask(messages, schema=choice_schema(names), name=_TOOL,
                                       description="Choose the next workflow transition.", purpose="decision",
                                       attempt=decision.attempt, site=decision.calls, choices=names)
        reply = exchange.reply
        if exchange.mode is Mode.CHOICE and reply.problem is None and reply.content is not None \
                and not reply.tool_calls:
            answer: str = reply.content.strip()
        else:
            value, why = structured(reply, exchange.mode, _TOOL)
            if why is not None and reply.problem is None and reply.content and not reply.tool_calls:
                # Prose, not JSON: a bare name ("approve", or "`approve`.") is still an answer.
                value, why = {"transition": reply.content.strip().strip("`'\".").strip()}, None
            if why is not None:
                said.append(_short(reply.content or ""))
                return NoChoice(f"the model gave no choice: {why}")
            picked = value.get("transition") if isinstance(value, dict) else value
            if not isinstance(picked, str):
                said.append(_short(json.dumps(value) if value is not None else ""))
                return NoChoice(f"the model's answer {_short(value)} names no transition: answer "
                                f'{{"transition": "<name>"}} with one of {", ".join(names)}')
            answer = picked
        said.append(_short(answer))  # shown back if rejected: a megabyte of prose is not sent again
        if answer in names:  # taken: the runner validates it again, as any policy's answer
            self._said.pop((decision.run_id, decision.step), None)
        return answer

    def messages(self, decision: Decision[Any], said: list[str] = ()) -> list[dict[str, Any]]:  # type: ignore[assignment]
        """The conversation for ``decision``: instructions, the state, its reads and the options,
        then each rejected answer and why."""
        lines = [f"Workflow: {decision.workflow}", f"State: {decision.state}"]
        if decision.description:
            lines.append(f"About this state: {decision.description}")
        fields = self.fields(decision)
        if fields:
            lines.append("Context:")
            lines.extend(f"- {k}: {v}" for k, v in fields.items())
        lines.append("Transitions you may take:")
        for o in decision.options:
            about = f": {o.description}" if o.description else ""
            lines.append(f"- {o.name} (goes to {o.target}){about}")
        lines.append("Which transition? Answer with its name.")
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.instructions},
                                          {"role": "user", "content": "\n".join(lines)}]
        for i, why in enumerate(decision.rejected):
            if i < len(said):
                messages.append({"role": "assistant", "content": said[i] or "(nothing)"})
            messages.append({"role": "user", "content": f"That answer was rejected: {why}. Answer with one of: "
                             f"{', '.join(o.name for o in decision.options)}."})
        return messages

    def fields(self, decision: Decision[Any]) -> dict[str, str]:
        """The state's declared reads as JSON text, each cut to ``max_field_chars``."""
        out: dict[str, str] = {}
        for name in decision.reads:
            try:
                value = getattr(decision.context, name)
            except Exception:  # unset, or the context refuses: say so rather than fail the decision
                out[name] = "(not set)"
                continue
            if is_unset(value):
                out[name] = "(not set)"
                continue
            try:
                text = json.dumps(to_jsonable_python(plain(value), fallback=safe_repr), ensure_ascii=False)
            except (TypeError, ValueError, RecursionError):
                text = safe_repr(value)
            limit = self.max_field_chars
            out[name] = text if len(text) <= limit else text[: limit - 3] + "..."
        return out


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else safe_repr(value, limit=limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."
