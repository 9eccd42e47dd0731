"""Policies pick the next transition in decision states, among the enabled ones only."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "Decision",
    "Option",
    "Policy",
    "first_enabled",
    "scripted",
    "seeded_random",
]


@dataclass(frozen=True, slots=True)
class Option:
    """One enabled transition a policy may choose."""

    name: str
    """The transition's name, e.g. ``search_to_summarize``."""
    target: str
    description: str


@dataclass(frozen=True, slots=True)
class Decision:
    """What a policy is asked: the state, a read-only context, and the enabled options."""

    workflow: str
    state: str
    context: Any
    """Read-only: assigning to it raises."""
    options: tuple[Option, ...]
    attempt: int
    """1 on the first ask; later asks follow rejected answers."""
    rejected: tuple[str, ...]
    """Why the earlier answers were rejected (so an LLM can be told)."""


Choice: TypeAlias = Option | str
"""An :class:`Option`, or the name of one, or its target state when that is unambiguous."""
Policy: TypeAlias = Callable[[Decision], Choice | Awaitable[Choice]]
"""A plain callable (sync or async) from a :class:`Decision` to a choice."""


def first_enabled(decision: Decision) -> Option:
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

    def __call__(self, decision: Decision) -> Choice:
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

    def __call__(self, decision: Decision) -> Option:
        return self.rng.choice(decision.options)


def resolve(choice: object, options: Sequence[Option]) -> tuple[Option | None, str]:
    """Match a policy's answer to an enabled option, or say why it cannot be taken."""
    if isinstance(choice, Option):
        if choice in options:
            return choice, ""
        return None, f"{choice.name!r} is not enabled here; enabled: {_names(options)}"
    if isinstance(choice, str):
        by_name = [o for o in options if o.name == choice]
        if by_name:
            return by_name[0], ""
        by_target = [o for o in options if o.target == choice]
        if len(by_target) == 1:
            return by_target[0], ""
        if by_target:
            return None, f"{choice!r} names several enabled transitions; answer one of {_names(by_target)}"
        return None, f"{choice!r} is not an enabled transition; enabled: {_names(options)}"
    return None, (f"a policy must answer an Option or a transition name, got "
                  f"{type(choice).__name__} {choice!r}")


def _names(options: Sequence[Option]) -> str:
    return ", ".join(repr(o.name) for o in options)
