"""Property tests: the checker's verdicts against independent brute-force models of the same graph.

Every model here is written from the semantics, not from ``check.py``: plain reachability by
closure, cycles by "can this state get back to itself", the step bound by exhaustive search over
(state, visit counts, traversal counts), and definite assignment both as a must-fixpoint and by
enumerating simple paths.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from statemachine_agent.check import CheckReport, analyze, check, fields_set_at_start
from statemachine_agent.context import Context
from statemachine_agent.errors import DefinitionError, Problem
from statemachine_agent.guards import Guard
from statemachine_agent.spec import (
    ErrorTransitionSpec,
    NoExit,
    Outcome,
    StateSpec,
    TransitionSpec,
    WorkflowSpec,
)

# --- the context ---------------------------------------------------------------------------------


class Ctx(Context):
    a: int | None = None
    b: int | None = None
    c: int | None = None
    name: str


OPTIONAL = ("a", "b", "c")
ALL_FIELDS = (*OPTIONAL, "name")
SET_AT_START = frozenset({"name"})  # the required ``str``: the caller supplies it
ERRORS: tuple[type[Exception], ...] = (ValueError, KeyError, RuntimeError)
SUCCESS_T, FAILURE_T, FAILURE_T2 = "ok", "fail", "fail2"

# CHECK_PROPS_EXAMPLES=5000 for a deeper search than the quick default.
EXAMPLES = int(os.environ.get("CHECK_PROPS_EXAMPLES", "100"))
PROPS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MORE_PROPS = settings(PROPS, max_examples=2 * EXAMPLES)


def always(_ctx: Any) -> bool:
    return True


def noop(_ctx: Any) -> None:
    return None


def true_guard(reads: Iterable[str] = ()) -> Guard:
    return Guard(always, name="always", reads=reads)


# --- generating well-formed specs ----------------------------------------------------------------

bounds = st.none() | st.integers(1, 3)
field_tuples = st.lists(st.sampled_from(ALL_FIELDS), unique=True, max_size=3).map(tuple)


@st.composite
def specs(draw: st.DrawFn, *, max_states: int = 4, max_exits: int = 3, max_errors: int = 2,
          with_max_steps: bool = False) -> WorkflowSpec:
    """A well-formed spec: one initial state, a success and a failure terminal, no dead or missing exits.

    Each non-terminal state picks how its exits look:

    * ``fail``: every exit (possibly none) guarded, ``on_no_exit=FAIL``: an implicit edge to the
      failure terminal;
    * ``default``: guarded exits then a ``default=True`` one;
    * ``unguarded``: guarded exits then an unguarded, non-default one last.

    The last two are exhaustive, so whatever ``on_no_exit`` says, they get no implicit edge.
    """
    k = draw(st.integers(1, max_states))
    inner = [f"s{i}" for i in range(k)]
    terminals = [
        StateSpec(SUCCESS_T, terminal=True, outcome=Outcome.SUCCESS),
        StateSpec(FAILURE_T, terminal=True, outcome=Outcome.FAILURE),
    ]
    if draw(st.booleans()):
        terminals.append(StateSpec(FAILURE_T2, terminal=True, outcome=Outcome.FAILURE))
    names = inner + [t.name for t in terminals]
    initial = draw(st.sampled_from(inner))
    states: list[StateSpec] = []
    transitions: list[TransitionSpec] = []
    errors: list[ErrorTransitionSpec] = []
    for n in inner:
        mode = draw(st.sampled_from(["fail", "default", "unguarded"]))
        targets = draw(st.lists(st.sampled_from(names), min_size=0 if mode == "fail" else 1,
                                max_size=max_exits))
        for i, target in enumerate(targets):
            plain = i == len(targets) - 1 and mode != "fail"
            guard = None if plain else true_guard(draw(st.lists(st.sampled_from(ALL_FIELDS),
                                                                unique=True, max_size=2)))
            transitions.append(TransitionSpec(
                n, target, guard=guard, default=plain and mode == "default",
                max_traversals=draw(bounds), order=i,
            ))
        routed = draw(st.lists(st.sampled_from(ERRORS), unique=True, max_size=max_errors))
        for j, exc in enumerate(routed):
            errors.append(ErrorTransitionSpec(n, exc, draw(st.sampled_from(names)),
                                              max_traversals=draw(bounds), order=j))
        on_no_exit = NoExit.FAIL if mode == "fail" else draw(st.sampled_from(NoExit))
        reads, writes = draw(field_tuples), draw(field_tuples)
        states.append(StateSpec(
            n, action=lambda ctx: None, reads=reads, writes=writes,
            optional_reads=draw(field_tuples.map(lambda fs, r=reads: tuple(f for f in fs if f not in r))),
            optional_writes=draw(field_tuples.map(lambda fs, w=writes: tuple(f for f in fs if f not in w))),
            initial=n == initial, max_visits=draw(bounds), on_no_exit=on_no_exit,
        ))
    max_steps = draw(st.none() | st.integers(1, 12)) if with_max_steps else None
    return WorkflowSpec(
        "prop",
        Ctx,
        tuple(draw(st.permutations(states + terminals))),
        tuple(draw(st.permutations(transitions))),
        tuple(draw(st.permutations(errors))),
        max_steps=max_steps,
    )


# --- the independent model -----------------------------------------------------------------------


@dataclass(frozen=True)
class MEdge:
    source: str
    target: str
    bound: int | None
    carries_writes: bool
    """False for error edges: the failed action's writes are discarded."""


@dataclass(frozen=True)
class Model:
    spec: WorkflowSpec
    states: dict[str, StateSpec]
    initial: str
    failure_terminal: str
    edges: tuple[MEdge, ...]

    def out(self, v: str) -> list[MEdge]:
        return [e for e in self.edges if e.source == v]

    def terminal(self, v: str) -> bool:
        return self.states[v].terminal

    def closure(self, starts: Iterable[str], step: Callable[[str], Iterable[str]]) -> set[str]:
        seen: set[str] = set()
        todo = list(starts)
        while todo:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            todo.extend(step(v))
        return seen

    def reachable(self) -> set[str]:
        """The closure from the initial state, plus the failure terminal.

        Any run can end in the failure terminal (an exhausted budget, an unrouted error), so the
        checker counts it as reachable even when no edge leads there.
        """
        by_edges = self.closure([self.initial], lambda v: [e.target for e in self.out(v)])
        return by_edges | {self.failure_terminal}

    def traps(self) -> set[str]:
        reach = self.reachable()
        out = set()
        for v in reach:
            if self.terminal(v):
                continue
            after = self.closure([v], lambda u: [e.target for e in self.out(u)])
            if not any(self.terminal(u) for u in after):
                out.add(v)
        return out

    def unbounded_cycle_states(self) -> set[str]:
        """Reachable states lying on a cycle that passes no bounded state and no bounded edge."""
        reach = self.reachable()
        free = {v for v in reach if not self.terminal(v) and self.states[v].max_visits is None}

        def step(u: str) -> list[str]:
            return [e.target for e in self.out(u) if e.bound is None and e.target in free]

        return {v for v in free if v in self.closure(step(v), step)}

    def has_cycle(self) -> bool:
        """Any cycle at all (bounded or not) among reachable states."""
        reach = self.reachable()

        def step(u: str) -> list[str]:
            return [e.target for e in self.out(u)]

        return any(v in self.closure(step(v), step) for v in reach)

    def longest(self, *, must_finish: bool) -> int | None:
        """Most actions any bound-respecting walk from the initial state runs.

        ``must_finish``: only walks that end by entering a terminal count (``None`` if there is
        none). Otherwise a walk may stop anywhere, e.g. when every exit's budget is spent.
        """
        vidx = {v: i for i, v in enumerate(sorted(self.states))}
        edges = list(self.edges)
        outs = {v: [i for i, e in enumerate(edges) if e.source == v] for v in self.states}

        @cache
        def enter(v: str, visits: tuple[int, ...], travs: tuple[int, ...]) -> int | None:
            if self.terminal(v):
                return 0
            cap = self.states[v].max_visits
            i = vidx[v]
            if cap is not None and visits[i] >= cap:
                return None  # this visit is not allowed
            visits = (*visits[:i], visits[i] + 1, *visits[i + 1:])
            best: int | None = None if must_finish else 0
            for j in outs[v]:
                e = edges[j]
                if e.bound is not None and travs[j] >= e.bound:
                    continue
                r = enter(e.target, visits, (*travs[:j], travs[j] + 1, *travs[j + 1:]))
                if r is not None:
                    best = r if best is None else max(best, r)
            return None if best is None else best + 1

        return enter(self.initial, (0,) * len(vidx), (0,) * len(edges))

    def definitely_set(self) -> dict[str, frozenset[str]]:
        """Must-analysis: the fields written on every path into each reachable state (greatest fixpoint)."""
        reach = self.reachable()
        everything = frozenset(ALL_FIELDS)
        into: dict[str, frozenset[str]] = dict.fromkeys(reach, everything)
        into[self.initial] = SET_AT_START
        changed = True
        while changed:
            changed = False
            for v in reach:
                if v == self.initial:
                    continue
                new = everything
                for e in self.edges:
                    if e.target == v and e.source in reach:
                        carried = into[e.source] | (self.writes(e.source) if e.carries_writes
                                                    else frozenset())
                        new = new & carried
                if new != into[v]:
                    into[v] = new
                    changed = True
        return into

    def writes(self, v: str) -> frozenset[str]:
        """Fields written on every successful visit; ``optional_writes`` may not be, so they do not count."""
        return frozenset(self.states[v].writes)

    def reads(self, v: str) -> frozenset[str]:
        """Fields read that must be set; ``optional_reads`` need not be."""
        return frozenset(self.states[v].reads) - frozenset(self.states[v].optional_reads)

    def unwritten_path_exists(self, field: str, target: str) -> bool:
        """Enumerate simple paths from the initial state to ``target``; is one free of ``field``?"""
        if field in SET_AT_START:
            return False

        def walk(v: str, seen: frozenset[str]) -> bool:
            if v == target:
                return True
            for e in self.out(v):
                if e.carries_writes and field in self.writes(v):
                    continue
                if e.target not in seen and walk(e.target, seen | {e.target}):
                    return True
            return False

        return walk(self.initial, frozenset({self.initial}))

    def guard_reads(self) -> list[tuple[str, str]]:
        out = []
        for t in self.spec.transitions:
            if t.guard is not None:
                out += [(t.source, f) for f in t.guard.reads]
        return out


def model_of(spec: WorkflowSpec) -> Model:
    states = {s.name: s for s in spec.states}
    initial = next(s.name for s in spec.states if s.initial)
    failure = next(s.name for s in spec.states if s.terminal and s.outcome is Outcome.FAILURE)
    edges = [MEdge(t.source, t.target, t.max_traversals, True) for t in spec.transitions]
    edges += [MEdge(e.source, e.target, e.max_traversals, False) for e in spec.error_transitions]
    for s in spec.states:
        if s.terminal or s.on_no_exit is not NoExit.FAIL:
            continue
        if all(t.guard is not None for t in spec.transitions if t.source == s.name):
            edges.append(MEdge(s.name, failure, None, True))
    return Model(spec, states, initial, failure, tuple(edges))


def codes(report_or_error: CheckReport | DefinitionError) -> set[str]:
    return {p.code for p in report_or_error.problems}


# --- sanity of the generator and of the model ----------------------------------------------------


def test_context_fields_set_at_start_match_the_model() -> None:
    """Only the required ``str`` field of the test context counts as set before any action runs."""
    assert fields_set_at_start(Ctx) == SET_AT_START


@PROPS
@given(specs())
def test_generated_specs_have_no_definition_problems_besides_graph_verdicts(spec: WorkflowSpec) -> None:
    """Generated specs are well formed: the only problems are the graph and dataflow verdicts."""
    graph_codes = {"unreachable-state", "trap-state", "trap-cycle", "unbounded-cycle", "unset-read"}
    assert codes(analyze(spec)) <= graph_codes


# --- graph verdicts ------------------------------------------------------------------------------


@PROPS
@given(specs())
def test_reachable_and_unreachable_match_brute_force(spec: WorkflowSpec) -> None:
    """``reachable`` is the closure from the initial state over all edges; ``unreachable`` is the rest."""
    report, model = analyze(spec), model_of(spec)
    reach = model.reachable()
    assert report.reachable == reach
    assert report.unreachable == set(model.states) - reach
    assert {p.subject for p in report.problems if p.code == "unreachable-state"} == set(model.states) - reach


@PROPS
@given(specs())
def test_failure_terminal_is_the_first_declared_failure(spec: WorkflowSpec) -> None:
    """The failure terminal (target of implicit no-exit edges) is the first declared FAILURE terminal."""
    assert analyze(spec).failure_terminal == model_of(spec).failure_terminal


@PROPS
@given(specs())
def test_traps_match_brute_force(spec: WorkflowSpec) -> None:
    """``traps`` are the reachable non-terminal states from which no terminal is reachable."""
    report, model = analyze(spec), model_of(spec)
    traps = model.traps()
    assert report.traps == traps
    assert bool(traps) == bool(codes(report) & {"trap-state", "trap-cycle"})


@PROPS
@given(specs())
def test_unbounded_cycles_match_brute_force(spec: WorkflowSpec) -> None:
    """An unbounded cycle is reported iff a reachable cycle passes no bounded state and no bounded edge."""
    report, model = analyze(spec), model_of(spec)
    on_free_cycle = model.unbounded_cycle_states()
    assert bool(report.unbounded_cycles) == bool(on_free_cycle)
    assert set().union(*report.unbounded_cycles) == on_free_cycle
    assert ("unbounded-cycle" in codes(report)) == bool(on_free_cycle)
    # The groups are disjoint: they are strongly connected components.
    assert sum(len(c) for c in report.unbounded_cycles) == len(on_free_cycle)


# --- the step bound ------------------------------------------------------------------------------

small_specs = specs(max_states=4, max_exits=2, max_errors=1)


@MORE_PROPS
@given(small_specs)
def test_worst_case_steps_is_sound(spec: WorkflowSpec) -> None:
    """No walk within the budgets, finishing or stopping anywhere, runs more actions than the bound."""
    report, model = analyze(spec), model_of(spec)
    if model.unbounded_cycle_states():
        assert report.worst_case_steps is None
        assert report.graph_bound is None
        return
    assert report.worst_case_steps is not None
    assert report.worst_case_steps == report.graph_bound  # no max_steps here
    finishing = model.longest(must_finish=True)
    if finishing is not None:
        assert finishing <= report.worst_case_steps
    stopping = model.longest(must_finish=False)
    assert stopping is not None
    assert stopping <= report.worst_case_steps


@MORE_PROPS
@given(small_specs)
def test_worst_case_steps_finishing_runs_are_sound(spec: WorkflowSpec) -> None:
    """No bound-respecting walk that ends by entering a terminal runs more actions than the bound."""
    report, model = analyze(spec), model_of(spec)
    if model.unbounded_cycle_states():
        return
    finishing = model.longest(must_finish=True)
    if finishing is not None:
        assert report.worst_case_steps is not None
        assert finishing <= report.worst_case_steps


@PROPS
@given(specs())
def test_worst_case_steps_is_exact_without_cycles(spec: WorkflowSpec) -> None:
    """With no cycle in the reachable graph, the bound is the longest path's number of actions."""
    report, model = analyze(spec), model_of(spec)
    if model.has_cycle():
        return
    assert report.worst_case_steps == model.longest(must_finish=False)
    if not model.traps():
        # every maximal path ends in a terminal, so the longest finishing run attains the bound
        assert report.worst_case_steps == model.longest(must_finish=True)


def _retry_via_rewrite(visits: int, routes: int | None, rewrites: int | None) -> WorkflowSpec:
    """``fetch`` (max_visits) routes ConnectionError to ``rewrite``, back to ``fetch``; or ``summarize``."""
    return WorkflowSpec("retry", Ctx, (
        StateSpec("fetch", noop, initial=True, max_visits=visits),
        StateSpec("rewrite", noop, max_visits=rewrites),
        StateSpec("summarize", noop),
        StateSpec(SUCCESS_T, terminal=True, outcome=Outcome.SUCCESS),
        StateSpec(FAILURE_T, terminal=True, outcome=Outcome.FAILURE),
    ), (TransitionSpec("fetch", "summarize"), TransitionSpec("rewrite", "fetch"),
        TransitionSpec("summarize", SUCCESS_T)),
        (ErrorTransitionSpec("fetch", ConnectionError, "rewrite", max_traversals=routes),))


def _ping_pong(there: int, back: int, lead_in: bool) -> WorkflowSpec:
    """``a -> b`` and ``b -> a`` with max_traversals each, the way out ``b -> c -> ok``."""
    states = [StateSpec("a", noop, initial=not lead_in), StateSpec("b", noop), StateSpec("c", noop),
              StateSpec(SUCCESS_T, terminal=True, outcome=Outcome.SUCCESS),
              StateSpec(FAILURE_T, terminal=True, outcome=Outcome.FAILURE)]
    transitions = [TransitionSpec("a", "b", max_traversals=there),
                   TransitionSpec("b", "a", guard=true_guard(), max_traversals=back, order=0),
                   TransitionSpec("b", "c", default=True, order=1), TransitionSpec("c", SUCCESS_T)]
    if lead_in:
        states.append(StateSpec("start", noop, initial=True))
        transitions.append(TransitionSpec("start", "a"))
    return WorkflowSpec("ping-pong", Ctx, tuple(states), tuple(transitions))


def test_bound_of_the_issue_examples() -> None:
    """The two shapes of the issue: fetch/rewrite with max_visits=3 runs 6 steps, ping-pong 5."""
    assert analyze(_retry_via_rewrite(3, None, None)).worst_case_steps == 6
    assert model_of(_retry_via_rewrite(3, None, None)).longest(must_finish=False) == 6
    assert analyze(_ping_pong(2, 2, lead_in=False)).worst_case_steps == 5
    assert model_of(_ping_pong(2, 2, lead_in=False)).longest(must_finish=False) == 5


@PROPS
@given(st.integers(1, 4), bounds, bounds)
def test_bound_is_exact_for_a_retry_through_a_rewrite(visits: int, routes: int | None,
                                                      rewrites: int | None) -> None:
    """The fetch/rewrite loop's bound is the longest run, whatever its bounds."""
    spec = _retry_via_rewrite(visits, routes, rewrites)
    assert analyze(spec).worst_case_steps == model_of(spec).longest(must_finish=False)


@st.composite
def rings(draw: st.DrawFn) -> WorkflowSpec:
    """One loop that is a single cycle of 1 to 4 states, any bounds, left from any of them.

    Ways out go to a terminal or to one more step first; the run enters the ring at the start, or
    after a lead-in step choosing one of up to three entry states.
    """
    size = draw(st.integers(1, 4))
    ring = [f"r{i}" for i in range(size)]
    leaving = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    if not any(leaving):
        leaving[0] = True
    entries = draw(st.lists(st.sampled_from(ring), min_size=1, max_size=3, unique=True))
    lead_in = draw(st.booleans())
    states = [StateSpec(n, noop, initial=n == entries[0] and not lead_in, max_visits=draw(bounds))
              for n in ring]
    states += [StateSpec("tail", noop), StateSpec(SUCCESS_T, terminal=True, outcome=Outcome.SUCCESS),
               StateSpec(FAILURE_T, terminal=True, outcome=Outcome.FAILURE)]
    transitions = [TransitionSpec("tail", SUCCESS_T)]
    for i, n in enumerate(ring):
        around = TransitionSpec(n, ring[(i + 1) % size], max_traversals=draw(bounds))
        if leaving[i]:
            transitions += [dataclasses.replace(around, guard=true_guard()),
                            TransitionSpec(n, draw(st.sampled_from(["tail", SUCCESS_T])), default=True,
                                           order=1)]
        else:
            transitions.append(around)
    if lead_in:
        states.append(StateSpec("start", noop, initial=True))
        transitions += [TransitionSpec("start", n, guard=true_guard() if i < len(entries) - 1 else None,
                                       order=i) for i, n in enumerate(entries)]
    return WorkflowSpec("ring", Ctx, tuple(states), tuple(transitions))


@MORE_PROPS
@given(rings())
def test_bound_is_exact_for_a_single_cycle(spec: WorkflowSpec) -> None:
    """A loop that is one cycle, whatever its bounds and ways out: the bound is the longest run."""
    report, model = analyze(spec), model_of(spec)
    if model.unbounded_cycle_states():
        assert report.worst_case_steps is None
        return
    assert report.worst_case_steps == model.longest(must_finish=False)


def _hub(visits: int, spokes: int) -> WorkflowSpec:
    """``hub`` (max_visits) dispatches to ``spokes`` unbounded states that all come back to it."""
    names = [f"t{i}" for i in range(spokes)]
    return WorkflowSpec("hub", Ctx, (
        StateSpec("hub", noop, initial=True, max_visits=visits), *(StateSpec(n, noop) for n in names),
        StateSpec(SUCCESS_T, terminal=True, outcome=Outcome.SUCCESS),
        StateSpec(FAILURE_T, terminal=True, outcome=Outcome.FAILURE),
    ), (*(TransitionSpec("hub", n, guard=true_guard(), order=i) for i, n in enumerate(names)),
        TransitionSpec("hub", SUCCESS_T, default=True, order=spokes),
        *(TransitionSpec(n, "hub") for n in names)))


@PROPS
@given(st.integers(1, 3), st.integers(1, 4))
def test_bound_of_a_hub_is_not_a_sum_over_its_spokes(visits: int, spokes: int) -> None:
    """Many loops through one capped hub: the bound is the longest run, 2 * max_visits, not a sum."""
    spec = _hub(visits, spokes)
    assert analyze(spec).worst_case_steps == model_of(spec).longest(must_finish=False) == 2 * visits


@PROPS
@given(st.integers(1, 4), st.integers(1, 4), st.booleans())
def test_bound_is_exact_for_ping_pong(there: int, back: int, lead_in: bool) -> None:
    """Two states taking turns over capped transitions, left from the second: the bound is the longest run."""
    spec = _ping_pong(there, back, lead_in)
    assert analyze(spec).worst_case_steps == model_of(spec).longest(must_finish=False)


@PROPS
@given(small_specs)
def test_bound_is_exact_for_self_loops_only(spec: WorkflowSpec) -> None:
    """When every cycle is a state looping on itself, the bound is the longest run."""
    model = model_of(spec)
    if model.unbounded_cycle_states():
        return
    reach = model.reachable()
    for v in reach:
        after = model.closure([e.target for e in model.out(v) if e.target != v],
                              lambda u: [e.target for e in model.out(u)])
        if v in after:
            return  # a cycle through other states
    assert analyze(spec).worst_case_steps == model.longest(must_finish=False)


@PROPS
@given(specs(with_max_steps=True))
def test_max_steps_caps_the_graph_bound(spec: WorkflowSpec) -> None:
    """``worst_case_steps`` is the graph bound capped by ``max_steps``; both None with an unbounded loop."""
    report = analyze(spec)
    if model_of(spec).unbounded_cycle_states():
        assert report.graph_bound is None
        assert report.worst_case_steps is None
        return
    assert report.graph_bound is not None
    expected = report.graph_bound if spec.max_steps is None else min(report.graph_bound, spec.max_steps)
    assert report.worst_case_steps == expected


# --- context dataflow ----------------------------------------------------------------------------


@PROPS
@given(specs())
def test_unset_reads_match_brute_force(spec: WorkflowSpec) -> None:
    """A (state, field) read is unset iff some path from the start reaches it without the field written."""
    report, model = analyze(spec), model_of(spec)
    reach = model.reachable()
    live = [v for v in reach if not model.terminal(v)]
    into = model.definitely_set()
    expected = {(v, f) for v in live for f in model.reads(v) if f not in into[v]}
    # A guard runs after its source's action succeeded, so the source's own writes count.
    expected |= {
        (v, f) for v, f in model.guard_reads()
        if v in reach and f not in into[v] | model.writes(v)
    }
    # The fixpoint agrees with plain path enumeration.
    by_paths = {(v, f) for v in live for f in model.reads(v) if model.unwritten_path_exists(f, v)}
    by_paths |= {
        (v, f) for v, f in model.guard_reads()
        if v in reach and f not in model.writes(v) and model.unwritten_path_exists(f, v)
    }
    assert expected == by_paths
    assert report.unset_reads == expected
    assert ("unset-read" in codes(report)) == bool(expected)


@PROPS
@given(specs())
def test_optional_writes_count_as_not_written(spec: WorkflowSpec) -> None:
    """With every write made optional, each required read of a field not set at the start is unset."""
    optional = dataclasses.replace(spec, states=tuple(
        dataclasses.replace(s, writes=(), optional_writes=(*s.writes, *s.optional_writes))
        if not s.terminal else s for s in spec.states))
    report, model = analyze(optional), model_of(optional)
    reach = model.reachable()
    reads = {(v, f) for v in reach if not model.terminal(v) for f in model.reads(v) if f not in SET_AT_START}
    reads |= {(v, f) for v, f in model.guard_reads() if v in reach and f not in SET_AT_START}
    assert report.unset_reads == reads


@PROPS
@given(specs())
def test_optional_reads_are_never_unset_reads(spec: WorkflowSpec) -> None:
    """Moving every read to optional_reads leaves only the guards' reads to check."""
    optional = dataclasses.replace(spec, states=tuple(
        dataclasses.replace(s, reads=(), optional_reads=(*s.reads, *s.optional_reads))
        if not s.terminal else s for s in spec.states))
    report = analyze(optional)
    guarded = {v for v, _ in model_of(optional).guard_reads()}
    assert {v for v, _ in report.unset_reads} <= guarded
    assert "bad-field" not in codes(report)


# --- malformed specs -----------------------------------------------------------------------------


class Draft:
    """A mutable copy of a spec, to inject problems into."""

    def __init__(self, spec: WorkflowSpec) -> None:
        self.states = list(spec.states)
        self.transitions = list(spec.transitions)
        self.errors = list(spec.error_transitions)
        self.max_steps = spec.max_steps
        self.initial = next(s.name for s in spec.states if s.initial)
        self.inner = [s.name for s in spec.states if not s.terminal]

    def modify(self, name: str, **changes: Any) -> None:
        i = next(i for i, s in enumerate(self.states) if s.name == name)
        self.states[i] = dataclasses.replace(self.states[i], **changes)

    def add(self, name: str, **kw: Any) -> None:
        self.states.append(StateSpec(name, action=noop, **kw))

    def spec(self) -> WorkflowSpec:
        return WorkflowSpec("broken", Ctx, tuple(self.states), tuple(self.transitions),
                            tuple(self.errors), max_steps=self.max_steps)


def _unknown_state(d: Draft, v: str, which: int) -> set[str]:
    if which == 0:  # unknown target
        d.transitions.append(TransitionSpec(v, "nowhere", guard=true_guard(), order=-5))
    elif which == 1:  # unknown source
        d.transitions.append(TransitionSpec("ghost", SUCCESS_T))
    else:  # unknown target of an error route
        d.errors.append(ErrorTransitionSpec(v, ArithmeticError, "nowhere"))
    return {"unknown-state"}


def _duplicate_state(d: Draft, v: str, which: int) -> set[str]:
    d.states.append(next(s for s in d.states if s.name == [v, SUCCESS_T, FAILURE_T][which]))
    return {"duplicate-state"}


def _no_initial(d: Draft, v: str, which: int) -> set[str]:
    d.modify(d.initial, initial=False)
    return {"no-initial"}


def _several_initial(d: Draft, v: str, which: int) -> set[str]:
    d.add("second_start", initial=True, on_no_exit=NoExit.FAIL)
    return {"several-initial"}


def _bad_action(d: Draft, v: str, which: int) -> set[str]:
    d.modify(v, action=["not callable", None, lambda a, b, c: None][which])
    return {"bad-action"}


def _bad_bound(d: Draft, v: str, which: int) -> set[str]:
    if which == 0:
        d.modify(v, max_visits=0)
    elif which == 1:
        d.modify(v, max_visits=-1)
    else:
        d.transitions.append(TransitionSpec(v, SUCCESS_T, guard=true_guard(), max_traversals=0, order=-6))
    return {"bad-bound"}


def _bad_error_type(d: Draft, v: str, which: int) -> set[str]:
    d.errors.append(ErrorTransitionSpec(v, [int, KeyboardInterrupt, BaseException][which], FAILURE_T))
    return {"bad-error-type"}


def _unreachable(d: Draft, v: str, which: int) -> set[str]:
    d.add("island")
    d.transitions.append(TransitionSpec("island", SUCCESS_T))
    return {"unreachable-state"}


def _trap(d: Draft, v: str, which: int) -> set[str]:
    d.add("pit")
    d.transitions += [
        TransitionSpec(d.initial, "pit", guard=true_guard(), order=-1),
        TransitionSpec("pit", "pit", default=True, max_traversals=1),
    ]
    return {"trap-state", "trap-cycle"}


def _unbounded_cycle(d: Draft, v: str, which: int) -> set[str]:
    d.add("spin_a")
    d.add("spin_b")
    d.transitions += [
        TransitionSpec(d.initial, "spin_a", guard=true_guard(), order=-2),
        TransitionSpec("spin_a", "spin_b", guard=true_guard(), order=0),
        TransitionSpec("spin_a", SUCCESS_T, default=True, order=1),
        TransitionSpec("spin_b", "spin_a"),
    ]
    return {"unbounded-cycle"}


def _unset_read(d: Draft, v: str, which: int) -> set[str]:
    d.modify(d.initial, reads=("a",), optional_reads=())
    return {"unset-read"}


def _no_exit(d: Draft, v: str, which: int) -> set[str]:
    d.add("stuck")
    return {"no-exit"}


def _dead_transition(d: Draft, v: str, which: int) -> set[str]:
    d.add("eager")
    d.transitions += [
        TransitionSpec("eager", SUCCESS_T, order=0),
        TransitionSpec("eager", FAILURE_T, guard=true_guard(), order=1),
    ]
    return {"dead-transition"}


def _no_failure_terminal(d: Draft, v: str, which: int) -> set[str]:
    for s in list(d.states):
        if s.terminal and s.outcome is Outcome.FAILURE:
            d.modify(s.name, outcome=Outcome.SUCCESS)
    return {"no-failure-terminal"}


def _terminal_exit(d: Draft, v: str, which: int) -> set[str]:
    d.transitions.append(TransitionSpec(SUCCESS_T, d.initial))
    return {"terminal-exit"}


Injection = Callable[[Draft, str, int], set[str]]
NEEDS_ONE_INITIAL: list[Injection] = [_unreachable, _trap, _unbounded_cycle, _unset_read]
ANY_TIME: list[Injection] = [
    _unknown_state, _duplicate_state, _bad_action, _bad_bound, _bad_error_type, _no_exit,
    _dead_transition, _no_failure_terminal, _terminal_exit,
]


@st.composite
def broken_specs(draw: st.DrawFn) -> tuple[WorkflowSpec, list[tuple[str, set[str]]]]:
    """A well-formed spec with one or more problems injected, and the codes each must produce."""
    draft = Draft(draw(specs()))
    initial_problem = draw(st.sampled_from([None, _no_initial, _several_initial]))
    pool = ANY_TIME + ([] if initial_problem else NEEDS_ONE_INITIAL)
    chosen = draw(st.lists(st.sampled_from(pool), unique=True, min_size=0 if initial_problem else 1,
                           max_size=4))
    if initial_problem:
        chosen.append(initial_problem)
    expected = []
    for inject in chosen:
        v = draw(st.sampled_from(draft.inner))
        expected.append((inject.__name__, inject(draft, v, draw(st.integers(0, 2)))))
    return draft.spec(), expected


@PROPS
@given(broken_specs())
def test_injected_problems_are_all_reported(case: tuple[WorkflowSpec, list[tuple[str, set[str]]]]) -> None:
    """Every injected problem makes ``check`` raise DefinitionError listing (one of) its codes."""
    spec, expected = case
    report = analyze(spec)
    with pytest.raises(DefinitionError) as info:
        check(spec)
    found = codes(info.value)
    assert found == codes(report)
    for what, wanted in expected:
        assert found & wanted, f"{what}: expected one of {sorted(wanted)} in {sorted(found)}"


# Arbitrary, loosely typed declarations: the checker must report, never crash.


class LooseModel(BaseModel):  # no validate_assignment
    a: int | None = None


WEIRD_NAMES = ["s0", "s1", "ok", "fail", "", "  ", 3, None]
WEIRD_BOUNDS = [None, 1, 2, 0, -1, True, 1.5, "3"]
WEIRD_FIELDS: list[Any] = [(), ("a",), ("a", "b"), ("zzz",), "a", (1,), ["a"], None]
WEIRD_ACTIONS: list[Any] = [noop, None, "act", lambda a, b: None, lambda *a: None, len, print]
WEIRD_ERRORS: list[Any] = [ValueError, Exception, int, KeyboardInterrupt, "ValueError", None, list[int]]
WEIRD_GUARDS: list[Any] = [None, true_guard(), true_guard(("a", "zzz")), Guard(lambda a, b: True),
                           always, "guard"]


WEIRD_TRANSITION_NAMES: list[Any] = ["", "go", "go", "a b", "x" * 65, 3, None, ("go",)]


class _OddTool:
    """A tool-like object whose ``definition_problems`` misbehaves in one of several ways."""

    def __init__(self, name: Any, answer: Any) -> None:
        self.name = name
        self.answer = answer
        self.fallback = "nope" if name == "b" else None

    def definition_problems(self) -> Any:
        if self.answer == "raise":
            raise ValueError("broken tool")
        return self.answer


WEIRD_TOOLS: list[Any] = [
    "a string", None, _OddTool("a", ()), _OddTool("a", "raise"), _OddTool("b", [Problem("bad-option", "x")]),
    _OddTool("c", ["junk", None]), _OddTool(None, ()), _OddTool("d", 42),
]
WEIRD_PROBLEMS: list[Any] = [(), None, "junk", (Problem("foreign-state", "x", "s0"),), ("junk", 3), [None]]


@st.composite
def chaotic_specs(draw: st.DrawFn) -> WorkflowSpec:
    """A spec whose every attribute may be wrong, in type or in value."""
    names = st.sampled_from(WEIRD_NAMES)
    states = draw(st.lists(st.builds(
        StateSpec,
        name=names,
        action=st.sampled_from(WEIRD_ACTIONS),
        reads=st.sampled_from(WEIRD_FIELDS),
        writes=st.sampled_from(WEIRD_FIELDS),
        optional_reads=st.sampled_from(WEIRD_FIELDS),
        optional_writes=st.sampled_from(WEIRD_FIELDS),
        initial=st.booleans(),
        terminal=st.booleans(),
        outcome=st.sampled_from([None, Outcome.SUCCESS, Outcome.FAILURE, "success", "meh"]),
        decision=st.booleans(),
        max_visits=st.sampled_from(WEIRD_BOUNDS),
        on_no_exit=st.sampled_from([NoExit.ERROR, NoExit.FAIL, "fail", "bogus"]),
    ), max_size=6))
    transitions = draw(st.lists(st.builds(
        TransitionSpec,
        source=names,
        target=names,
        guard=st.sampled_from(WEIRD_GUARDS),
        default=st.booleans(),
        max_traversals=st.sampled_from(WEIRD_BOUNDS),
        description=st.sampled_from(["", "go", None]),
        order=st.integers(-1, 3),
        name=st.sampled_from(WEIRD_TRANSITION_NAMES),
    ), max_size=8))
    errors = draw(st.lists(st.builds(
        ErrorTransitionSpec,
        source=names,
        error=st.sampled_from(WEIRD_ERRORS),
        target=names,
        max_traversals=st.sampled_from(WEIRD_BOUNDS),
        order=st.integers(0, 2),
        name=st.sampled_from(WEIRD_TRANSITION_NAMES),
    ), max_size=4))
    return WorkflowSpec(
        draw(st.sampled_from(["chaos", "", None])),
        draw(st.sampled_from([Ctx, LooseModel, int, "Ctx"])),
        tuple(states),
        tuple(transitions),
        tuple(errors),
        max_steps=draw(st.sampled_from(WEIRD_BOUNDS)),
        tools=tuple(draw(st.lists(st.sampled_from(WEIRD_TOOLS), max_size=3))),
        problems=draw(st.sampled_from(WEIRD_PROBLEMS)),
    )


@PROPS
@given(chaotic_specs())
def test_checker_never_crashes_on_chaotic_specs(spec: WorkflowSpec) -> None:
    """``analyze`` always returns a report; ``check`` raises DefinitionError exactly when it has problems."""
    report = analyze(spec)
    assert isinstance(report, CheckReport)
    if report.problems:
        with pytest.raises(DefinitionError) as info:
            check(spec)
        assert info.value.problems == report.problems
    else:
        assert check(spec).problems == ()


@PROPS
@given(specs(), st.sampled_from([0, -1, True, 1.5, "3"]))
def test_bad_visit_bound_is_reported_not_crashed_on(spec: WorkflowSpec, bad: Any) -> None:
    """A state with an invalid ``max_visits`` gets a bad-bound problem, whatever the graph around it."""
    draft = Draft(spec)
    for v in draft.inner:
        draft.modify(v, max_visits=bad)
    report = analyze(draft.spec())
    assert "bad-bound" in codes(report)


# --- minimal counterexamples the properties above found ------------------------------------------


def _tiny(states: list[StateSpec], transitions: list[TransitionSpec]) -> WorkflowSpec:
    terminals = (StateSpec(SUCCESS_T, terminal=True, outcome=Outcome.SUCCESS),
                 StateSpec(FAILURE_T, terminal=True, outcome=Outcome.FAILURE))
    return WorkflowSpec("tiny", Ctx, (*states, *terminals), tuple(transitions))


_LOOP_OR_FINISH = [TransitionSpec("s0", "s0", guard=true_guard(), order=0),
                   TransitionSpec("s0", SUCCESS_T, default=True, order=1)]

CRASHERS = {
    "reads=None": _tiny([StateSpec("s0", noop, initial=True, reads=None)],  # type: ignore[arg-type]
                        [TransitionSpec("s0", SUCCESS_T)]),
    "writes=None": _tiny([StateSpec("s0", noop, initial=True, writes=None)],  # type: ignore[arg-type]
                         [TransitionSpec("s0", SUCCESS_T)]),
    "max_visits='3' on a loop": _tiny([StateSpec("s0", noop, initial=True, max_visits="3")],  # type: ignore[arg-type]
                                      _LOOP_OR_FINISH),
    "non-str target of a guard that reads an unset field": _tiny(
        [StateSpec("s0", noop, initial=True)],
        [TransitionSpec("s0", None, guard=true_guard(["a"]), order=0),  # type: ignore[arg-type]
         TransitionSpec("s0", SUCCESS_T, default=True, order=1)],
    ),
}


@pytest.mark.parametrize("spec", list(CRASHERS.values()), ids=list(CRASHERS))
def test_malformed_minimal_specs_are_reported_not_crashed_on(spec: WorkflowSpec) -> None:
    """Each minimal malformed spec the chaos property shrank to gets a report and a DefinitionError."""
    report = analyze(spec)
    assert report.problems
    with pytest.raises(DefinitionError):
        check(spec)


def test_worst_case_counts_a_run_stopped_by_an_exhausted_traversal_budget() -> None:
    """A run A, B, A, B that stops on B's spent exit runs 4 actions, so the bound is at least 4."""
    spec = _tiny(
        [StateSpec("A", noop, initial=True), StateSpec("B", noop)],
        [TransitionSpec("A", SUCCESS_T, guard=true_guard(), order=0),
         TransitionSpec("A", "B", default=True, order=1),
         TransitionSpec("B", "A", max_traversals=1)],
    )
    report, model = analyze(spec), model_of(spec)
    assert report.ok
    assert model.longest(must_finish=True) == 3  # A, B, A, then ok
    assert model.longest(must_finish=False) == 4  # A, B, A, B: B's only exit is spent
    assert report.worst_case_steps is not None
    assert report.worst_case_steps >= 4
