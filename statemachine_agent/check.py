"""The checker: proves a workflow spec safe before it runs, or lists every problem at once."""

from __future__ import annotations

import difflib
import inspect
import itertools
import types
import typing
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ._graph import bfs_path, reachable, strongly_connected_components, topological_order
from .context import is_unset
from .errors import DefinitionError, Problem
from .guards import Guard
from .spec import ErrorTransitionSpec, NoExit, Outcome, StateSpec, TransitionSpec, WorkflowSpec
from .tools import declared_tool_calls

__all__ = ["CheckReport", "analyze", "check", "fields_set_at_start"]

# Exceptions that must propagate: routing them would swallow cancellation or interruption.
_UNROUTABLE: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit, GeneratorExit)


@dataclass(frozen=True, slots=True)
class Edge:
    """An edge of the checked graph: a declared transition, an error transition, or an implicit fail."""

    source: str
    target: str
    bound: int | None
    kind: str
    """``transition``, ``error`` (the action's writes are not applied) or ``no-exit`` (implicit fail)."""
    label: str = ""


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What the checker found: the verdicts, the bound, and every problem."""

    workflow: str
    problems: tuple[Problem, ...]
    reachable: frozenset[str] = frozenset()
    """States a run can enter."""
    unreachable: frozenset[str] = frozenset()
    traps: frozenset[str] = frozenset()
    """Reachable non-terminal states from which no terminal state can be reached."""
    unbounded_cycles: tuple[frozenset[str], ...] = ()
    """Groups of states that loop with no bound (strongly connected, once bounds are removed)."""
    unset_reads: frozenset[tuple[str, str]] = frozenset()
    """``(state, field)`` pairs where the state may read a field no path has written."""
    worst_case_steps: int | None = None
    """An upper bound on the steps (actions run) of any run; ``None`` when some loop is unbounded."""
    graph_bound: int | None = None
    """The bound from the graph alone, before the workflow-wide ``max_steps`` cap."""
    failure_terminal: str | None = None
    """Where runs that exhaust a budget or hit an unrouted error end."""
    edges: tuple[Edge, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        """No problem was found."""
        return not self.problems

    def raise_for_problems(self) -> None:
        """Raise :class:`DefinitionError` listing every problem, if there is any."""
        if self.problems:
            raise DefinitionError(self.workflow, self.problems)


def check(spec: WorkflowSpec) -> CheckReport:
    """Check ``spec``; return the report, or raise :class:`DefinitionError` listing every problem."""
    report = analyze(spec)
    report.raise_for_problems()
    return report


def _q(names: Iterable[str], conj: str = "or") -> str:
    items = [repr(n) for n in names]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {conj} " + items[-1]


def _suggest(name: object, known: Iterable[str]) -> str:
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _positional_capacity(fn: Callable[..., Any]) -> tuple[int, int] | None:
    """(required, maximum) positional arguments ``fn`` takes; maximum -1 means ``*args``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # builtins without a signature: give them the benefit of the doubt
    required = maximum = 0
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            maximum += 1
            if p.default is p.empty:
                required += 1
        elif p.kind is p.VAR_POSITIONAL:
            maximum = -1
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            return (99, 99)  # a required keyword-only argument can never be supplied
    return required, maximum


def _takes_one(fn: Callable[..., Any]) -> bool:
    return _takes(fn, 1)


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


def _names_in(fs: object) -> frozenset[str]:
    """The string entries of a declared collection of names; nothing when it is malformed."""
    if not isinstance(fs, (tuple, list, set, frozenset)):
        return frozenset()
    return frozenset(f for f in fs if isinstance(f, str))


def _fmt_path(path: Sequence[str], edge_kinds: dict[tuple[str, str], str] | None = None) -> str:
    if not path:
        return ""
    parts = [path[0]]
    for a, b in itertools.pairwise(path):
        arrow = " -[error]-> " if edge_kinds and edge_kinds.get((a, b)) == "error" else " -> "
        parts.append(arrow + b)
    return "".join(parts)


def analyze(spec: WorkflowSpec) -> CheckReport:
    """Check ``spec`` and return every verdict and problem, without raising."""
    problems: list[Problem] = []

    def problem(code: str, message: str, subject: str = "") -> None:
        problems.append(Problem(code, message, subject))

    wf = spec.name if isinstance(spec.name, str) else repr(spec.name)

    # --- the context model ---------------------------------------------------------------
    model = spec.context
    model_ok = isinstance(model, type) and issubclass(model, BaseModel)
    fields: frozenset[str] = frozenset()
    if not model_ok:
        problem(
            "context-model",
            f"the context {model!r} is not a pydantic model: declare it as a subclass of "
            "pydantic.BaseModel",
        )
    else:
        fields = frozenset(model.model_fields)
        if not model.model_config.get("validate_assignment", False):
            problem(
                "context-model",
                f"context model {model.__name__} does not validate on assignment, so an action could "
                "store a wrong type unnoticed: set model_config = ConfigDict(validate_assignment=True) "
                "or subclass statemachine_agent.Context",
            )

    # --- tools -----------------------------------------------------------------------------
    tool_names: set[str] = set()
    tool_names_known = True
    for tool in spec.tools:
        name = getattr(tool, "name", None)
        if not isinstance(name, str):
            problem("bad-tool", f"{tool!r} is not a Tool: register tools with workflow.tool()")
            tool_names_known = False
            continue
        tool_names.add(name)
    for tool in spec.tools:
        fallback = getattr(tool, "fallback", None)
        if fallback is not None and (not isinstance(fallback, str) or fallback not in tool_names):
            problem("unknown-tool", f"tool {tool.name!r} falls back to {fallback!r}, which is not a "
                    f"registered tool{_suggest(fallback, tool_names)}", tool.name)

    # --- states ----------------------------------------------------------------------------
    names: list[str] = []
    seen: set[str] = set()
    states: dict[str, StateSpec] = {}
    for s in spec.states:
        if not isinstance(s, StateSpec):
            problem("bad-state", f"{s!r} is not a state declaration (StateSpec)")
            continue
        if not isinstance(s.name, str) or not s.name.strip():
            problem("bad-name", f"state name {s.name!r} must be a non-empty string", str(s.name))
            continue
        if s.name in seen:
            problem(
                "duplicate-state",
                f"state {s.name!r} is declared more than once: rename one of them",
                s.name,
            )
            continue
        seen.add(s.name)
        names.append(s.name)
        states[s.name] = s

    initials = [n for n in names if states[n].initial]
    if not initials:
        problem("no-initial", "no initial state: mark exactly one state with initial=True")
    elif len(initials) > 1:
        problem(
            "several-initial",
            f"several initial states ({_q(initials, 'and')}): keep initial=True on exactly one",
        )
    initial = initials[0] if len(initials) == 1 else None

    terminals = [n for n in names if states[n].terminal]
    failure_terminals = [n for n in terminals if states[n].outcome is Outcome.FAILURE]
    if not terminals:
        problem("no-terminal", "no terminal state: declare at least one, e.g. terminal('done')")
    if not failure_terminals:
        problem(
            "no-failure-terminal",
            "no terminal state with outcome 'failure': declare one, e.g. terminal('failed', "
            "outcome='failure'); runs that exhaust a budget or hit an unrouted error end there",
        )
    failure_terminal = failure_terminals[0] if failure_terminals else None

    reads_of = {n: _names_in(states[n].reads) for n in names}
    writes_of = {n: _names_in(states[n].writes) for n in names}
    # A malformed bound is reported above and counts as no bound below.
    visit_bound = {n: states[n].max_visits if _is_count(states[n].max_visits) else None for n in names}

    for n in names:
        s = states[n]
        if s.terminal:
            if s.initial:
                problem("initial-terminal", f"initial state {n!r} is terminal, so no run does anything", n)
            if not isinstance(s.outcome, Outcome):
                problem(
                    "terminal-outcome",
                    f"terminal state {n!r} has outcome {s.outcome!r}: use 'success' or 'failure'",
                    n,
                )
            if s.action is not None:
                problem(
                    "terminal-action",
                    f"terminal state {n!r} has an action, which would never run: move it to the "
                    "state before",
                    n,
                )
            if s.decision:
                problem("terminal-decision", f"terminal state {n!r} cannot be a decision state", n)
        else:
            if s.outcome is not None:
                problem(
                    "terminal-outcome",
                    f"state {n!r} has an outcome but is not terminal: declare it with terminal()",
                    n,
                )
            if not callable(s.action):
                problem(
                    "bad-action",
                    f"state {n!r} has action {s.action!r}, which is not callable: give a function "
                    "that takes the context",
                    n,
                )
            elif not (_takes(s.action, 1) or _takes(s.action, 2)):
                problem(
                    "bad-action",
                    f"the action of state {n!r} cannot be called with the context (and the tools "
                    "handle): give it the signature (ctx) or (ctx, tools)",
                    n,
                )
            else:
                _check_tools(s, tool_names, tool_names_known, problem)
        if s.max_visits is not None and not _is_count(s.max_visits):
            problem(
                "bad-bound",
                f"state {n!r} has max_visits={s.max_visits!r}: use a whole number of at least 1",
                n,
            )
        if not isinstance(s.on_no_exit, NoExit):
            problem(
                "bad-option",
                f"state {n!r} has on_no_exit={s.on_no_exit!r}: use 'error' or 'fail'",
                n,
            )
        for kind, fs in (("reads", s.reads), ("writes", s.writes)):
            if not isinstance(fs, (tuple, list, set, frozenset)) or not all(isinstance(f, str) for f in fs):
                problem(
                    "bad-field",
                    f"state {n!r} {kind} {fs!r}: give a list of field names",
                    n,
                )
                continue
            if model_ok:
                for f in fs:
                    if f not in fields:
                        problem(
                            "unknown-field",
                            f"state {n!r} {kind} {f!r}, which is not a field of "
                            f"{model.__name__}{_suggest(f, fields)}",
                            n,
                        )
        if s.terminal and (reads_of[n] or writes_of[n]):
            problem("terminal-action", f"terminal state {n!r} declares reads or writes but runs no action", n)

    if spec.max_steps is not None and not _is_count(spec.max_steps):
        problem("bad-bound", f"max_steps={spec.max_steps!r}: use a whole number of at least 1")

    # --- transitions -----------------------------------------------------------------------
    edges: list[Edge] = []
    exits: dict[str, list[Any]] = defaultdict(list)

    def endpoint_ok(what: str, name: object, label: str) -> bool:
        if isinstance(name, str) and name in states:
            return True
        problem(
            "unknown-state",
            f"{label} has unknown {what} state {name!r}{_suggest(name, names)}",
            label,
        )
        return False

    transitions = []
    for t in spec.transitions:
        if not isinstance(t, TransitionSpec):
            problem("bad-transition", f"{t!r} is not a transition declaration (TransitionSpec)")
            continue
        if isinstance(t.order, bool) or not isinstance(t.order, int):
            problem("bad-transition", f"transition {t.source}->{t.target} has order={t.order!r}: use a "
                    "whole number (declare transitions with workflow.transition())")
            continue
        transitions.append(t)
    for t in transitions:
        label = f"transition {t.source}->{t.target}"
        ok = endpoint_ok("source", t.source, label) & endpoint_ok("target", t.target, label)
        if t.max_traversals is not None and not _is_count(t.max_traversals):
            problem(
                "bad-bound",
                f"{label} has max_traversals={t.max_traversals!r}: use a whole number of at least 1",
                label,
            )
        if t.guard is not None:
            if not isinstance(t.guard, Guard):
                problem("bad-guard", f"{label} has guard {t.guard!r}, which is not a Guard", label)
            else:
                for leaf in t.guard.leaves():
                    if not callable(leaf.fn) or not _takes_one(leaf.fn):
                        problem(
                            "bad-guard",
                            f"guard {leaf.name!r} on {label} cannot be called with the context as "
                            "its only argument: give it the signature (ctx) -> bool",
                            label,
                        )
                if model_ok:
                    for f in sorted(_names_in(t.guard.reads) - fields):
                        problem(
                            "unknown-field",
                            f"guard {t.guard.name!r} on {label} reads {f!r}, which is not a field of "
                            f"{model.__name__}{_suggest(f, fields)}",
                            label,
                        )
            if t.default:
                problem(
                    "guarded-default",
                    f"{label} is the default (else) exit but has guard {getattr(t.guard, 'name', t.guard)!r}:"
                    " drop the guard or default=True",
                    label,
                )
        if not ok:
            continue
        if states[t.source].terminal:
            problem(
                "terminal-exit",
                f"terminal state {t.source!r} has an outgoing transition to {t.target!r}: a run "
                "ends on entering a terminal; remove the transition or make the state non-terminal",
                t.source,
            )
            continue
        exits[t.source].append(t)
        edges.append(Edge(t.source, t.target, t.max_traversals if _is_count(t.max_traversals) else None,
                          "transition", t.name))

    seen_routes: dict[tuple[str, type[BaseException]], str] = {}
    for et in spec.error_transitions:
        if not isinstance(et, ErrorTransitionSpec):
            problem("bad-transition", f"{et!r} is not an error transition declaration (ErrorTransitionSpec)")
            continue
        err_name = getattr(et.error, "__name__", repr(et.error))
        label = f"error transition {et.source}-[{err_name}]->{et.target}"
        ok = endpoint_ok("source", et.source, label) & endpoint_ok("target", et.target, label)
        if not (isinstance(et.error, type) and issubclass(et.error, BaseException)):
            problem(
                "bad-error-type",
                f"{label} routes {et.error!r}, which is not an exception class: give a subclass of "
                "Exception",
                label,
            )
            ok = False
        elif not issubclass(et.error, Exception) or issubclass(et.error, _UNROUTABLE):
            problem(
                "bad-error-type",
                f"{label} routes {err_name}, which must always propagate (cancellation and "
                "interruption are never routed): route a subclass of Exception instead",
                label,
            )
            ok = False
        if et.max_traversals is not None and not _is_count(et.max_traversals):
            problem(
                "bad-bound",
                f"{label} has max_traversals={et.max_traversals!r}: use a whole number of at least 1",
                label,
            )
        if not ok:
            continue
        if states[et.source].terminal:
            problem(
                "terminal-exit",
                f"terminal state {et.source!r} has an error transition: terminals run no action",
                et.source,
            )
            continue
        key = (et.source, et.error)
        if key in seen_routes:
            problem(
                "duplicate-error-route",
                f"state {et.source!r} routes {err_name} twice (to {seen_routes[key]!r} and "
                f"{et.target!r}); the second never fires: keep one",
                label,
            )
            continue
        seen_routes[key] = et.target
        edges.append(Edge(et.source, et.target, et.max_traversals if _is_count(et.max_traversals) else None,
                          "error", et.name))

    # --- exits: dead transitions, defaults, exhaustiveness ---------------------------------
    for n in names:
        s = states[n]
        if s.terminal:
            continue
        outs = sorted(exits.get(n, []), key=lambda t: t.order)
        defaults = [t for t in outs if t.default]
        if len(defaults) > 1:
            problem(
                "dead-transition",
                f"state {n!r} has {len(defaults)} default exits "
                f"(to {_q((t.target for t in defaults), 'and')}); only the first can ever fire: keep one",
                n,
            )
        if not s.decision:
            blocker = next((t for t in outs if t.guard is None and not t.default), None)
            if blocker is not None:
                dead = [t for t in outs if t is not blocker and (t.order > blocker.order or t.default)]
                if dead:
                    problem(
                        "dead-transition",
                        f"state {n!r}: the unguarded transition to {blocker.target!r} always fires, so "
                        f"its exits to {_q(t.target for t in dead)} never can: guard it, move it last "
                        "as default=True, or remove the dead ones",
                        n,
                    )
        if s.decision:
            for t in outs:
                if not (isinstance(t.description, str) and t.description.strip()):
                    problem(
                        "missing-description",
                        f"transition {n}->{t.target} leaves decision state {n!r} without a "
                        "description: add description=... (the policy reads it to choose)",
                        f"transition {n}->{t.target}",
                    )
        exhaustive = any(t.guard is None for t in outs)
        if not outs:
            if s.on_no_exit is NoExit.FAIL:
                pass  # explicit: the state always ends the run in failure
            else:
                problem(
                    "no-exit",
                    f"state {n!r} has no exits: add a transition from it, or on_no_exit='fail' "
                    "if it should always end the run in failure",
                    n,
                )
        elif not exhaustive and s.on_no_exit is not NoExit.FAIL:
            problem(
                "no-exit",
                f"every exit of state {n!r} is guarded and none is a default, so a run can find no "
                "way out: add default=True to a fallback transition, or on_no_exit='fail' to end "
                "the run in the failure terminal then",
                n,
            )
        if s.on_no_exit is NoExit.FAIL and failure_terminal is not None and not exhaustive:
            edges.append(Edge(n, failure_terminal, None, "no-exit", f"{n}->(no exit)"))

    # --- the graph -------------------------------------------------------------------------
    succ: dict[str, list[str]] = defaultdict(list)
    pred: dict[str, list[str]] = defaultdict(list)
    for e in edges:
        succ[e.source].append(e.target)
        pred[e.target].append(e.source)
    edge_kinds = {(e.source, e.target): e.kind for e in edges}

    reach: set[str] = reachable([initial], succ) if initial is not None else set()
    if initial is not None and failure_terminal is not None:
        reach.add(failure_terminal)  # every run can end there: budgets, unrouted errors
    unreachable = [n for n in names if n not in reach] if initial is not None else []
    for n in unreachable:
        problem(
            "unreachable-state",
            f"state {n!r} cannot be reached from the initial state {initial!r}: add a transition "
            "into it, or remove it",
            n,
        )

    can_finish = reachable([n for n in names if states[n].terminal], pred)
    trap_set = {n for n in names if n in reach and n not in can_finish}
    if trap_set:
        trap_succ = {n: [w for w in succ.get(n, ()) if w in trap_set] for n in trap_set}
        for comp in strongly_connected_components(sorted(trap_set), trap_succ):
            head = sorted(comp)[0]
            if len(comp) > 1 or head in trap_succ[head]:
                cycle = bfs_path(head, head.__eq__, lambda v: trap_succ.get(v, ()), min_length=1) or [head]
                problem(
                    "trap-cycle",
                    f"states {_q(sorted(comp), 'and')} form a trap: the cycle {_fmt_path(cycle, edge_kinds)} "
                    "has no way out to a terminal state: add an exit to a terminal from one of them",
                    head,
                )
            else:
                problem(
                    "trap-state",
                    f"state {head!r} leads to no terminal state: add a transition from it to one "
                    "(or to a state that reaches one)",
                    head,
                )

    # --- loops must be bounded -------------------------------------------------------------
    free_nodes = sorted(n for n in reach if not states[n].terminal and visit_bound[n] is None)
    free_set = set(free_nodes)
    free_succ: dict[str, list[str]] = defaultdict(list)
    for e in edges:
        if e.bound is None and e.source in free_set and e.target in free_set:
            free_succ[e.source].append(e.target)
    unbounded: list[frozenset[str]] = []
    for comp in strongly_connected_components(free_nodes, free_succ):
        head = sorted(comp)[0]
        if len(comp) > 1 or head in free_succ[head]:
            unbounded.append(frozenset(comp))
            cycle = bfs_path(head, head.__eq__, lambda v: free_succ.get(v, ()), min_length=1) or [head]
            problem(
                "unbounded-cycle",
                f"the cycle {_fmt_path(cycle, edge_kinds)} has no bound, so a run could loop forever: "
                f"give one of its states max_visits=N (e.g. {head!r}) or one of its transitions "
                "max_traversals=N",
                head,
            )

    # --- context dataflow: definite assignment ---------------------------------------------
    unset: set[tuple[str, str]] = set()
    if model_ok and initial is not None:
        at_start = fields_set_at_start(model)

        def writes(n: str) -> frozenset[str]:
            return writes_of[n]

        out_edges: dict[str, list[Edge]] = defaultdict(list)
        for e in edges:
            out_edges[e.source].append(e)

        def witness(f: str, target: str, *, after_target: bool) -> list[str] | None:
            """A path from the initial state to ``target`` along which ``f`` is never written."""

            def step(v: str) -> Iterable[str]:
                written = f in writes(v)
                # An error edge carries no writes: the failed action's changes are discarded.
                return [e.target for e in out_edges[v] if e.kind == "error" or not written]

            path = bfs_path(initial, lambda v: v == target, step)
            if path is not None and after_target and f in writes(target):
                return None
            return path

        reachable_non_terminal = [n for n in names if n in reach and not states[n].terminal]
        for n in reachable_non_terminal:
            s = states[n]
            reads = sorted(reads_of[n] & fields)
            for f in reads:
                if f in at_start:
                    continue
                path = witness(f, n, after_target=False)
                if path is None:
                    continue
                unset.add((n, f))
                problem("unset-read", _unset_message(f"state {n!r}", f, path, writes, edge_kinds), n)
        for t in transitions:
            if (
                not isinstance(t.guard, Guard)
                or not isinstance(t.source, str)
                or not isinstance(t.target, str)
                or t.source not in reach
                or t.target not in states
                or states[t.source].terminal
            ):
                continue
            for f in sorted(_names_in(t.guard.reads) & fields - at_start):
                path = witness(f, t.source, after_target=True)
                if path is None:
                    continue
                unset.add((t.source, f))
                problem(
                    "unset-read",
                    _unset_message(f"guard {t.guard.name!r} on transition {t.source}->{t.target}", f,
                                   [*path, t.target], writes, edge_kinds),
                    f"transition {t.source}->{t.target}",
                )

    # --- the worst-case number of steps ----------------------------------------------------
    graph_bound: int | None = None
    if initial is not None and not unbounded:
        graph_bound = _worst_case_steps(initial, reach, states, visit_bound, edges)
    worst = graph_bound
    if worst is not None and _is_count(spec.max_steps):
        worst = min(worst, typing.cast(int, spec.max_steps))

    return CheckReport(
        workflow=wf,
        problems=tuple(problems),
        reachable=frozenset(reach),
        unreachable=frozenset(unreachable),
        traps=frozenset(trap_set),
        unbounded_cycles=tuple(unbounded),
        unset_reads=frozenset(unset),
        worst_case_steps=worst,
        graph_bound=graph_bound,
        failure_terminal=failure_terminal,
        edges=tuple(edges),
    )


def _check_tools(s: StateSpec, registered: set[str], complete: bool,
                 problem: Callable[[str, str, str], None]) -> None:
    """A state's tools exist, its action can take the handle, and it calls only what it declares."""
    n, action = s.name, s.action
    assert action is not None
    if not isinstance(s.tools, (tuple, list)) or not all(isinstance(t, str) for t in s.tools):
        problem("bad-field", f"state {n!r} has tools={s.tools!r}: give a list of tool names", n)
    declared = tuple(sorted(_names_in(s.tools)))
    for t in declared:
        if complete and t not in registered:
            problem("unknown-tool", f"state {n!r} declares tool {t!r}, which is not registered"
                    f"{_suggest(t, registered)}: register it with @workflow.tool", n)
    if s.tool_deadline is not None and not (
        isinstance(s.tool_deadline, (int, float)) and not isinstance(s.tool_deadline, bool)
        and s.tool_deadline > 0
    ):
        problem("bad-option", f"state {n!r} has tool_deadline={s.tool_deadline!r}: give a positive "
                "number of seconds", n)
    wants = takes_tools(action)
    if declared and not wants:
        problem("bad-action", f"state {n!r} declares tools but its action takes no tools handle: give "
                "it the signature async def (ctx, tools)", n)
    if declared and wants and not inspect.iscoroutinefunction(action):
        problem("bad-action", f"state {n!r} calls tools, which are awaited: make its action "
                "async def", n)
    if wants:
        used = declared_tool_calls(action)
        for t in sorted((used or set()) - set(declared)):
            problem("undeclared-tool", f"the action of state {n!r} calls tool {t!r} but the state does "
                    f"not declare it: add {t!r} to tools=[...]", n)


def _unset_message(reader: str, f: str, path: list[str], writes: Callable[[str], frozenset[str]],
                   edge_kinds: dict[tuple[str, str], str]) -> str:
    discarded = [a for a, b in itertools.pairwise(path)
                 if edge_kinds.get((a, b)) == "error" and f in writes(a)]
    writers = [p for p in path[:-1] if f not in writes(p)]
    fixes = []
    if writers:
        fixes.append(f"write it in {_q(writers)}")
    fixes += ["give it a default", "make it a required input"]
    note = (f" (an error transition discards the writes of {_q(discarded, 'and')}: route that error "
            "elsewhere, or write the field before the error can happen)") if discarded else ""
    if len(path) == 1:
        return (f"{reader} reads {f!r}, which has no value when a run starts ({path[0]!r} is the initial "
                f"state): {', '.join(fixes[:-1])}, or {fixes[-1]}")
    return (f"{reader} reads {f!r}, but the path {_fmt_path(path, edge_kinds)} never writes it{note}: "
            f"{', '.join(fixes[:-1])}, or {fixes[-1]}")


def _worst_case_steps(
    initial: str, reach: set[str], states: dict[str, StateSpec], visit_bound: dict[str, int | None],
    edges: list[Edge],
) -> int:
    """A sound upper bound on the actions any run executes, exact when the graph has no cycle.

    A run passes through the strongly connected components of the graph in topological order,
    entering each at most once, so the bound is the heaviest chain of components. A trivial
    component weighs one step; a looping one weighs the sum of its states' visit caps, derived
    from the bounds and tightened by flow conservation (each visit enters through one edge and
    leaves through one).
    """
    nodes = sorted(reach)
    live = [e for e in edges if e.source in reach and e.target in reach]
    succ: dict[str, list[str]] = defaultdict(list)
    for e in live:
        succ[e.source].append(e.target)
    comps = strongly_connected_components(nodes, succ)  # sinks first
    comp_of = {v: i for i, comp in enumerate(comps) for v in comp}
    dist: list[int] = [0] * len(comps)
    for i, comp in enumerate(comps):
        members = set(comp)
        if states[comp[0]].terminal:
            weight = 0
        elif len(comp) == 1 and comp[0] not in succ[comp[0]]:
            weight = 1
        else:
            inner = [e for e in live if e.source in members and e.target in members]
            entries = [v for v in comp if v == initial or any(
                e.target == v and e.source not in members for e in live)]
            weight = max(_component_weight(comp, x, visit_bound, inner) for x in entries)
        nxt = {comp_of[w] for v in comp for w in succ[v]} - {i}
        dist[i] = weight + max((dist[j] for j in nxt), default=0)
    return dist[comp_of[initial]]


def _component_weight(
    comp: list[str], entry: str, visit_bound: dict[str, int | None], inner: list[Edge]
) -> int:
    free = [v for v in comp if visit_bound[v] is None]
    free_succ: dict[str, list[str]] = defaultdict(list)
    into: dict[str, list[Edge]] = defaultdict(list)
    out_of: dict[str, list[Edge]] = defaultdict(list)
    for e in inner:
        into[e.target].append(e)
        out_of[e.source].append(e)
        if e.bound is None and visit_bound[e.target] is None and visit_bound[e.source] is None:
            free_succ[e.source].append(e.target)
    cap: dict[str, int] = {v: b for v in comp if (b := visit_bound[v]) is not None}
    order = topological_order(free, free_succ)
    assert order is not None, "unbounded cycles are rejected before the bound is computed"

    def through(e: Edge, ends: str) -> int | None:
        c = cap.get(ends)
        if e.bound is None:
            return c
        return e.bound if c is None else min(e.bound, c)

    for v in order:
        total = 1 if v == entry else 0
        for e in into[v]:
            c = through(e, e.source)
            assert c is not None, "a free edge's source comes earlier in topological order"
            total += c
        cap[v] = total
    # Tighten until stable: every visit enters through one edge (or is the entry), and every
    # visit but the run's last leaves through an inner edge. The last one may leave the
    # component, or end the run where it is (a budget, an unrouted error): hence the 1.
    for _ in range(64):
        changed = False
        for v in comp:
            inflow = (v == entry) + sum(typing.cast(int, through(e, e.source)) for e in into[v])
            outflow = 1 + sum(typing.cast(int, through(e, e.target)) for e in out_of[v])
            new = min(cap[v], inflow, outflow)
            if new != cap[v]:
                cap[v] = new
                changed = True
        if not changed:
            break
    return sum(cap.values())
