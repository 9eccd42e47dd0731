"""Policies pick the next transition in decision states, among the enabled ones only."""

from __future__ import annotations

import random
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

__all__ = [
    "Decision",
    "NoChoice",
    "Option",
    "Policy",
    "first_enabled",
    "safe_repr",
    "scripted",
    "seeded_random",
]

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Option:
    """One enabled transition a policy may choose."""

    name: str
    """The transition's name, e.g. ``search_to_summarize``."""
    target: str
    description: str


@dataclass(frozen=True, slots=True)
class Decision(Generic[C]):
    """What a policy is asked: the state, a read-only context, and the enabled options."""

    workflow: str
    state: str
    context: C
    """The run's context, read-only: assigning to it (or changing a value in place) raises."""
    options: tuple[Option, ...]
    attempt: int
    """1 on the first ask; later asks follow rejected answers."""
    rejected: tuple[str, ...]
    """Why the earlier answers were rejected (so an LLM can be told)."""
    step: int = 0
    """The step's number in the run."""
    run_id: str = ""
    reads: tuple[str, ...] = ()
    """The fields the state declares it reads: what a model should be shown of the context."""
    description: str = ""
    """The state's description."""
    calls: Any = field(default=None, repr=False, compare=False)
    """The step's call site, a :class:`~statemachine_agent.tools.Tools` handle with no tools: a policy's
    model calls go through it (``calls.journaled``, ``calls.record_model_call``), so a durable run
    journals them and the run counts their usage against its budgets. ``None`` outside a run."""


@dataclass(frozen=True, slots=True)
class NoChoice:
    """A policy's answer that it has no valid choice this time, and why: the runner records the
    reason as a rejection and asks again (within ``max_policy_attempts``)."""

    reason: str


Choice: TypeAlias = Option | str | NoChoice
"""An :class:`Option`, or the name of one, or its target state when that is unambiguous."""
Policy: TypeAlias = Callable[[Decision[C]], Choice | Awaitable[Choice]]
"""A plain callable (sync or async) from a :class:`Decision` to a choice."""


def first_enabled(decision: Decision[Any]) -> Option:
    """The default policy: the first enabled transition, in declaration order."""
    return decision.options[0]


class scripted:  # lower case: reads as a function, like tenacity's strategies
    """Answer from a fixed list of choices, in order: for tests and replays.

    Each choice is an option name or a target state name. When the script runs out, the policy
    answers ``None``, which the runner rejects (so the run fails with a clear reason).
    """

    def __init__(self, choices: Iterable[str]) -> None:
        self.choices: list[str] = list(choices)
        """The script."""
        self.position = 0
        """How many answers were given."""

    def __call__(self, decision: Decision[Any]) -> Choice:
        if self.position >= len(self.choices):
            return None  # type: ignore[return-value]  # rejected by the runner, on purpose
        choice = self.choices[self.position]
        self.position += 1
        return choice


class seeded_random:
    """Pick uniformly among the enabled options with a seeded generator: reproducible runs."""

    def __init__(self, seed: int | None = 0) -> None:
        self.rng = random.Random(seed)
        """The generator; seeded, so the same seed gives the same choices."""

    def __call__(self, decision: Decision[Any]) -> Option:
        return self.rng.choice(decision.options)


def safe_repr(value: object, fn: Callable[[Any], str] = repr, limit: int = 200) -> str:
    """``repr(value)`` (or ``fn(value)``), cut to ``limit`` characters; never raises, whatever the
    value's ``__repr__`` does (hostile or broken objects end up in messages too)."""
    try:
        text: object = fn(value)
    except Exception:
        text = None
    if type(text) is not str:
        try:
            name = type(value).__name__
        except Exception:
            name = "object"
        return f"<{name} object that cannot be shown>"
    assert isinstance(text, str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resolve(choice: object, options: Sequence[Option]) -> tuple[Option | None, str]:
    """Match a policy's answer to an enabled option, or say why it cannot be taken.

    Anything that is not an enabled option is rejected with a reason, never raised: the answer is
    inspected by its type only (``type()``, not ``isinstance``, which asks the object's own
    ``__class__``), strings are compared as plain ``str`` (a subclass's ``__eq__`` or ``__hash__``
    is never called), and the reason shows the answer through :func:`safe_repr`.
    """
    kind = type(choice)
    if kind is NoChoice:
        assert isinstance(choice, NoChoice)
        return None, safe_repr(choice.reason, str, 2000)
    if kind is Option:
        assert isinstance(choice, Option)
        for o in options:
            if o is choice or (o.name == choice.name and o.target == choice.target):
                return o, ""
        return None, f"{safe_repr(choice.name)} is not enabled here; enabled: {_names(options)}"
    if issubclass(kind, str):
        # A plain copy: a str subclass's own __eq__/__hash__ (maybe hostile) is never called.
        text = str.__getitem__(typing.cast(str, choice), slice(None))
        assert type(text) is str
        for o in options:
            if o.name == text:
                return o, ""
        by_target = [o for o in options if o.target == text]
        if len(by_target) == 1:
            return by_target[0], ""
        if by_target:
            return None, (f"{safe_repr(text)} names several enabled transitions; answer one of "
                          f"{_names(by_target)}")
        return None, f"{safe_repr(text)} is not an enabled transition; enabled: {_names(options)}"
    try:
        kind_name = kind.__name__
    except Exception:
        kind_name = "object"
    return None, (f"a policy must answer an Option or a transition name, got {safe_repr(kind_name, str)} "
                  f"{safe_repr(choice)}")


def _names(options: Sequence[Option]) -> str:
    return ", ".join(repr(o.name) for o in options)
