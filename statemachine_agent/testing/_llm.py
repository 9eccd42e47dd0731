"""Async LLM policies under test: a scripted model server whose replies the kit generates."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from ..llm.testing import FakeOpenAIServer, FakeRequest, FakeResponse, chat_reply, tool_reply

_TOOL = "choose_transition"
"""The function LLMPolicy asks the model to call (see docs/llm.md)."""


@dataclass(frozen=True, slots=True)
class ModelReply:
    """One reply of the scripted model: its kind and what it says."""

    kind: str
    """``valid`` (a decision naming an enabled transition), ``wrong_name`` (a decision naming none),
    ``invalid_json`` (arguments that are not JSON) or ``prose`` (text, no decision)."""
    text: str
    """The transition named, the broken arguments, or the prose."""

    def response(self) -> FakeResponse:
        if self.kind in ("valid", "wrong_name"):
            return tool_reply(_TOOL, {"transition": self.text})
        if self.kind == "invalid_json":
            return chat_reply(None, tool_calls=[(_TOOL, self.text)])
        return chat_reply(self.text)

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "text": self.text}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> ModelReply:
        return cls(data["kind"], data["text"])

    def __str__(self) -> str:
        return f"{self.kind}: {self.text!r}"


def llm_replies(transitions: Sequence[str]) -> st.SearchStrategy[ModelReply]:
    """A model's reply to a decision among ``transitions``: a valid decision (most often), a decision
    naming no enabled transition, arguments that are not JSON, or prose."""
    names = list(transitions)
    valid = st.sampled_from(names).map(lambda n: ModelReply("valid", n))
    wrong = st.sampled_from(["nowhere", "", names[0].upper() + "!", "none of these"]).map(
        lambda n: ModelReply("wrong_name", n))
    broken = st.sampled_from(['{"transition": ', "{transition: x}", "[]]", ""]).map(
        lambda t: ModelReply("invalid_json", t))
    prose = st.sampled_from(["I am not sure; it depends.", "Let me think about that step by step.",
                             "As an AI model I cannot choose."]).map(lambda t: ModelReply("prose", t))
    # Half the replies are valid: the garbage is one branch (a map keeps Hypothesis from flattening it
    # into four, which made three replies in four garbage and ended almost half the runs in the
    # policy's failure, so the states after a decision were rarely reached).
    garbage = st.one_of(wrong, broken, prose).map(lambda reply: reply)
    return st.one_of(valid, garbage)


class ScriptedModel:
    """A scripted OpenAI-compatible server (``llm.testing.FakeOpenAIServer``, real HTTP on
    127.0.0.1) whose replies :func:`check_workflow` generates, one per policy call::

        with ScriptedModel() as model:
            check_workflow(wf, policy=LLMPolicy(base_url=model.url, model="fake", retries=1), model=model)

    ``replies`` makes the strategy of replies from the enabled transitions' names (default:
    :func:`llm_replies`). Replies are recorded in the story and replayed.
    """

    def __init__(self, replies: Callable[[Sequence[str]], st.SearchStrategy[Any]] | None = None) -> None:
        if replies is not None and not callable(replies):
            raise TypeError("ScriptedModel(replies=...) takes a function of the transition names returning a "
                            f"strategy of ModelReply, got {replies!r}")
        self._replies = replies or llm_replies
        self._strategies: dict[tuple[str, ...], st.SearchStrategy[Any]] = {}
        """Made once per set of names (and once more for the replies after a rejected one)."""
        self._queue: deque[ModelReply] = deque()
        self._last = ModelReply("prose", "(no reply was scripted for this request)")
        self._lock = threading.Lock()
        self.server = FakeOpenAIServer(self._answer)

    def replies(self, transitions: Sequence[str]) -> st.SearchStrategy[Any]:
        """The strategy of replies to a decision among ``transitions`` (made once per set of names)."""
        key = tuple(transitions)
        found = self._strategies.get(key)
        if found is None:
            found = self._strategies[key] = self._replies(key)
        return found

    def replies_again(self, transitions: Sequence[str]) -> st.SearchStrategy[Any]:
        """The replies after a rejected one: a valid one twice as often as garbage. Hypothesis repeats a
        draw it made (its mutator copies choices), so with one strategy a rejected reply was followed by
        garbage far more often than its share, and the decision failed outright in about 4 runs in 10."""
        key = ("again", *transitions)
        found = self._strategies.get(key)
        if found is None:
            first = self.replies(transitions)
            valid = st.sampled_from(list(transitions)).map(lambda n: ModelReply("valid", n))
            found = self._strategies[key] = st.one_of(valid, valid.map(lambda reply: reply), first)
        return found

    def push(self, reply: ModelReply) -> None:
        """The reply to the next request (the kit calls it before each policy call)."""
        with self._lock:
            self._queue.append(reply)

    def _answer(self, request: FakeRequest, index: int) -> FakeResponse:
        with self._lock:
            if self._queue:
                self._last = self._queue.popleft()
            return self._last.response()

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()

    @property
    def url(self) -> str:
        """The server's base URL (ends in ``/v1``): give it as ``base_url``."""
        return str(self.server.url)

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> ScriptedModel:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
