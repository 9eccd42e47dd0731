"""Models in the loop, over the OpenAI-compatible chat-completions protocol (``pip install
statemachine-agent[llm]``).

- :class:`LLMPolicy`: a decision state's policy; the model picks among the enabled transitions only.
- :func:`llm_step`: a state action that asks a model (after bounded tool-use rounds, if wanted) and
  writes a declared field with its pydantic-validated answer.
- :class:`ChatModel`: one model on one server, shared by both; its :class:`ServerKind` picks what
  the server is sent so that the answer is constrained wherever it can be (see docs/llm.md).

Every call is journaled in a durable run (a replay or a resume never asks again for a committed
step), recorded with its usage on the step (:class:`~statemachine_agent.usage.ModelCall`), and
counted against the run's ``token_budget`` and ``cost_budget``.
"""

from __future__ import annotations

try:
    import httpx as _httpx  # noqa: F401  (only to say what is missing)
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("statemachine_agent.llm needs httpx: pip install 'statemachine-agent[llm]'") from exc

from ..usage import ModelCall, Price, Usage
from ._client import DEFAULT_MAX_REPLY_BYTES, ChatModel, Exchange, ModelReplyTooLarge, wait_retry_after
from ._policy import LLMPolicy
from ._protocol import PROFILES, Mode, Profile, Reply, ServerKind, ToolCall
from ._step import ModelUse, llm_step

__all__ = [
    "DEFAULT_MAX_REPLY_BYTES",
    "PROFILES",
    "ChatModel",
    "Exchange",
    "LLMPolicy",
    "Mode",
    "ModelCall",
    "ModelReplyTooLarge",
    "ModelUse",
    "Price",
    "Profile",
    "Reply",
    "ServerKind",
    "ToolCall",
    "Usage",
    "llm_step",
    "wait_retry_after",
]
