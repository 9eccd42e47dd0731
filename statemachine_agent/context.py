"""The typed context: a pydantic model that validates every assignment."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict

try:
    from pydantic import MISSING as _MISSING
except ImportError:  # pydantic 2.12 and 2.13 keep the sentinel under experimental
    from pydantic.experimental.missing_sentinel import MISSING as _MISSING

__all__ = ["UNSET", "Context", "all_finite", "first_non_finite", "is_unset"]

UNSET: Any = _MISSING
"""The default of a field that a state writes before any state reads it.

``hits: list[str] = UNSET`` keeps the field's type free of ``None``, so mypy sees ``ctx.hits`` as a
``list[str]`` in every state that reads it, while the checker proves that some state writes it
first on every path. An unset field is left out of ``model_dump()`` and JSON (pydantic's
``MISSING`` sentinel), and reading it before a write raises
:class:`~statemachine_agent.errors.ContextAccessError`. Typed ``Any`` so that it fits any field.
"""


def is_unset(value: object) -> bool:
    """Whether ``value`` is :data:`UNSET` (a field no step has written yet)."""
    return value is _MISSING


class Context(BaseModel):
    """Base class for workflow contexts: validated on assignment, no unknown fields.

    Any ``pydantic.BaseModel`` with ``validate_assignment=True`` works too; this one just sets the
    safe defaults.
    """

    model_config = ConfigDict(validate_assignment=True, extra="forbid")


def all_finite(value: Any) -> bool:
    """Whether JSON-like data holds no NaN or infinity: :func:`first_non_finite` without the path it
    builds, for hot paths that only need the answer (a resume checks every step row it reads)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                return False
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return True


def first_non_finite(value: Any) -> tuple[tuple[str | int, ...], float] | None:
    """The first NaN or infinity in ``value`` (JSON-like data: dicts, lists, tuples), in document
    order, as (the keys and indexes leading to it, the number); ``None`` when there is none. JSON
    has no such numbers, so a store cannot keep them: callers refuse them naming the field.
    Iterative, so any nesting depth is fine."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack:
        parts, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return parts, v
        if isinstance(v, dict):
            stack.extend(((*parts, str(k)), x) for k, x in reversed(list(v.items())))
        elif isinstance(v, (list, tuple)):
            stack.extend(((*parts, i), x) for i, x in reversed(list(enumerate(v))))
    return None
