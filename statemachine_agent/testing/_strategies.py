"""Strategies: valid contexts of a model, and the fates of tool calls."""

from __future__ import annotations

import builtins
import typing
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    """``ok``, ``raise``, ``hang`` (past its timeout: a ToolTimeout), ``invalid`` (a bad result) or, for
    an ``at_most_once`` tool, ``unknown`` (its outcome lost, as after a crash: ``EffectOutcomeUnknown``,
    or what its ``reconcile=`` finds)."""
    error: str = ""
    """For ``raise``: the exception type's qualified name (``module.Class``), as stories save it."""
    error_type: type[Exception] | None = field(default=None, compare=False)
    """For ``raise``: the exception class itself (matched by identity, never by name)."""

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "error": self.error}


def _qualified(error: type[BaseException]) -> str:
    return f"{error.__module__}.{error.__qualname__}"


_KNOWN: weakref.WeakKeyDictionary[st.SearchStrategy[Fault], tuple[type[Exception], ...]] = \
    weakref.WeakKeyDictionary()
"""The exception classes each faults(...) strategy raises: what replay() resolves a story's names with."""
_BAD: weakref.WeakKeyDictionary[st.SearchStrategy[Fault], tuple[Fault, ...]] = weakref.WeakKeyDictionary()
"""The fates other than success of each faults(...) strategy."""


def faults(errors: Sequence[type[BaseException]] = (ConnectionError, TimeoutError),
           *, hang: bool = True, invalid: bool = True) -> st.SearchStrategy[Fault]:
    """One tool call's fate: succeed (most often), raise one of ``errors``, hang, or return garbage.

    The classes are kept as they are: two classes of the same name in two modules stay apart.
    """
    types: list[type[Exception]] = []
    for e in errors:
        if not (isinstance(e, type) and issubclass(e, Exception)):
            raise TypeError(f"faults(errors=...) takes exception classes, got {e!r}")
        types.append(e)
    bad = [Fault("raise", _qualified(e), e) for e in types]
    if hang:
        bad.append(Fault("hang"))
    if invalid:
        bad.append(Fault("invalid"))
    strategy = _fates(bad)
    _KNOWN[strategy] = tuple(types)
    _BAD[strategy] = tuple(bad)
    return strategy


def _fates(bad: Sequence[Fault]) -> st.SearchStrategy[Fault]:
    """A call succeeds half the time; otherwise each of the ``bad`` fates is as likely as the others.

    The fates are one flat list: a fate nested in a ``one_of`` of a ``one_of`` came up far less often
    than its share (an unknown outcome in about 1 run in 200 that reached the call)."""
    if not bad:
        return st.just(Fault("ok"))
    return st.one_of(st.just(Fault("ok")), st.sampled_from(list(bad)))


def _with_unknown(strategy: st.SearchStrategy[Fault]) -> st.SearchStrategy[Fault]:
    """An at_most_once call's fates: those of ``strategy`` and an outcome left unknown, as likely as
    each of its other failures (for a strategy not made by :func:`faults`: one branch more)."""
    bad = _BAD.get(strategy)
    if bad is None:
        return strategy | st.just(Fault("unknown"))
    return _fates([*bad, Fault("unknown")])


def _fault_types(strategy: st.SearchStrategy[Fault], compiled: CompiledWorkflow[Any]) -> dict[str, type[Exception]]:
    """The exception classes a saved story may name, by qualified name: those of ``strategy`` (when
    made by :func:`faults`), those the workflow routes, and the default ones."""
    found: dict[str, type[Exception]] = {}
    for e in (*_KNOWN.get(strategy, ()), *_routed(compiled), ConnectionError, TimeoutError):
        found.setdefault(_qualified(e), e)
    return found


def _error_type(name: str, known: dict[str, type[Exception]]) -> type[Exception]:
    found = known.get(name)
    if found is None and "." not in name:  # a story saved before names were qualified
        same = [e for e in known.values() if e.__name__ == name]
        found = same[0] if len(same) == 1 else getattr(builtins, name, None)
    if found is None and name.startswith("builtins."):
        found = getattr(builtins, name.removeprefix("builtins."), None)
    if isinstance(found, type) and issubclass(found, Exception):
        return found
    raise ValueError(f"the story raises {name!r}, which the workflow does not route and no faults(errors=...) "
                     "names: pass the same faults(...) to replay(..., tool_faults=...)")


def _routed(compiled: CompiledWorkflow[Any]) -> list[type[Exception]]:
    return [e.error for e in compiled.spec.error_transitions
            if issubclass(e.error, Exception) and not issubclass(e.error, RunError)]


def _default_faults(compiled: CompiledWorkflow[Any]) -> st.SearchStrategy[Fault]:
    """Connection errors, timeouts, and every exception type the workflow routes itself."""
    errors: list[type[BaseException]] = list(dict.fromkeys([ConnectionError, TimeoutError, *_routed(compiled)]))
    return faults(errors=errors)
