"""Diagrams (a first cut; the diagrams issue extends this): one node per state, one edge per move."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from broken_specs import base, noop
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine_agent import guard
from statemachine_agent.diagrams import GraphvizMissing, render, to_dot, to_mermaid
from statemachine_agent.examples import research


@st.composite
def chains(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    """A valid chain of states with optional guarded skips to done and error routes."""
    n = draw(st.integers(1, 6))
    wf = base("gen")
    names = [f"s{i}" for i in range(n)]
    for i, name in enumerate(names):
        wf.add_state(name, noop, initial=i == 0)
    for i, name in enumerate(names):
        nxt = names[i + 1] if i + 1 < n else "done"
        if draw(st.booleans()):
            wf.transition(name, "done", guard=guard(lambda c: c.attempts > 3, name=f"skip{i}"))
            wf.transition(name, nxt, default=True)
        else:
            wf.transition(name, nxt)
        if draw(st.booleans()):
            wf.on_error(name, ValueError, "failed")
    return wf.compile()


@settings(max_examples=50, deadline=None)
@given(chains())
def test_dot_and_mermaid_have_one_node_per_state_and_one_edge_per_transition(compiled) -> None:  # type: ignore[no-untyped-def]
    """Every state is one node and every declared move one edge, in DOT and in Mermaid."""
    spec = compiled.spec
    moves = len(spec.transitions) + len(spec.error_transitions)
    dot = to_dot(compiled).source
    nodes = [n for n in re.findall(r"^\t(\w+) \[", dot, flags=re.M) if n not in ("graph", "node", "edge")]
    assert sorted(nodes) == sorted(["__start__", *(s.name for s in spec.states)])
    assert dot.count(" -> ") == moves + 1  # plus the arrow into the initial state
    mermaid = to_mermaid(compiled)
    arrows = [line for line in mermaid.splitlines() if " --> " in line and "[*]" not in line]
    assert len(arrows) == moves


def test_diagram_text_is_deterministic() -> None:
    """The same spec gives the same DOT and Mermaid bytes."""
    a, b = research.build().compile(), research.build().compile()
    assert to_dot(a).source == to_dot(b).source
    assert to_mermaid(a) == to_mermaid(b)


def test_committed_example_diagrams_are_up_to_date() -> None:
    """diagrams/ holds the current DOT and Mermaid of the example (run `make diagrams` to refresh)."""
    root = Path(__file__).resolve().parents[1] / "diagrams"
    compiled = research.workflow.compile()
    assert (root / "research.dot").read_text(encoding="utf-8") == to_dot(compiled).source
    assert (root / "research.mmd").read_text(encoding="utf-8") == to_mermaid(compiled)


def test_svg_with_the_real_dot(tmp_path: Path) -> None:
    """Rendering to SVG uses Graphviz's dot binary."""
    assert shutil.which("dot"), "make test installs Graphviz; install it to run this test"
    out = render(to_dot(research.workflow.compile()), tmp_path / "r.svg", "svg")
    assert "<svg" in out.read_text(encoding="utf-8")


def test_missing_dot_names_the_package(tmp_path: Path) -> None:
    """Without dot on PATH, rendering says which package to install instead of crashing."""
    code = (
        "from statemachine_agent.diagrams import render, to_dot, GraphvizMissing\n"
        "from statemachine_agent.examples import research\n"
        "try:\n"
        f"    render(to_dot(research.workflow.compile()), {str(tmp_path / 'x.svg')!r}, 'svg')\n"
        "except GraphvizMissing as e:\n    print(e)\n"
    )
    env = {"PATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "apt-get install graphviz" in out.stdout
    assert issubclass(GraphvizMissing, RuntimeError)


def test_run_overlay_counts_visits(tmp_path: Path) -> None:
    """A run diagram marks visited states and taken edges with their counts."""
    compiled = research.workflow.compile()
    result = compiled.run_sync(research.ResearchContext(question="checker quokka"))
    dot = to_dot(compiled, result).source
    assert "search\\n(max 2 visits)\\n×2" in dot
    assert "(×1)" in dot


