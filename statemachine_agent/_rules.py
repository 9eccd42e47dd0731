"""The checker's rules: one function per rule, each yielding problems from one shared analysis.

:func:`build` reads the spec once into an :class:`Analysis` (states by name, the edges, their
indexes, reachability) and computes the verdicts the report shares (traps, unbounded cycles, unset
reads); then each ``_check_*`` function only yields the :class:`Problem`\\ s of one rule, reading
the analysis and never changing it. Nothing here raises on a malformed spec: odd values are
problems, never crashes.
"""

from __future__ import annotations

import difflib
import enum
import inspect
import itertools
import operator
import types
import typing
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ._graph import bfs_edges, edge_path, reachable, strongly_connected_components, topological_order
from ._tooldef import Effect, declared_tool_calls
from .context import is_unset
from .errors import EffectOutcomeUnknown, Problem, ProblemCode
from .guards import Guard
from .spec import (
    TRANSITION_NAME,
    ErrorTransitionSpec,
    NoExit,
    Outcome,
    StateSpec,
    TransitionSpec,
    WorkflowSpec,
)

# Exceptions that must propagate: routing them would swallow cancellation or interruption.
_UNROUTABLE: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit, GeneratorExit)

Rule = Callable[["Analysis"], Iterable[Problem]]


class EdgeKind(enum.StrEnum):
    """What an :class:`Edge` of the checked graph stands for."""

    TRANSITION = "transition"
    """A declared transition."""
    ERROR = "error"
    """An error transition: the action's writes are not applied."""
    NO_EXIT = "no-exit"
    """The implicit move to the failure terminal of a state with ``on_no_exit='fail'``."""


@dataclass(frozen=True, slots=True)
class Edge:
    """An edge of the checked graph: a declared transition, an error transition, or an implicit fail."""

    source: str
    target: str
    bound: int | None
    kind: EdgeKind
    """``transition``, ``error`` (the action's writes are not applied) or ``no-exit`` (implicit fail)."""
    label: str = ""
    """The transition's name (``source->(no exit)`` for an implicit fail)."""


# --- small helpers ---------------------------------------------------------------------------------


def _q(names: Iterable[object], conj: str = "or") -> str:
    items = [repr(n) for n in names]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {conj} " + items[-1]


def _suggest_name(name: object, known: Sequence[str]) -> str | None:
    if not isinstance(name, str) or not known:
        return None
    close = difflib.get_close_matches(name, list(known), n=1)
    return close[0] if close else None


def _suggest(name: object, known: Iterable[str]) -> str:
    close = _suggest_name(name, sorted(known))
    return f" (did you mean {close!r}?)" if close else ""


def is_count(value: object) -> typing.TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _attr(obj: object, name: str) -> Any:
    """``getattr`` that treats a raising attribute as missing."""
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _items(value: object) -> tuple[Any, ...]:
    """The entries of a declared tuple or list; nothing when it is something else."""
    return tuple(value) if isinstance(value, (tuple, list)) else ()


_NONE: frozenset[str] = frozenset()


def _names_in(fs: object) -> frozenset[str]:
    """The string entries of a declared collection of names; nothing when it is malformed."""
    if type(fs) is tuple and not fs:
        return _NONE
    if not isinstance(fs, (tuple, list, set, frozenset)):
        return frozenset()
    return frozenset(f for f in fs if isinstance(f, str))


def _shared_names_in(fs: object, shared: dict[tuple[object, ...], frozenset[str]]) -> frozenset[str]:
    """:func:`_names_in`, one set for every equal tuple: 5,000 states that read ``("x",)`` share
    one set instead of holding 5,000 (a million bytes, and as many cache lines to walk)."""
    if type(fs) is not tuple:
        return _names_in(fs)
    try:
        found = shared.get(fs)
    except TypeError:  # an unhashable entry: reported by its rule
        return _names_in(fs)
    if found is None:
        found = shared[fs] = _names_in(fs)
    return found


def _is_name_list(fs: object) -> bool:
    return isinstance(fs, (tuple, list, set, frozenset)) and all(isinstance(f, str) for f in fs)


_CAPACITY: dict[Any, tuple[int, int] | None] = {}


def _positional_capacity(fn: Callable[..., Any]) -> tuple[int, int] | None:
    """(required, maximum) positional arguments ``fn`` takes; maximum -1 means ``*args``."""
    try:
        return _CAPACITY[fn]
    except (KeyError, TypeError):
        pass
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # builtins without a signature: give them the benefit of the doubt
    required = maximum = 0
    cap: tuple[int, int] | None = None
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            maximum += 1
            if p.default is p.empty:
                required += 1
        elif p.kind is p.VAR_POSITIONAL:
            maximum = -1
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            cap = (99, 99)  # a required keyword-only argument can never be supplied
            break
    cap = cap or (required, maximum)
    try:
        if len(_CAPACITY) < 4096:
            _CAPACITY[fn] = cap
    except TypeError:
        pass  # unhashable callables are simply not cached
    return cap


def _takes(fn: Callable[..., Any], n: int) -> bool:
    """Whether ``fn`` can be called with exactly ``n`` positional arguments."""
    cap = _positional_capacity(fn)
    if cap is None:
        return True
    required, maximum = cap
    return required <= n and (maximum == -1 or maximum >= n)


def takes_tools(fn: Callable[..., Any]) -> bool:
    """Whether an action wants the tools handle: it takes a second positional parameter."""
    cap = _positional_capacity(fn)
    return cap is not None and (cap[1] == -1 or cap[1] >= 2) and cap[0] <= 2


def _allows_none(annotation: Any) -> bool:
    if annotation is Any or annotation is None or annotation is type(None):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _allows_none(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_allows_none(a) for a in typing.get_args(annotation))
    return False


def fields_set_at_start(model: type[BaseModel]) -> frozenset[str]:
    """Fields that hold a usable value before any action runs.

    A required field whose type excludes ``None`` (the caller must supply it), or a field whose
    default is neither ``None`` nor :data:`~statemachine_agent.context.UNSET` (or comes from a factory).
    """
    out = set()
    for name, info in model.model_fields.items():
        if info.is_required():
            if not _allows_none(info.annotation):
                out.add(name)
        elif info.default_factory is not None or (info.default is not None and not is_unset(info.default)):
            out.add(name)
    return frozenset(out)


def _tname(t: object) -> str:
    """How messages name a transition: ``transition 'name' (a->b)``."""
    name = _attr(t, "name")
    src, tgt = _attr(t, "source"), _attr(t, "target")
    if isinstance(t, ErrorTransitionSpec):
        err = getattr(t.error, "__name__", repr(t.error))
        arrow, kind = f"{src}-[{err}]->{tgt}", "error transition"
    else:
        arrow, kind = f"{src}->{tgt}", "transition"
    if isinstance(name, str) and name:
        return f"{kind} {name!r} ({arrow})"
    return f"{kind} {arrow}"


def _subject(t: object) -> str:
    name = _attr(t, "name")
    return name if isinstance(name, str) and name else f"{_attr(t, 'source')}->{_attr(t, 'target')}"


def _fmt_edges(start: str, path: Sequence[Edge]) -> str:
    """``a -> b -[error]-> c``; very long paths keep their ends."""
    nodes = [start, *(e.target for e in path)]
    arrows = [" -[error]-> " if e.kind is EdgeKind.ERROR else " -> " for e in path]
    if len(nodes) > 12:
        head = "".join(n + a for n, a in zip(nodes[:4], arrows[:4], strict=True))
        tail = "".join(a + n for a, n in zip(arrows[-4:], nodes[-4:], strict=True))
        return f"{head}... ({len(nodes) - 8} more states) ...{tail}"
    return nodes[0] + "".join(a + n for a, n in zip(arrows, nodes[1:], strict=True))


# --- the shared analysis ---------------------------------------------------------------------------


@dataclass(eq=False)
class Analysis:
    """Everything the rules share, read from the spec once."""

    spec: WorkflowSpec
    model: Any = None
    model_ok: bool = False
    model_name: str = ""
    fields: frozenset[str] = frozenset()
    tool_names: set[str] = field(default_factory=set)
    tools_known: bool = True
    """Every registered tool has a name, so an unregistered name is surely unknown."""
    names: list[str] = field(default_factory=list)
    """Well-formed states, first declaration of each name, in declaration order."""
    states: dict[str, StateSpec] = field(default_factory=dict)
    initial: str | None = None
    terminals: list[str] = field(default_factory=list)
    failure_terminal: str | None = None
    reads_of: dict[str, frozenset[str]] = field(default_factory=dict)
    """The fields each state reads; like the three below, only states that declare some have an
    entry (so a large spec keeps small tables): look them up with ``.get(name, _NONE)``."""
    writes_of: dict[str, frozenset[str]] = field(default_factory=dict)
    optional_reads_of: dict[str, frozenset[str]] = field(default_factory=dict)
    optional_writes_of: dict[str, frozenset[str]] = field(default_factory=dict)
    visit_bound: dict[str, int] = field(default_factory=dict)
    """Each state's ``max_visits``, when it is a valid count; ``.get(name)`` is ``None`` for no bound."""
    transitions: list[TransitionSpec] = field(default_factory=list)
    """Well-formed transitions (of any endpoints)."""
    exits: dict[str, list[TransitionSpec]] = field(default_factory=lambda: defaultdict(list))
    """The declared exits of each non-terminal state, by order; a mistyped target still counts."""
    edges: list[Edge] = field(default_factory=list)
    out: dict[str, list[Edge]] = field(default_factory=lambda: defaultdict(list))
    """The edges leaving each state (a state without any has no entry); the edges into a state
    are needed only to explain some problems, so :func:`_into` builds them then."""
    dangling: set[str] = field(default_factory=set)
    """States with an exit to an unknown state: where that exit leads is unknown, not nowhere."""
    meant: set[str] = field(default_factory=set)
    """States a mistyped transition probably meant (its target, or the closest known name)."""
    reach: dict[str, None] = field(default_factory=dict)
    """States a run can enter (the keys: a dict, as large specs keep it in the caches)."""
    unreachable: list[str] = field(default_factory=list)
    initials: list[str] = field(default_factory=list)
    """States marked initial, in declaration order. Like the three below, gathered while the states
    are read, so the rules about them need not walk every state again."""
    waiting: list[str] = field(default_factory=list)
    """States with a ``wait``."""
    with_tools: list[str] = field(default_factory=list)
    """States that declare tools (anything but an empty tuple)."""
    model_uses: dict[str, Any] = field(default_factory=dict)
    """What each LLM step's action declares of its model calls (see :func:`model_use`)."""
    deciding: list[str] = field(default_factory=list)
    """States marked ``decision``."""
    components: list[list[str]] = field(default_factory=list)
    """The strongly connected groups of reachable states, sinks first (Tarjan's order)."""
    looping: dict[str, None] = field(default_factory=dict)
    """Reachable states on a cycle: in a group of several, or with an edge to themselves."""
    traps: set[str] = field(default_factory=set)
    """Reachable states from which no terminal state can be reached."""
    unbounded: list[frozenset[str]] = field(default_factory=list)
    """Groups of reachable states that loop with no bound, in the order they are reported."""
    unset: set[tuple[str, str]] = field(default_factory=set)
    """``(state, field)``: the state, or a guard on its exits, may read the field unset."""
    unset_reads: list[tuple[str, str, TransitionSpec | None]] = field(default_factory=list)
    """Each such read: ``(state, field, None)`` for the state's own read, or the guarded transition."""

    def known(self, name: object) -> bool:
        return isinstance(name, str) and name in self.states

    def terminal(self, name: str) -> bool:
        return bool(self.states[name].terminal)


def _good_state_name(name: object) -> bool:
    return isinstance(name, str) and bool(name.strip())


def _routable(error: object) -> bool:
    return (isinstance(error, type) and issubclass(error, Exception)
            and not issubclass(error, _UNROUTABLE))


def build(spec: WorkflowSpec) -> Analysis:
    """Read ``spec`` into the shared analysis (states, edges, indexes, reachability) and compute
    the verdicts the rules and the report share: traps, unbounded cycles and unset reads."""
    a = _read(spec)
    if a.initial is not None:
        a.components = strongly_connected_components([n for n in a.names if n in a.reach], a.out)
    a.looping, a.traps = _loops_and_traps(a)
    a.unbounded = _unbounded_cycles(a)
    a.unset_reads = _unset_reads(a)
    a.unset = {(state, f) for state, f, _ in a.unset_reads}
    return a


def _read(spec: WorkflowSpec) -> Analysis:
    """Read ``spec`` into the shared analysis: states, edges, indexes and reachability."""
    a = Analysis(spec)
    model = _attr(spec, "context")
    a.model = model
    a.model_ok = isinstance(model, type) and issubclass(model, BaseModel)
    if a.model_ok:
        a.fields = frozenset(model.model_fields)
        a.model_name = model.__name__
    for tool in _items(_attr(spec, "tools")):
        name = _attr(tool, "name")
        if isinstance(name, str):
            a.tool_names.add(name)
        else:
            a.tools_known = False

    states, names, initials = a.states, a.names, a.initials
    shared: dict[tuple[object, ...], frozenset[str]] = {}  # equal declarations share one set
    for s in _items(_attr(spec, "states")):
        if isinstance(s, StateSpec) and _good_state_name(s.name) and s.name not in states:
            n = s.name
            states[n] = s
            names.append(n)
            if s.initial:
                initials.append(n)
            if s.wait is not None:
                a.waiting.append(n)
            if not (type(s.tools) is tuple and not s.tools):
                a.with_tools.append(n)
            if s.decision:
                a.deciding.append(n)
            use = model_use(s.action)
            if use is not None:
                a.model_uses[n] = use
            if s.terminal:
                a.terminals.append(n)
                if a.failure_terminal is None and s.outcome is Outcome.FAILURE:
                    a.failure_terminal = n
            for fs, into in ((s.reads, a.reads_of), (s.writes, a.writes_of),
                             (s.optional_reads, a.optional_reads_of), (s.optional_writes, a.optional_writes_of)):
                if not (type(fs) is tuple and not fs):
                    names_in = _shared_names_in(fs, shared)
                    if names_in:
                        into[n] = names_in
            # A malformed bound is reported by its rule and counts as no bound.
            if s.max_visits is not None and is_count(s.max_visits):
                a.visit_bound[n] = s.max_visits
    a.initial = initials[0] if len(initials) == 1 else None

    exits, edges = a.exits, a.edges
    for t in _items(_attr(spec, "transitions")):
        if not isinstance(t, TransitionSpec) or isinstance(t.order, bool) or not isinstance(t.order, int):
            continue
        a.transitions.append(t)
        source, target = t.source, t.target
        src = states.get(source) if isinstance(source, str) else None
        tgt_ok = isinstance(target, str) and target in states
        if src is not None and not src.terminal:
            exits[source].append(t)
            if tgt_ok:
                edges.append(Edge(source, target, t.max_traversals if is_count(t.max_traversals)
                                  else None, EdgeKind.TRANSITION, t.name if isinstance(t.name, str) else ""))
        if src is None or not tgt_ok:
            _note_mistyped(a, source, target, names)
    for outs in exits.values():
        if len(outs) > 1:
            outs.sort(key=_order)

    seen_routes: set[tuple[str, type[BaseException]]] = set()
    for et in _items(_attr(spec, "error_transitions")):
        if not isinstance(et, ErrorTransitionSpec):
            continue
        src_ok, tgt_ok = a.known(et.source), a.known(et.target)
        _note_mistyped(a, et.source, et.target, names)
        if not (src_ok and tgt_ok and _routable(et.error)) or a.terminal(et.source):
            continue
        key = (et.source, et.error)
        if key in seen_routes:
            continue
        seen_routes.add(key)
        edges.append(Edge(et.source, et.target, et.max_traversals if is_count(et.max_traversals)
                          else None, EdgeKind.ERROR, et.name if isinstance(et.name, str) else ""))

    if a.failure_terminal is not None:
        for n in names:
            s = states[n]
            if not s.terminal and s.on_no_exit is NoExit.FAIL and not _exhaustive(exits.get(n, [])):
                edges.append(Edge(n, a.failure_terminal, None, EdgeKind.NO_EXIT, f"{n}->(no exit)"))

    out = a.out
    for e in edges:
        out[e.source].append(e)
    if a.initial is not None:
        a.reach = reachable([a.initial], out)
        if a.failure_terminal is not None:
            a.reach[a.failure_terminal] = None  # every run can end there: budgets, unrouted errors
        a.unreachable = [n for n in names if n not in a.reach]
    return a


_order = operator.attrgetter("order")


def _note_mistyped(a: Analysis, source: object, target: object, known: Sequence[str]) -> None:
    """Remember what a transition with an unknown endpoint probably meant, to spare follow-on problems."""
    src_ok, tgt_ok = a.known(source), a.known(target)
    if src_ok and not tgt_ok:
        a.dangling.add(typing.cast(str, source))
        guess = _suggest_name(target, known)
        if guess is not None:
            a.meant.add(guess)
    elif tgt_ok and not src_ok:
        a.meant.add(typing.cast(str, target))
        guess = _suggest_name(source, known)
        if guess is not None:
            a.dangling.add(guess)


def _exhaustive(outs: Sequence[TransitionSpec]) -> bool:
    return any(t.guard is None for t in outs)


# --- declarations ----------------------------------------------------------------------------------


def _check_declaration_problems(a: Analysis) -> Iterator[Problem]:
    """Problems the Workflow collected while declaring (a bad guard, a foreign state, a bad option)."""
    found = _attr(a.spec, "problems")
    if found is None or (type(found) is tuple and not found):
        return
    if not isinstance(found, (tuple, list)):
        yield Problem(ProblemCode.BAD_OPTION, f"the spec's problems are {found!r}: give a tuple of Problem")
        return
    for p in found:
        if isinstance(p, Problem):
            yield p
        else:
            yield Problem(ProblemCode.BAD_OPTION, f"the spec's problems hold {p!r}, which is not a Problem")


def _check_context(a: Analysis) -> Iterator[Problem]:
    """The context is a pydantic model that validates on assignment."""
    model = a.model
    if not a.model_ok:
        yield Problem(ProblemCode.CONTEXT_MODEL, f"the context {model!r} is not a pydantic model: declare it as a "
                      "subclass of pydantic.BaseModel")
    elif not model.model_config.get("validate_assignment", False):
        yield Problem(ProblemCode.CONTEXT_MODEL, f"context model {model.__name__} does not validate on assignment, "
                      "so an action could store a wrong type unnoticed: set model_config = "
                      "ConfigDict(validate_assignment=True) or subclass statemachine_agent.Context")


def _check_tools(a: Analysis) -> Iterator[Problem]:
    """Registered tools are Tools, uniquely named, well configured, and fall back to known tools."""
    tools = _items(_attr(a.spec, "tools"))
    seen: set[str] = set()
    reported: set[str] = set()
    for tool in tools:
        name = _attr(tool, "name")
        if not isinstance(name, str):
            yield Problem(ProblemCode.BAD_TOOL, f"{tool!r} is not a Tool: register tools with workflow.tool()")
            continue
        if name in seen and name not in reported:
            reported.add(name)
            yield Problem(ProblemCode.DUPLICATE_TOOL, f"a tool named {name!r} is registered twice: rename one of them",
                          name)
        seen.add(name)
        yield from _tool_definition_problems(tool, name)
        fallback = _attr(tool, "fallback")
        if fallback is not None and (not isinstance(fallback, str) or fallback not in a.tool_names):
            yield Problem(ProblemCode.UNKNOWN_TOOL, f"tool {name!r} falls back to {fallback!r}, which is not a "
                          f"registered tool{_suggest(fallback, a.tool_names)}", name)


def _tool_definition_problems(tool: object, name: str) -> Iterator[Problem]:
    """What the tool itself says is wrong with its options (``definition_problems()``)."""
    method = _attr(tool, "definition_problems")
    if not callable(method):
        return
    try:
        found = list(method())
    except Exception as exc:
        yield Problem(ProblemCode.BAD_TOOL, f"tool {name!r}: definition_problems() raised {type(exc).__name__}: "
                      f"{exc}", name)
        return
    for p in found:
        if isinstance(p, Problem):
            yield p
        else:
            yield Problem(ProblemCode.BAD_TOOL, f"tool {name!r}: definition_problems() gave {p!r}, which is not a "
                          "Problem", name)


def _check_state_declarations(a: Analysis) -> Iterator[Problem]:
    """Every state is a StateSpec with a non-empty string name, declared once."""
    declared = _items(_attr(a.spec, "states"))
    if len(declared) == len(a.states):
        return  # the analysis kept every entry: each is a well-named StateSpec, declared once
    seen: dict[str, None] = {}
    for s in declared:
        if not isinstance(s, StateSpec):
            yield Problem(ProblemCode.BAD_STATE, f"{s!r} is not a state declaration (StateSpec)")
        elif not _good_state_name(s.name):
            yield Problem(ProblemCode.BAD_NAME, f"state name {s.name!r} must be a non-empty string", str(s.name))
        elif s.name in seen:
            yield Problem(ProblemCode.DUPLICATE_STATE, f"state {s.name!r} is declared more than once: rename one of "
                          "them", s.name)
        else:
            seen[s.name] = None


def _check_initial(a: Analysis) -> Iterator[Problem]:
    """Exactly one initial state."""
    initials = a.initials
    if not initials:
        yield Problem(ProblemCode.NO_INITIAL, "no initial state: mark exactly one state with initial=True")
    elif len(initials) > 1:
        yield Problem(ProblemCode.SEVERAL_INITIAL, f"several initial states ({_q(initials, 'and')}): keep "
                      "initial=True on exactly one")


def _check_terminals(a: Analysis) -> Iterator[Problem]:
    """At least one terminal state, and one with outcome failure."""
    if not a.terminals:
        yield Problem(ProblemCode.NO_TERMINAL, "no terminal state: declare at least one, e.g. terminal('done'), and "
                      "one for failures, e.g. terminal('failed', outcome='failure')")
    elif a.failure_terminal is None:
        yield Problem(ProblemCode.NO_FAILURE_TERMINAL, "no terminal state with outcome 'failure': declare one, e.g. "
                      "terminal('failed', outcome='failure'); runs that exhaust a budget or hit an "
                      "unrouted error end there")


def _check_terminal_states(a: Analysis) -> Iterator[Problem]:
    """Terminals run nothing: no action, no decision, no reads or writes, a valid outcome."""
    for n in a.terminals:
        s = a.states[n]
        if s.initial:
            yield Problem(ProblemCode.INITIAL_TERMINAL, f"initial state {n!r} is terminal, so no run does anything", n)
        if not isinstance(s.outcome, Outcome) or s.outcome is Outcome.WAITING:
            yield Problem(ProblemCode.TERMINAL_OUTCOME, f"terminal state {n!r} has outcome {s.outcome!r}: use "
                          "'success' or 'failure'", n)
        if s.action is not None:
            yield Problem(ProblemCode.TERMINAL_ACTION, f"terminal state {n!r} has an action, which would never run: "
                          "move it to the state before", n)
        if s.decision:
            yield Problem(ProblemCode.TERMINAL_DECISION, f"terminal state {n!r} cannot be a decision state", n)
        if n in a.reads_of or n in a.writes_of or n in a.optional_reads_of or n in a.optional_writes_of:
            yield Problem(ProblemCode.TERMINAL_ACTION, f"terminal state {n!r} declares reads or writes but runs no "
                          "action", n)


def _check_actions(a: Analysis) -> Iterator[Problem]:
    """Non-terminal states have an action callable with the context (and the tools handle)."""
    for n, s in a.states.items():
        if s.terminal:
            continue
        if s.outcome is not None:
            yield Problem(ProblemCode.TERMINAL_OUTCOME, f"state {n!r} has an outcome but is not terminal: declare it "
                          "with terminal()", n)
        if not callable(s.action):
            yield Problem(ProblemCode.BAD_ACTION, f"state {n!r} has action {s.action!r}, which is not callable: give a "
                          "function that takes the context", n)
        elif not (_takes(s.action, 1) or _takes(s.action, 2)):
            yield Problem(ProblemCode.BAD_ACTION, f"the action of state {n!r} cannot be called with the context (and "
                          "the tools handle): give it the signature (ctx) or (ctx, tools)", n)
        else:
            yield from _state_tools(a, s)


def _state_tools(a: Analysis, s: StateSpec) -> Iterator[Problem]:
    """A state's tools exist, its action can take the handle, and it calls only what it declares."""
    n, action = s.name, s.action
    assert action is not None
    declared: tuple[str, ...] = ()
    if not (type(s.tools) is tuple and not s.tools):
        if not _is_name_list(s.tools) or isinstance(s.tools, (set, frozenset)):
            yield Problem(ProblemCode.BAD_FIELD, f"state {n!r} has tools={s.tools!r}: give a list of tool names", n)
        declared = tuple(sorted(_names_in(s.tools)))
    for t in declared:
        if a.tools_known and t not in a.tool_names:
            yield Problem(ProblemCode.UNKNOWN_TOOL, f"state {n!r} declares tool {t!r}, which is not registered"
                          f"{_suggest(t, a.tool_names)}: register it with @workflow.tool", n)
    if s.tool_deadline is not None and not (
        isinstance(s.tool_deadline, (int, float)) and not isinstance(s.tool_deadline, bool)
        and s.tool_deadline > 0
    ):
        yield Problem(ProblemCode.BAD_OPTION, f"state {n!r} has tool_deadline={s.tool_deadline!r}: give a positive "
                      "number of seconds", n)
    wants = takes_tools(action)
    if declared and not wants:
        yield Problem(ProblemCode.BAD_ACTION, f"state {n!r} declares tools but its action takes no tools handle: give "
                      "it the signature async def (ctx, tools)", n)
    if declared and wants and not inspect.iscoroutinefunction(action):
        yield Problem(ProblemCode.BAD_ACTION, f"state {n!r} calls tools, which are awaited: make its action async def",
                      n)
    if wants:
        used = declared_tool_calls(action)
        for t in sorted((used or set()) - set(declared)):
            yield Problem(ProblemCode.UNDECLARED_TOOL, f"the action of state {n!r} calls tool {t!r} but the state does "
                          f"not declare it: add {t!r} to tools=[...]", n)


MODEL_USE = "__statemachine_agent_llm__"
"""The attribute an LLM step's action carries (``statemachine_agent.llm.ModelUse``): what it writes,
which tools its model may call, and the most model calls one visit makes."""


def model_use(action: object) -> Any:
    """What an action declares of its model calls, or ``None`` (plain actions)."""
    try:
        return getattr(action, MODEL_USE, None)
    except Exception:
        return None


def _check_model_use(a: Analysis) -> Iterator[Problem]:
    """An LLM step writes a field its state declares, and its model may call only the state's tools."""
    for n, use in a.model_uses.items():
        s = a.states[n]
        writes = _names_in(s.writes) | _names_in(s.optional_writes)
        if use.write not in writes:
            yield Problem(ProblemCode.BAD_LLM_STEP, f"state {n!r} is an LLM step writing {use.write!r}, which the "
                          f"state does not declare: add {use.write!r} to its writes=[...]", n)
        for t in use.tools:
            if t not in _names_in(s.tools):
                yield Problem(ProblemCode.BAD_LLM_STEP, f"state {n!r} lets its model call tool {t!r}, which the "
                              f"state does not declare: add {t!r} to its tools=[...]", n)


def worst_case_calls(a: Analysis, steps: int) -> tuple[int, int, int]:
    """The most model calls LLM steps can make, the most decisions (each up to the run's
    ``max_policy_attempts`` policy calls), and the most tool calls the models of LLM steps can have
    run (rounds times each step's ``max_tool_calls``), in a run of at most ``steps`` steps: each
    state counts its calls per visit times its visits: one outside loops, else at most its
    ``max_visits`` and ``steps``."""
    calls = decisions = tool_calls = 0

    def visits(n: str) -> int | None:
        """How often a run may enter ``n``; ``None`` when it cannot."""
        if n not in a.reach or a.states[n].terminal:
            return None
        return min(a.visit_bound.get(n) or steps, steps) if n in a.looping else 1  # no loop: one visit at most

    for n, use in a.model_uses.items():
        times = visits(n)
        if times is not None:
            calls += times * int(use.calls_per_visit)
            tool_calls += times * int(getattr(use, "tool_calls_per_visit", 0))
    for n in a.deciding:
        times = visits(n)
        if times is not None and len(a.out.get(n, ())) > 1:
            decisions += times
    return calls, decisions, tool_calls


def _check_state_options(a: Analysis) -> Iterator[Problem]:
    """``max_visits`` is a count, ``on_no_exit`` is 'error' or 'fail', the flags are bools and the
    description is a string."""
    for n, s in a.states.items():
        if s.max_visits is not None and not is_count(s.max_visits):
            yield Problem(ProblemCode.BAD_BOUND, f"state {n!r} has max_visits={s.max_visits!r}: use a whole number of "
                          "at least 1", n)
        if not isinstance(s.on_no_exit, NoExit):
            yield Problem(ProblemCode.BAD_OPTION, f"state {n!r} has on_no_exit={s.on_no_exit!r}: use 'error' or "
                          "'fail'", n)
        for flag in ("initial", "decision"):
            value = getattr(s, flag)
            if type(value) is not bool:
                yield Problem(ProblemCode.BAD_OPTION, f"state {n!r} has {flag}={value!r}: give True or False", n)
        if not isinstance(s.description, str):
            yield Problem(ProblemCode.BAD_OPTION, f"state {n!r} has description={s.description!r}: give a string "
                          "(for people and policies)", n)


def _check_fields(a: Analysis) -> Iterator[Problem]:
    """reads, writes, optional_reads and optional_writes are lists of known fields, without overlap."""
    for n, s in a.states.items():
        for kind in ("reads", "writes", "optional_reads", "optional_writes"):
            fs = getattr(s, kind)
            if type(fs) is tuple and not fs:
                continue
            if not _is_name_list(fs):
                hint = f", e.g. {kind}=[{fs!r}]" if isinstance(fs, str) else ""
                yield Problem(ProblemCode.BAD_FIELD, f"state {n!r} {kind} {fs!r}: give a list of field names{hint}", n)
                continue
            if not a.model_ok:
                continue
            for f in fs:
                if f in a.fields:
                    continue
                hint = _suggest(f, a.fields)
                if kind in ("reads", "writes"):
                    yield Problem(ProblemCode.UNKNOWN_FIELD, f"state {n!r} {kind} {f!r}, which is not a field of "
                                  f"{a.model_name}{hint}", n)
                else:
                    yield Problem(ProblemCode.UNKNOWN_FIELD, f"state {n!r} lists {f!r} in {kind}, but {a.model_name} "
                                  f"has no such field{hint}", n)
        if n in a.optional_writes_of:
            for f in sorted(a.writes_of.get(n, _NONE) & a.optional_writes_of[n]):
                yield Problem(ProblemCode.BAD_FIELD, f"state {n!r} lists {f!r} in both writes and optional_writes: "
                              "keep it in writes if every successful visit writes it, else in optional_writes only",
                              n)
        if n not in a.optional_reads_of:
            continue
        for f in sorted(a.reads_of.get(n, _NONE) & a.optional_reads_of[n]):
            yield Problem(ProblemCode.BAD_FIELD, f"state {n!r} lists {f!r} in both reads and optional_reads: keep it "
                          "in optional_reads if the state handles it unset, else in reads only", n)


def _check_max_steps(a: Analysis) -> Iterator[Problem]:
    """A workflow-wide ``max_steps`` is a count."""
    max_steps = _attr(a.spec, "max_steps")
    if max_steps is not None and not is_count(max_steps):
        yield Problem(ProblemCode.BAD_BOUND, f"max_steps={max_steps!r}: use a whole number of at least 1")


# --- transitions -----------------------------------------------------------------------------------


def _foreign(a: Analysis) -> set[str]:
    """Names of states of other workflows used here: reported once, as foreign-state."""
    found = _attr(a.spec, "problems")
    if not isinstance(found, (tuple, list)):
        return set()
    return {p.subject for p in found if isinstance(p, Problem) and p.code == ProblemCode.FOREIGN_STATE}


def _unknown_endpoint(a: Analysis, t: object, what: str, name: object) -> Iterator[Problem]:
    if not a.known(name) and not (isinstance(name, str) and name in _foreign(a)):
        yield Problem(ProblemCode.UNKNOWN_STATE, f"{_tname(t)} has unknown {what} state {name!r}"
                      f"{_suggest(name, a.names)}", _subject(t))


def _check_transitions(a: Analysis) -> Iterator[Problem]:
    """Transitions are well formed: known endpoints, counts, callable guards, no exit from a terminal."""
    faults: dict[int, tuple[list[object], list[str]]] = {}  # a guard's own faults, by id (guards are shared)
    for t in _items(_attr(a.spec, "transitions")):
        if not isinstance(t, TransitionSpec):
            yield Problem(ProblemCode.BAD_TRANSITION, f"{t!r} is not a transition declaration (TransitionSpec)")
            continue
        if isinstance(t.order, bool) or not isinstance(t.order, int):
            yield Problem(ProblemCode.BAD_TRANSITION, f"{_tname(t)} has order={t.order!r}: use a whole number "
                          "(declare transitions with workflow.transition())", _subject(t))
            continue
        src_ok, tgt_ok = a.known(t.source), a.known(t.target)
        if not src_ok:
            yield from _unknown_endpoint(a, t, "source", t.source)
        if not tgt_ok:
            yield from _unknown_endpoint(a, t, "target", t.target)
        if t.max_traversals is not None and not is_count(t.max_traversals):
            yield Problem(ProblemCode.BAD_BOUND, f"{_tname(t)} has max_traversals={t.max_traversals!r}: use a whole "
                          "number of at least 1", _subject(t))
        if t.guard is not None:
            yield from _guard_problems(a, t, faults)
        if src_ok and tgt_ok and a.terminal(t.source):
            yield Problem(ProblemCode.TERMINAL_EXIT, f"terminal state {t.source!r} has an outgoing transition to "
                          f"{t.target!r}: a run ends on entering a terminal; remove the transition or make "
                          "the state non-terminal", t.source)


def _guard_faults(a: Analysis, g: Guard[Any]) -> tuple[list[object], list[str]]:
    """The names of a guard's leaves that cannot take the context, and the fields it reads that the
    context lacks."""
    uncallable: list[object] = [leaf.name for leaf in g.leaves() if not callable(leaf.fn) or not _takes(leaf.fn, 1)]
    return uncallable, sorted(_names_in(g.reads) - a.fields) if a.model_ok else []


def _guard_problems(a: Analysis, t: TransitionSpec,
                    faults: dict[int, tuple[list[object], list[str]]]) -> Iterator[Problem]:
    if not isinstance(t.guard, Guard):
        yield Problem(ProblemCode.BAD_GUARD, f"{_tname(t)} has guard {t.guard!r}, which is not a Guard", _subject(t))
    else:
        found = faults.get(id(t.guard))
        if found is None:
            found = faults[id(t.guard)] = _guard_faults(a, t.guard)
        uncallable, unknown = found
        for name in uncallable:
            yield Problem(ProblemCode.BAD_GUARD, f"guard {name!r} on {_tname(t)} cannot be called with the "
                          "context as its only argument: give it the signature (ctx) -> bool", _subject(t))
        for f in unknown:
            yield Problem(ProblemCode.UNKNOWN_FIELD, f"guard {t.guard.name!r} on {_tname(t)} reads {f!r}, which is "
                          f"not a field of {a.model_name}{_suggest(f, a.fields)}", _subject(t))
    if t.default:
        yield Problem(ProblemCode.GUARDED_DEFAULT, f"{_tname(t)} is the default (else) exit but has guard "
                      f"{getattr(t.guard, 'name', t.guard)!r}: drop the guard or default=True", _subject(t))


def _check_error_transitions(a: Analysis) -> Iterator[Problem]:
    """Error transitions route subclasses of Exception between known states, once per source and type."""
    seen: dict[tuple[str, type[BaseException]], str] = {}
    for et in _items(_attr(a.spec, "error_transitions")):
        if not isinstance(et, ErrorTransitionSpec):
            yield Problem(ProblemCode.BAD_TRANSITION, f"{et!r} is not an error transition declaration "
                          "(ErrorTransitionSpec)")
            continue
        label = _tname(et)
        err_name = getattr(et.error, "__name__", repr(et.error))
        yield from _unknown_endpoint(a, et, "source", et.source)
        yield from _unknown_endpoint(a, et, "target", et.target)
        ok = a.known(et.source) and a.known(et.target)
        if not (isinstance(et.error, type) and issubclass(et.error, BaseException)):
            yield Problem(ProblemCode.BAD_ERROR_TYPE, f"{label} routes {et.error!r}, which is not an exception class: "
                          "give a subclass of Exception", _subject(et))
            ok = False
        elif not _routable(et.error):
            yield Problem(ProblemCode.BAD_ERROR_TYPE, f"{label} routes {err_name}, which must always propagate "
                          "(cancellation and interruption are never routed): route a subclass of "
                          "Exception instead", _subject(et))
            ok = False
        if et.max_traversals is not None and not is_count(et.max_traversals):
            yield Problem(ProblemCode.BAD_BOUND, f"{label} has max_traversals={et.max_traversals!r}: use a whole "
                          "number of at least 1", _subject(et))
        if not ok:
            continue
        if a.terminal(et.source):
            yield Problem(ProblemCode.TERMINAL_EXIT, f"terminal state {et.source!r} has an error transition: "
                          "terminals run no action", et.source)
            continue
        key = (et.source, et.error)
        if key in seen:
            yield Problem(ProblemCode.DUPLICATE_ERROR_ROUTE, f"state {et.source!r} routes {err_name} twice (to "
                          f"{seen[key]!r} and {et.target!r}); the second never fires: keep one",
                          _subject(et))
            continue
        seen[key] = et.target


def _check_unknown_outcomes(a: Analysis) -> Iterator[Problem]:
    """A state that calls an ``at_most_once`` tool routes EffectOutcomeUnknown (or the tool reconciles):
    after a crash such a call is never run again, and the run must have somewhere to go."""
    tools = {_attr(t, "name"): t for t in _items(_attr(a.spec, "tools"))}
    routes: dict[str, list[type[BaseException]]] = defaultdict(list)
    for et in _items(_attr(a.spec, "error_transitions")):
        if isinstance(et, ErrorTransitionSpec) and isinstance(et.error, type):
            routes[et.source].append(et.error)
    for n in a.with_tools:
        s = a.states[n]
        if s.terminal or not _is_name_list(s.tools):
            continue
        if any(issubclass(EffectOutcomeUnknown, e) for e in routes.get(n, ())):
            continue
        for t in sorted(_names_in(s.tools)):
            tool = tools.get(t)
            if _attr(tool, "effect") is Effect.AT_MOST_ONCE and _attr(tool, "reconcile") is None:
                yield Problem(ProblemCode.UNROUTED_UNKNOWN_OUTCOME, f"state {n!r} calls tool {t!r} (effect "
                              "'at_most_once'): a call a crash interrupts is never run again and raises "
                              f"EffectOutcomeUnknown, which no error transition of {n!r} routes: add "
                              f"on_error({n!r}, EffectOutcomeUnknown, ...), or give the tool reconcile= to look "
                              "the outcome up", n)


def _check_waits(a: Analysis) -> Iterator[Problem]:
    """A wait state names its event, a pydantic payload model, the one field the payload goes to,
    and a positive timeout together with where to go when it passes."""
    for n in a.waiting:
        s = a.states[n]
        w = s.wait
        if w is None:
            continue  # (never: only states with a wait are listed)
        if not isinstance(w.event, str) or not w.event.strip():
            yield Problem(ProblemCode.BAD_WAIT, f"wait state {n!r} has event={w.event!r}: give the event's name, a "
                          "non-empty string", n)
        if not (isinstance(w.payload, type) and issubclass(w.payload, BaseModel)):
            yield Problem(ProblemCode.BAD_WAIT, f"wait state {n!r} has payload={w.payload!r}: give a pydantic model "
                          "class (the delivered payload is validated by it)", n)
        if not _is_name_list(s.writes) or len(_names_in(s.writes)) != 1:
            yield Problem(ProblemCode.BAD_WAIT, f"wait state {n!r} has writes={s.writes!r}: name exactly one field, "
                          "which receives the payload", n)
        if w.timeout is not None and not (isinstance(w.timeout, (int, float)) and not isinstance(w.timeout, bool)
                                          and 0 < w.timeout < float("inf")):
            yield Problem(ProblemCode.BAD_WAIT, f"wait state {n!r} has timeout={w.timeout!r}: give a positive number "
                          "of seconds, or None to wait for ever", n)
        if (w.timeout is None) != (w.on_timeout is None):
            yield Problem(ProblemCode.BAD_WAIT, f"wait state {n!r} has "
                          + ("a timeout but no on_timeout=: say where the run goes when it passes"
                             if w.on_timeout is None else "on_timeout= but no timeout=: give both, or neither"), n)
        if s.decision or s.tools:
            yield Problem(ProblemCode.BAD_WAIT, f"wait state {n!r} cannot be a decision state or call tools: it only "
                          "receives its event; decide in the state after it", n)


def _check_transition_names(a: Analysis) -> Iterator[Problem]:
    """Transition names are valid LLM function names, unique across transitions and error routes."""
    first: dict[str, object] = {}  # each name's first transition
    again: dict[str, list[object]] = {}  # every transition of a name given more than once
    everything = [*_items(_attr(a.spec, "transitions")), *_items(_attr(a.spec, "error_transitions"))]
    for t in everything:
        if not isinstance(t, (TransitionSpec, ErrorTransitionSpec)):
            continue
        name = t.name
        if not isinstance(name, str) or not TRANSITION_NAME.fullmatch(name):
            where = f"{t.source}-[{getattr(t.error, '__name__', t.error)}]->{t.target}" \
                if isinstance(t, ErrorTransitionSpec) else f"{t.source}->{t.target}"
            kind = "error transition" if isinstance(t, ErrorTransitionSpec) else "transition"
            yield Problem(ProblemCode.BAD_NAME, f"{kind} {where} has name {name!r}: use 1 to 64 letters, digits, '_' "
                          "and '-' (policies see it as an LLM function name)",
                          name if isinstance(name, str) else where)
            continue
        if name not in first:
            first[name] = t
        elif name in again:
            again[name].append(t)
        else:
            again[name] = [first[name], t]
    if not again:
        return
    for name in first:  # in the order the names first appear
        ts = again.get(name)
        if ts:
            arrows = [_tname(t).split(" (", 1)[1].rstrip(")") for t in ts]
            yield Problem(ProblemCode.DUPLICATE_NAME, f"{len(ts)} transitions are named {name!r} ({', '.join(arrows)}):"
                          " give each a unique name=...", name)


def _check_exits(a: Analysis) -> Iterator[Problem]:
    """Exits: no dead ones, described in decision states, and always one way out."""
    for n, s in a.states.items():
        if s.terminal:
            continue
        outs = a.exits.get(n, [])
        if len(outs) > 1:  # one exit alone is never dead
            yield from _dead_exits(n, s, outs)
        if s.decision:
            for t in outs:
                if not (isinstance(t.description, str) and t.description.strip()):
                    yield Problem(ProblemCode.MISSING_DESCRIPTION, f"{_tname(t)} leaves decision state {n!r} without a "
                                  "description: add description=... (the policy reads it to choose)",
                                  _subject(t))
        if s.on_no_exit is NoExit.FAIL:
            continue  # explicit: no enabled exit ends the run in failure
        if not outs:
            if n in a.dangling:
                continue  # an exit was declared from a mistyped source: reported as unknown-state
            yield Problem(ProblemCode.NO_EXIT, f"state {n!r} has no exits: add a transition from it, or "
                          "on_no_exit='fail' if it should always end the run in failure", n)
        elif not _exhaustive(outs):
            yield Problem(ProblemCode.NO_EXIT, f"every exit of state {n!r} is guarded and none is a default, so a run "
                          "can find no way out: add default=True to a fallback transition, or "
                          "on_no_exit='fail' to end the run in the failure terminal then", n)


def _dead_exits(n: str, s: StateSpec, outs: Sequence[TransitionSpec]) -> Iterator[Problem]:
    defaults = [t for t in outs if t.default]
    if len(defaults) > 1:
        yield Problem(ProblemCode.DEAD_TRANSITION, f"state {n!r} has {len(defaults)} default exits "
                      f"({_q((t.name for t in defaults), 'and')}); only the first can ever fire: keep one", n)
    if s.decision:
        return  # the policy picks among all enabled exits
    blocker = next((t for t in outs if t.guard is None and not t.default), None)
    if blocker is None:
        return
    dead = [t for t in outs if t is not blocker and (t.order > blocker.order or t.default)]
    if dead:
        yield Problem(ProblemCode.DEAD_TRANSITION, f"state {n!r}: the unguarded transition {blocker.name!r} to "
                      f"{blocker.target!r} always fires, so its exits {_q(t.name for t in dead)} never can: "
                      "guard it, move it last as default=True, or remove the dead ones", n)


# --- the graph -------------------------------------------------------------------------------------


def _check_reachability(a: Analysis) -> Iterator[Problem]:
    """Every state can be entered from the initial state."""
    if a.initial is None or not a.unreachable or a.terminal(a.initial):
        return  # an initial terminal (reported as such) reaches nothing
    # A state a mistyped transition meant to reach is not reported: fixing the typo reaches it.
    meant = reachable(a.meant, a.out) if a.meant else set()
    for n in a.unreachable:
        if n not in meant:
            yield Problem(ProblemCode.UNREACHABLE_STATE, f"state {n!r} cannot be reached from the initial state "
                          f"{a.initial!r}: add a transition into it, or remove it", n)


def _into(a: Analysis) -> dict[str, list[Edge]]:
    """The edges into each state, in the order of ``a.edges``."""
    into: dict[str, list[Edge]] = defaultdict(list)
    for e in a.edges:
        into[e.target].append(e)
    return into


def _reaching(into: dict[str, list[Edge]], goals: Iterable[str]) -> set[str]:
    """Every state from which one of ``goals`` can be reached (``goals`` included)."""
    seen = set(goals)
    todo = list(seen)
    while todo:
        for e in into.get(todo.pop(), ()):
            if e.source not in seen:
                seen.add(e.source)
                todo.append(e.source)
    return seen


def _loops_and_traps(a: Analysis) -> tuple[dict[str, None], set[str]]:
    """The reachable states on a cycle, and the traps (reachable states from which no terminal
    state can be reached), from one walk over the components, sinks first: a component can finish
    when one of its states is terminal or leads to a state that can."""
    looping: dict[str, None] = {}
    can_finish: dict[str, None] = {}
    out, terminal = a.out, dict.fromkeys(a.terminals)
    for comp in a.components:
        if len(comp) == 1:
            v = comp[0]
            finishes = v in terminal
            for e in out.get(v, ()):
                if e.target == v:
                    looping[v] = None
                elif e.target in can_finish:
                    finishes = True
            if finishes:
                can_finish[v] = None
            continue
        looping.update(dict.fromkeys(comp))
        if any(v in terminal or any(e.target in can_finish for e in out.get(v, ())) for v in comp):
            can_finish.update(dict.fromkeys(comp))
    return looping, {n for n in a.reach if n not in can_finish}


def _check_traps(a: Analysis) -> Iterator[Problem]:
    """From every reachable state some terminal state can be reached."""
    if not a.traps or not a.terminals:
        return  # with no terminal at all, no-terminal says it all
    # A state whose exit has an unknown target may well finish once the typo is fixed.
    into = _into(a)
    excused = _reaching(into, a.dangling) if a.dangling else set()
    trap_out = {n: [e for e in a.out.get(n, ()) if e.target in a.traps] for n in a.traps}
    for comp in strongly_connected_components([n for n in a.names if n in a.traps], trap_out):
        head = min(comp)
        if head in excused:
            continue
        members = set(comp)
        if len(comp) == 1 and any(e.target == head for e in trap_out[head]):
            yield Problem(ProblemCode.TRAP_CYCLE, f"state {head!r} loops on itself with no way out to a terminal "
                          "state: add an exit from it to a terminal state", head)
        elif len(comp) > 1:
            cycle = _cycle(a, into, head, _within(members))
            yield Problem(ProblemCode.TRAP_CYCLE, f"states {_q(sorted(comp), 'and')} form a trap: the cycle "
                          f"{_fmt_edges(head, cycle)} has no way out to a terminal state: add an exit to a "
                          "terminal from one of them", head)
        elif a.out.get(head):  # a state with no exit at all is reported by no-exit
            yield Problem(ProblemCode.TRAP_STATE, f"state {head!r} leads to no terminal state: add a transition from "
                          "it to one (or to a state that reaches one)", head)


def _free_within(members: frozenset[str]) -> Callable[[Edge], bool]:
    """Edges with no traversal bound into ``members`` (a group of states with no visit bound)."""
    return lambda e: e.bound is None and e.target in members


def _within(members: set[str]) -> Callable[[Edge], bool]:
    return lambda e: e.target in members


def _cycle(a: Analysis, into: dict[str, list[Edge]], head: str, keep: Callable[[Edge], bool]) -> list[Edge]:
    """A shortest cycle through ``head`` along the edges ``keep`` accepts (``into``: see :func:`_into`)."""
    via = bfs_edges(head, lambda v: (e for e in a.out.get(v, ()) if keep(e)), lambda e: e.target)
    depth = {v: i for i, v in enumerate(via)}  # breadth-first order: shallower first
    back = min((e for e in into.get(head, ()) if keep(e) and e.source in via),
               key=lambda e: depth[e.source])
    return [*edge_path(via, back.source, lambda x: x.source), back]


def _unbounded_cycles(a: Analysis) -> list[frozenset[str]]:
    """The strongly connected groups of reachable non-terminal states with no visit bound, joined by
    transitions with no traversal bound, that loop: each a way to run forever."""
    if not any(a.visit_bound.get(n) is None for n in a.looping):
        return []  # every loop passes a bounded state (terminals are on none: they have no exits)
    free = [n for n, s in a.states.items() if not s.terminal and n in a.reach and n not in a.visit_bound]
    free_set = set(free)
    free_out = {v: [e for e in a.out.get(v, ()) if e.bound is None and e.target in free_set] for v in free}
    return [frozenset(comp) for comp in strongly_connected_components(free, free_out)
            if len(comp) > 1 or any(e.target == comp[0] for e in free_out[comp[0]])]


def _check_unbounded_cycles(a: Analysis) -> Iterator[Problem]:
    """Every cycle passes a bounded state or a bounded transition."""
    into: dict[str, list[Edge]] | None = None
    for comp in a.unbounded:
        head = min(comp)
        if len(comp) == 1:
            loops = [e.label for e in a.out.get(head, ()) if e.bound is None and e.target == head]
            yield Problem(ProblemCode.UNBOUNDED_CYCLE, f"state {head!r} loops on itself with no bound, so a run could "
                          f"loop forever: give it max_visits=N or its transition {_q(loops)} "
                          "max_traversals=N", head)
            continue
        into = into if into is not None else _into(a)
        cycle = _cycle(a, into, head, _free_within(comp))
        yield Problem(ProblemCode.UNBOUNDED_CYCLE, f"the cycle {_fmt_edges(head, cycle)} has no bound, so a run could "
                      f"loop forever: give one of its states max_visits=N (e.g. {head!r}) or one of its "
                      "transitions max_traversals=N", head)


# --- the context: definite assignment --------------------------------------------------------------


def _unset_reads(a: Analysis) -> list[tuple[str, str, TransitionSpec | None]]:
    """Each read of a field that some path to the reader leaves unwritten: ``(state, field, None)``
    for a state's own read, ``(state, field, transition)`` for a guard on one of its exits (a
    must-analysis over bitsets)."""
    if not a.model_ok or a.initial is None:
        return []
    at_start = fields_set_at_start(a.model)
    # Only a field something reads and no run starts with can be read unset: one bit each.
    own: list[tuple[str, list[str]]] = []  # (state, the fields it must find written), in order
    by_reads: dict[tuple[frozenset[str], frozenset[str]], list[str]] = {}  # shared by equal declarations
    for n, reads in a.reads_of.items():  # in declaration order
        if n in a.reach and not a.states[n].terminal:
            key = (reads, a.optional_reads_of.get(n, _NONE))
            needed = by_reads.get(key)
            if needed is None:
                needed = by_reads[key] = sorted(((reads - key[1]) & a.fields) - at_start)
            if needed:
                own.append((n, needed))
    by_guard: dict[int, list[str]] = {}  # id(guard) -> the fields it reads that no run starts with
    guarded: list[tuple[TransitionSpec, list[str]]] = []
    for t in a.transitions:
        g = t.guard
        if not isinstance(g, Guard):
            continue
        guard_reads = by_guard.get(id(g))
        if guard_reads is None:
            guard_reads = by_guard[id(g)] = sorted((_names_in(g.reads) & a.fields) - at_start)
        if guard_reads and a.known(t.source) and a.known(t.target) and not a.terminal(t.source):
            guarded.append((t, guard_reads))
    candidates = {f for _, fs in own for f in fs}
    candidates.update(f for _, fs in guarded for f in fs)
    if not candidates:
        return []
    bit = {f: 1 << i for i, f in enumerate(sorted(candidates))}

    def mask(fs: Iterable[str]) -> int:
        m = 0
        for f in fs:
            m |= bit.get(f, 0)
        return m

    written: dict[str, int] = {}
    for n, fs in a.writes_of.items():
        m = mask(fs)
        if m:
            written[n] = m
    into = _definitely_set(a, mask(at_start), written)

    readers: list[tuple[str, str, TransitionSpec | None]] = []  # (state, field, guarded transition)
    for n, needed in own:
        if n in into:
            have = into[n]
            readers.extend((n, f, None) for f in needed if not have & bit[f])
    for t, needed in guarded:
        if t.source in into:
            have = into[t.source] | written.get(t.source, 0)
            readers.extend((t.source, f, t) for f in needed if not have & bit[f])
    return readers


def _check_unset_reads(a: Analysis) -> Iterator[Problem]:
    """Every field read is written on every path to the reader."""
    if not a.unset_reads:
        return
    start = typing.cast(str, a.initial)
    witnesses: dict[str, dict[str, Edge | None]] = {}
    for state, f, guarded_by in a.unset_reads:
        if f not in witnesses:
            # One shortest-path tree per field, over the edges that leave it unwritten.
            witnesses[f] = bfs_edges(start, _unwritten(a, f), lambda e: e.target)
        path = edge_path(witnesses[f], state, lambda e: e.source)
        if guarded_by is None:
            yield Problem(ProblemCode.UNSET_READ, _unset_message(a, f"state {state!r}", state, f, path), state)
        else:
            t = guarded_by
            step = Edge(t.source, t.target, None, EdgeKind.TRANSITION, t.name)
            reader = f"guard {getattr(t.guard, 'name', t.guard)!r} on {_tname(t)}"
            yield Problem(ProblemCode.UNSET_READ, _unset_message(a, reader, None, f, [*path, step]), _subject(t))


def _unwritten(a: Analysis, f: str) -> Callable[[str], Iterator[Edge]]:
    """The edges out of a state along which ``f`` stays unwritten."""
    def out(v: str) -> Iterator[Edge]:
        written = f in a.writes_of.get(v, _NONE)
        return (e for e in a.out.get(v, ()) if e.kind is EdgeKind.ERROR or not written)
    return out


def _definitely_set(a: Analysis, at_start: int, written: dict[str, int],
                    start: str | None = None) -> dict[str, int]:
    """For each reachable state, the fields (as a bitset) written on every path into it.

    A worklist over the edges: a state's set only shrinks, at most once per field, so the work is
    linear in the edges times the fields. An error edge carries no writes of its source. ``start``
    (default: the initial state) is where the walk begins, with ``at_start`` written.
    """
    first = start if start is not None else a.initial
    assert first is not None
    into: dict[str, int] = {first: at_start}
    todo = deque([first])
    queued = {first: None}  # dicts: a fifth of a set's memory
    out = a.out
    error = EdgeKind.ERROR
    while todo:
        u = todo.popleft()
        del queued[u]
        have = into[u]
        carried = have | written.get(u, 0)
        for e in out.get(u, ()):
            v = e.target
            if v == first:
                continue  # the empty path: only what is set at the start
            value = have if e.kind is error else carried
            old = into.get(v)
            new = value if old is None else old & value
            if new != old:
                into[v] = new
                if v not in queued:
                    queued[v] = None
                    todo.append(v)
    return into


def _unset_message(a: Analysis, reader: str, state: str | None, f: str, path: list[Edge]) -> str:
    """What reads ``f`` unset, along which path, and the fixes that make sense for the field."""
    start = typing.cast(str, a.initial)
    info = a.model.model_fields[f]
    unset_default = not info.is_required() and is_unset(info.default)
    none_ok = _allows_none(info.annotation)
    writes = a.writes_of
    discarded = [e.source for e in path if e.kind is EdgeKind.ERROR and f in writes.get(e.source, _NONE)]
    before = [start, *(e.target for e in path)][:-1]
    candidates = list(dict.fromkeys(p for p in before if f not in writes.get(p, _NONE)))
    fixes = []
    if candidates:
        shown = _q(candidates) if len(candidates) <= 6 else f"one of the {len(candidates)} states on it"
        fixes.append(f"write it in {shown}")
    if not unset_default or not candidates:
        if info.is_required():
            fixes.append("make its type exclude None so the caller must supply it")
        else:
            fixes += ["give it a default", "make it a required input"]
    if state is not None and not unset_default and (none_ok or not info.is_required()):
        fixes.append(f"declare it in optional_reads=[{f!r}] of state {state!r} if the state handles None")
    joined = fixes[0] if len(fixes) == 1 else f"{', '.join(fixes[:-1])}, or {fixes[-1]}"
    note = (f" (an error transition discards the writes of {_q(discarded, 'and')}: route that error "
            "elsewhere, or write the field before the error can happen)") if discarded else ""
    if not path:
        return (f"{reader} reads {f!r}, which has no value when a run starts ({start!r} is the initial "
                f"state): {joined}")
    return f"{reader} reads {f!r}, but the path {_fmt_edges(start, path)} never writes it{note}: {joined}"


RULES: tuple[Rule, ...] = (
    _check_declaration_problems,
    _check_context,
    _check_tools,
    _check_state_declarations,
    _check_initial,
    _check_terminals,
    _check_terminal_states,
    _check_actions,
    _check_state_options,
    _check_fields,
    _check_max_steps,
    _check_transitions,
    _check_error_transitions,
    _check_transition_names,
    _check_exits,
    _check_reachability,
    _check_traps,
    _check_unbounded_cycles,
    _check_unset_reads,
    _check_unknown_outcomes,
    _check_waits,
    _check_model_use,
)
"""Every rule, in the order their problems are reported."""


# --- the worst-case number of steps ----------------------------------------------------------------

_EXACT_PAIRS = 16
"""Entry and exit combinations a loop is weighed for one by one; beyond, one merged (coarser) weighing."""


def worst_case_steps(a: Analysis) -> int:
    """A sound upper bound on the actions any run executes.

    A run passes through the strongly connected components of the graph in topological order,
    entering each at most once, so the bound is the heaviest chain of components, computed per
    state a run may enter a component by (``most[v]``: the most steps of a run from entering
    ``v``). A component without a loop weighs one step. A looping one is weighed per entry state
    and per way of ending there (stopping inside, or leaving from a given exit state), by visit
    caps tightened with flow conservation; see :class:`_LoopWeigher`.
    """
    assert a.initial is not None
    out, terminal = a.out, dict.fromkeys(a.terminals)
    into: dict[str, list[Edge]] | None = None
    most: dict[str, int] = {}
    for comp in a.components:  # sinks first
        first = comp[0]
        if first in terminal:
            most[first] = 0
            continue
        if len(comp) == 1:
            rest = 0  # the most steps after leaving
            loops: list[Edge] = []
            for e in out.get(first, ()):
                if e.target == first:
                    loops.append(e)
                elif most[e.target] > rest:
                    rest = most[e.target]
            most[first] = rest + (_weigh_alone(a.visit_bound.get(first), loops) if loops else 1)
            continue
        members = dict.fromkeys(comp)
        into = into if into is not None else _into(a)
        inner_in: dict[str, list[Edge]] = defaultdict(list)
        inner_out: dict[str, list[Edge]] = defaultdict(list)
        after: dict[str, int] = {}  # exit state -> most steps after leaving from it
        entries = [a.initial] if a.initial in members else []
        for v in comp:
            for e in out.get(v, ()):
                if e.target in members:
                    inner_out[v].append(e)
                    inner_in[e.target].append(e)
                elif e.target in most:
                    after[v] = max(after.get(v, 0), most[e.target])
            if v != a.initial and any(e.source not in members and e.source in a.reach
                                      for e in into.get(v, ())):
                entries.append(v)
        after = {v: rest for v, rest in after.items() if rest > 0}  # else stopping inside weighs more
        weigh = _LoopWeigher(a, comp, inner_in, inner_out)
        if len(entries) * (1 + len(after)) <= _EXACT_PAIRS:
            for x in entries:
                one = frozenset([x])
                most[x] = max([weigh(one, None), *(weigh(one, y) + rest for y, rest in after.items())])
        else:
            coarse = weigh(frozenset(entries), None) + max(after.values(), default=0)
            most.update(dict.fromkeys(entries, coarse))
    return most[a.initial]


def _weigh_alone(bound: int | None, loops: Sequence[Edge]) -> int:
    """What :class:`_LoopWeigher` finds for a component of one state with edges ``loops`` to itself,
    without building it: the run enters there once, and stopping there or leaving from there weigh
    the same. The most visits are its ``max_visits`` (or one plus its loops' ``max_traversals``),
    tightened by flow as there: a loop is taken at most the visits less one."""
    # A state with no bound has only bounded loops: unbounded cycles are rejected before.
    cap = 1 + sum(typing.cast(int, e.bound) for e in loops) if bound is None else bound
    for _ in range(64):  # as the weigher's budget; it settles in two rounds
        c = cap - 1
        new = min(cap, 1 + sum(max(0, c if e.bound is None else min(e.bound, c)) for e in loops))
        if new >= cap:
            break
        cap = new
    return cap


class _LoopWeigher:
    """Weighs one looping component: the most visits of its states a run can make inside it."""

    def __init__(self, a: Analysis, comp: list[str], inner_in: dict[str, list[Edge]],
                 inner_out: dict[str, list[Edge]]) -> None:
        self.comp = comp
        self.bound = {v: a.visit_bound.get(v) for v in comp}
        self.inner_in = inner_in
        self.inner_out = inner_out
        free = [v for v in comp if self.bound[v] is None]
        free_succ = {v: [e.target for e in inner_out[v] if e.bound is None and self.bound[e.target] is None]
                     for v in free}
        order = topological_order(free, free_succ)
        assert order is not None, "unbounded cycles are rejected before the bound is computed"
        self.order = order
        self.segments, self.most_free = self._by_segments(free_succ)

    def _by_segments(self, free_succ: dict[str, list[str]]) -> tuple[int, int]:
        """A bound for the whole component, whatever the entry and the end, from its bounded parts.

        Cut a run inside the component before each visit of a bounded state and before each step
        along a bounded edge into a free state: what lies between two cuts is a path through free
        states and free edges (which form no cycle), after the bounded state that began it, if any.
        So the visits are at most ``S * (1 + L) + E * L``, plus ``L`` when the run enters at a free
        state (the stretch before the first cut), with ``S`` the bounded states' caps summed, ``E``
        those bounded edges' caps summed and ``L`` the most free states on a free path. Tighter than
        the per-state caps where many loops share one bounded state (a hub). Returns the sum
        without the entry's stretch, and ``L``.
        """
        longest: dict[str, int] = {}
        for v in reversed(self.order):
            longest[v] = 1 + max((longest[w] for w in free_succ[v]), default=0)
        most_free = max(longest.values(), default=0)
        states = sum(b for b in self.bound.values() if b is not None)
        edges = sum(e.bound for es in self.inner_out.values() for e in es
                    if e.bound is not None and self.bound[e.target] is None)
        return states * (1 + most_free) + edges * most_free, most_free

    def __call__(self, entries: frozenset[str], last: str | None) -> int:
        """Caps on each state's visits, entering at ``entries``, ending at ``last`` (``None``: anywhere).

        Sound because every run satisfies what is tightened here: a state's visits are its entries
        (one if it is the run's entry state) plus the inner edges taken into it, and its exits (one
        if the run ends or leaves there) plus the inner edges taken out of it; an edge is taken at
        most its ``max_traversals``, at most as often as its source is visited (less one if the run
        leaves from there) and as its target (less one if the run entered there). With several
        entries at once (a coarse weighing) the "less one"s are dropped.
        """
        single = len(entries) == 1
        cap: dict[str, int] = {v: b for v, b in self.bound.items() if b is not None}

        def through(e: Edge) -> int:
            c = min(cap[e.source] - (e.source == last), cap[e.target] - (single and e.target in entries))
            return max(0, c if e.bound is None else min(e.bound, c))

        for v in self.order:  # the free states, in topological order of the free edges
            total = int(v in entries)
            for e in self.inner_in[v]:
                total += e.bound if e.bound is not None else cap[e.source]
            cap[v] = total
        todo = deque(self.comp)
        queued = dict.fromkeys(self.comp)
        budget = 64 * len(self.comp)
        while todo and budget > 0:
            budget -= 1
            v = todo.popleft()
            del queued[v]
            inflow = (v in entries) + sum(through(e) for e in self.inner_in[v])
            outflow = (last is None or v == last) + sum(through(e) for e in self.inner_out[v])
            new = min(cap[v], inflow, outflow)
            if new < cap[v]:
                cap[v] = new
                for w in itertools.chain((e.source for e in self.inner_in[v]),
                                         (e.target for e in self.inner_out[v])):
                    if w not in queued:
                        queued[w] = None
                        todo.append(w)
        free_entry = any(self.bound[x] is None for x in entries)
        return min(sum(cap.values()), self.segments + self.most_free * free_entry)


def unset_reads_from(spec: WorkflowSpec, state: str, written: Iterable[str]) -> list[tuple[str, str]]:
    """``(state, field)``: the reads a run resumed in ``state`` with ``written`` set may make of
    fields no step wrote first. The checker's unset-read analysis, started from a stored run's
    state instead of the initial one: what resuming under a changed workflow must not break."""
    a = _read(spec)
    if not a.model_ok or state not in a.states:
        return []
    bit = {f: 1 << i for i, f in enumerate(sorted(a.fields))}

    def mask(fs: Iterable[str]) -> int:
        m = 0
        for f in fs:
            m |= bit.get(f, 0)
        return m

    into = _definitely_set(a, mask(written), {n: mask(fs) for n, fs in a.writes_of.items()}, start=state)
    return [(n, f) for n in a.names if n in into and not a.terminal(n)
            for f in sorted((a.reads_of.get(n, _NONE) - a.optional_reads_of.get(n, _NONE)) & a.fields)
            if not into[n] & bit[f]]
