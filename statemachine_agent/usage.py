"""What model calls cost: one record per call, summed per step and per run.

Plain data with no dependencies, so the runner, the stores and the LLM adapter (which sits above
them all) share one shape. A record is JSON-ready both ways (``to_dict`` / ``from_dict``): it is
stored with its step, so a resumed run still knows what its earlier steps spent. What was said
(:class:`CallContent`) and whether the journal answered the call travel with the record to the
run's hooks only: neither is stored, compared or in ``to_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["CallContent", "ModelCall", "Price", "Usage"]


@dataclass(frozen=True, slots=True)
class Price:
    """What a model charges, in any currency, per million tokens (input and output apart)."""

    input: float
    """Per million prompt tokens."""
    output: float
    """Per million completion tokens."""

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"Price({name}={value!r}): give a finite number >= 0, per million tokens")

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """The cost of one call."""
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


@dataclass(frozen=True, slots=True)
class CallContent:
    """What one model call said, in the OpenAI chat form: the request's messages and the reply's
    message. On :attr:`ModelCall.content` on its way to the hooks (a tracing hook records it only when
    asked to); never stored or kept in a result."""

    messages: tuple[Mapping[str, Any], ...]
    """The request's messages (``{"role": ..., "content": ..., "tool_calls"/"tool_call_id": ...}``), in order."""
    reply: Mapping[str, Any]
    """The reply's message: ``{"role": "assistant", "content": ..., "tool_calls": [...]}``."""


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One request to a model, as the run records it (on its step, in events, in the store)."""

    provider: str
    """The server kind the adapter spoke to (``openai``, ``vllm``, ``llama-cpp-python``, ...)."""
    model: str
    mode: str
    """How the answer was constrained: ``named_tool``, ``json_schema``, ``json_object_schema``,
    ``choice``, ``prompt``, or ``tools`` for a tool-use round."""
    purpose: str
    """``decision`` (a policy's choice), ``answer`` (an LLM step's structured answer) or ``tools``."""
    input_tokens: int
    output_tokens: int
    latency: float
    """Seconds from the request to the parsed reply, retries included."""
    finish_reason: str
    attempt: int
    """Which ask of this decision or step it was (1 first; later ones follow rejected answers)."""
    http_attempts: int = 1
    """Requests sent for it: retries after 429 or 5xx and fallbacks from refused modes count."""
    cost: float | None = None
    """From the price table, when the model is in it."""
    journaled: bool = field(default=False, compare=False)
    """The journal answered it (a durable run replayed): no request was made now. Not stored."""
    content: CallContent | None = field(default=None, compare=False, repr=False)
    """What was said, on the way to the hooks only (the runner keeps the call without it). Not stored."""

    @property
    def total_tokens(self) -> int:
        """Input and output tokens together."""
        return self.input_tokens + self.output_tokens

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (without ``journaled`` and ``content``: they are not kept)."""
        return {name: getattr(self, name) for name in _STORED}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCall:
        """Back from :meth:`to_dict` (unknown keys are ignored, so older readers keep working)."""
        return cls(**{k: v for k, v in data.items() if k in _STORED})


_STORED = tuple(f.name for f in fields(ModelCall) if f.name not in ("journaled", "content"))
"""The fields of a model call's record (what a store keeps)."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Model calls summed: on a step (``Step.usage``) or a run (``RunResult.usage``)."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    """The summed cost of the calls that had a price; ``None`` when none had."""
    latency: float = 0.0
    """Seconds spent waiting for models, summed."""

    @property
    def total_tokens(self) -> int:
        """Input and output tokens together."""
        return self.input_tokens + self.output_tokens

    @classmethod
    def of(cls, calls: Iterable[ModelCall]) -> Usage:
        """The sum of ``calls``."""
        n = i = o = 0
        latency = 0.0
        cost: float | None = None
        for c in calls:
            n += 1
            i += c.input_tokens
            o += c.output_tokens
            latency += c.latency
            if c.cost is not None:
                cost = c.cost if cost is None else cost + c.cost
        return cls(n, i, o, cost, latency)

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        cost = self.cost if other.cost is None else other.cost if self.cost is None else self.cost + other.cost
        return Usage(self.calls + other.calls, self.input_tokens + other.input_tokens,
                     self.output_tokens + other.output_tokens, cost, self.latency + other.latency)
