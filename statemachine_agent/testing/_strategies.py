"""Strategies: valid contexts of a model, and the fates of tool calls."""

from __future__ import annotations

import builtins
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from ..compile import CompiledWorkflow
from ..errors import RunError


def contexts(model: type[BaseModel], **overrides: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid instances of a pydantic context model, honouring field types and constraints.

    Optional fields are sometimes left to their defaults; ``overrides`` replace a field's strategy.
    """
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    hints = typing.get_type_hints(model, include_extras=True)
    for name, info in model.model_fields.items():
        key = info.alias or name  # validation goes by alias when there is one
        if name in overrides:
            strat = overrides[name]
        else:
            annotation: Any = hints.get(name, info.annotation)
            pattern = next((m.pattern for m in info.metadata if getattr(m, "pattern", None)), None)
            if pattern is not None:
                strat = st.from_regex(pattern, fullmatch=True)
            else:
                if info.metadata:
                    annotation = typing.Annotated[(annotation, *info.metadata)]
                strat = st.from_type(annotation)
        (required if info.is_required() else optional)[key] = strat
    raw = st.fixed_dictionaries(required, optional=optional)

    def build(data: dict[str, Any]) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError:
            return None  # model-level validators may refuse: filtered below

    return raw.map(build).filter(lambda m: m is not None)


@dataclass(frozen=True, slots=True)
class Fault:
    """What one tool call does in a fault plan."""

    kind: str
    """``ok``, ``raise``, ``hang`` (past its timeout: a ToolTimeout) or ``invalid`` (a bad result)."""
    error: str = ""
    """For ``raise``: the exception type's name."""

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "error": self.error}


def faults(errors: Sequence[type[BaseException]] = (ConnectionError, TimeoutError),
           *, hang: bool = True, invalid: bool = True) -> st.SearchStrategy[Fault]:
    """One tool call's fate: succeed (most often), raise one of ``errors``, hang, or return garbage."""
    options: list[st.SearchStrategy[Fault]] = [st.just(Fault("ok"))]
    for e in errors:
        if not (isinstance(e, type) and issubclass(e, Exception)):
            raise TypeError(f"faults(errors=...) takes exception classes, got {e!r}")
        _ERRORS.setdefault(e.__name__, e)  # so stories and replays raise the same type
    options += [st.just(Fault("raise", e.__name__)) for e in errors]
    if hang:
        options.append(st.just(Fault("hang")))
    if invalid:
        options.append(st.just(Fault("invalid")))
    return st.one_of(st.just(Fault("ok")), st.one_of(options))



_ERRORS: dict[str, type[Exception]] = {}
"""Exception types named in fault plans, by name."""


def _error_type(name: str) -> type[Exception]:
    found = _ERRORS.get(name) or getattr(builtins, name, None)
    if isinstance(found, type) and issubclass(found, Exception):
        return found
    raise ValueError(f"the fault plan raises {name!r}, which is not a builtin exception nor one given to "
                     "faults(errors=...): pass the same faults(...) to replay(..., tool_faults=...)")



def _default_faults(compiled: CompiledWorkflow[Any]) -> st.SearchStrategy[Fault]:
    """Connection errors, timeouts, and every exception type the workflow routes itself."""
    routed = [e.error for e in compiled.spec.error_transitions
              if issubclass(e.error, Exception) and not issubclass(e.error, RunError)]
    errors: list[type[BaseException]] = list(dict.fromkeys([ConnectionError, TimeoutError, *routed]))
    return faults(errors=errors)
