"""The checker stays near-linear on large specs (issue 17), checked without timing anything.

Timing is ``benchmarks/bench_check.py``'s job. What keeps the ratio 500 -> 5,000 states near 10x
is how much memory the analysis walks: past the CPU's caches every pass pays for it. So this pins
the peak memory an analysis allocates per state on the benchmark's shapes, and checks the
algorithms restructured for it (Tarjan without an on-stack set, the one-state loop weighed without
a :class:`_LoopWeigher`) against independent models.
"""

from __future__ import annotations

import gc
import importlib.util
import tracemalloc
import typing
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine_agent._graph import strongly_connected_components
from statemachine_agent._rules import Analysis, Edge, EdgeKind, _LoopWeigher, _weigh_alone
from statemachine_agent.check import analyze
from statemachine_agent.spec import WorkflowSpec

PROPS = settings(max_examples=150, deadline=None)
STATES = 2000
PEAK_PER_STATE = 1050
"""Bytes an analysis may allocate at its peak per state of a benchmark shape (1,213-1,398 before
issue 17; 551-918 after)."""


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_check.py"
    spec = importlib.util.spec_from_file_location("bench_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SHAPES: dict[str, Callable[[int], WorkflowSpec]] = _bench().SHAPES


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_an_analysis_allocates_a_bounded_amount_per_state(shape: str) -> None:
    spec = SHAPES[shape](STATES)
    assert analyze(spec).ok  # and warm: imports, signature caches
    gc.collect()
    tracemalloc.start()
    try:
        report = analyze(spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok
    assert peak / STATES <= PEAK_PER_STATE, f"{shape}: {peak / STATES:.0f} bytes per state at the peak"


# --- Tarjan ------------------------------------------------------------------------------------------


@st.composite
def graphs(draw: st.DrawFn) -> tuple[list[str], dict[str, list[Edge]]]:
    """Nodes and their edges, every edge between two of the nodes."""
    k = draw(st.integers(1, 9))
    nodes = [f"n{i}" for i in range(k)]
    out = {v: [Edge(v, w, None, EdgeKind.TRANSITION) for w in draw(st.lists(st.sampled_from(nodes), max_size=3))]
           for v in nodes}
    return draw(st.permutations(nodes)), out


def _closure(nodes: list[str], out: dict[str, list[Edge]]) -> dict[str, set[str]]:
    """What each node reaches in one or more steps, by iterating to a fixpoint."""
    reach = {v: {e.target for e in out[v]} for v in nodes}
    changed = True
    while changed:
        changed = False
        for v in nodes:
            more = set().union(*(reach[w] for w in reach[v])) - reach[v]
            if more:
                reach[v] |= more
                changed = True
    return reach


@PROPS
@given(graphs())
def test_components_are_the_mutually_reachable_groups_sinks_first(graph: tuple[list[str], dict[str, list[Edge]]]
                                                                   ) -> None:
    nodes, out = graph
    comps = strongly_connected_components(nodes, out)
    assert sorted(v for comp in comps for v in comp) == sorted(nodes)
    reach = _closure(nodes, out)
    where = {v: i for i, comp in enumerate(comps) for v in comp}
    for v in nodes:
        for w in nodes:
            together = v == w or (w in reach[v] and v in reach[w])
            assert (where[v] == where[w]) == together
    # Sinks first: no edge leads to a component that comes later.
    assert all(where[e.target] <= where[v] for v in nodes for e in out[v])


# --- one-state loops ---------------------------------------------------------------------------------


@PROPS
@given(st.none() | st.integers(1, 6), st.lists(st.none() | st.integers(1, 6), min_size=1, max_size=3))
def test_a_one_state_loop_weighs_what_the_loop_weigher_finds(bound: int | None, loops: list[int | None]) -> None:
    if bound is None:
        loops = [b or 1 for b in loops]  # a state with no bound loops only along bounded edges
    a = Analysis(typing.cast(WorkflowSpec, None))
    if bound is not None:
        a.visit_bound["s"] = bound
    edges = [Edge("s", "s", b, EdgeKind.TRANSITION, f"loop{i}") for i, b in enumerate(loops)]
    weigher = _LoopWeigher(a, ["s"], {"s": edges}, {"s": edges})
    entered = frozenset(["s"])
    expected = {weigher(entered, None), weigher(entered, "s")}
    assert expected == {_weigh_alone(bound, edges)}
