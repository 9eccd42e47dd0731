"""Diagrams (a first cut; the diagrams issue extends this): one node per state, one edge per move."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from broken_specs import base, noop
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine_agent import guard
from statemachine_agent.diagrams import GraphvizMissing, diagram, render, to_dot, to_mermaid
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




def tiny():  # type: ignore[no-untyped-def]
    """A decision state, a guarded loop with a bound, an error route, two terminals."""
    wf = base("tiny")
    wf.add_state("ask", noop, initial=True, decision=True, max_visits=2)
    wf.transition("ask", "done", description="answer")
    wf.transition("ask", "ask", description="ask again", max_traversals=1)
    wf.on_error("ask", ValueError, "failed")
    return wf.compile()


GOLDEN_DOT = """digraph tiny {
\tgraph [fontname=Helvetica fontsize=14 label="tiny (worst case 2 steps)" labelloc=t nodesep=0.35 \
rankdir=LR ranksep=0.5]
\tnode [fontname=Helvetica fontsize=11]
\tedge [fontname=Helvetica fontsize=9]
\t__start__ [label="" shape=point width=0.15]
\tdone [label=done color="#2e7d32" fontcolor="#2e7d32" peripheries=2 shape=box style="rounded,bold"]
\tfailed [label=failed color="#c62828" fontcolor="#c62828" peripheries=2 shape=box style="rounded,bold"]
\task [label="ask\\n(max 2 visits)" shape=diamond style=""]
\t__start__ -> ask
\task -> done [label="1. answer"]
\task -> ask [label="2. ask again max 1x"]
\task -> failed [label="on ValueError" color="#c62828" fontcolor="#c62828" style=dotted]
}
"""

GOLDEN_MERMAID = """stateDiagram-v2
    %% tiny: worst case 2 steps
    state ask <<choice>>
    [*] --> ask
    ask --> done: 1. answer
    ask --> ask: 2. ask again max 1x
    ask --> failed: on ValueError
    done --> [*]
    note right of done: success
    failed --> [*]
    note right of failed: failure
"""


def test_golden_dot_and_mermaid() -> None:
    """The DOT and Mermaid of a small spec are exactly as expected."""
    compiled = tiny()
    assert to_dot(compiled).source == GOLDEN_DOT
    assert to_mermaid(compiled) == GOLDEN_MERMAID


def test_run_from_a_recorded_path_matches_the_live_one(tmp_path: Path) -> None:
    """A run saved as JSON draws the same overlay as the result it came from."""
    import json

    compiled = research.workflow.compile()
    result = compiled.run_sync(research.ResearchContext(question="zebra quokka"))
    recorded = json.loads(json.dumps(result.to_dict()))
    assert to_dot(compiled, recorded).source == to_dot(compiled, result).source
    assert diagram(result).source == to_dot(compiled, result).source
    with pytest.raises(ValueError, match="not a recorded run"):
        to_dot(compiled, {"path": "nope"})
    recorded["path"][0]["state"] = "elsewhere"
    with pytest.raises(ValueError, match="does not declare"):
        to_dot(compiled, recorded)


def test_failing_step_is_marked_with_its_error() -> None:
    """The state whose action raised carries the error type, and the fail edge the reason."""
    wf = base("boom")

    def explode(ctx: object) -> None:
        raise KeyError("k")

    wf.add_state("act", explode, initial=True)
    wf.transition("act", "done")
    compiled = wf.compile()
    dot = to_dot(compiled, compiled.run_sync({"question": "q"}, raise_errors=False)).source
    assert "act\\n✗ KeyError\\n×1" in dot
    assert 'act -> failed [label="state \'act\' raised KeyError:' in dot


def test_jupyter_and_diagram_entry_points() -> None:
    """Workflows and results show as SVG in Jupyter; diagram() hands back the Digraph."""
    compiled = research.workflow.compile()
    bundle = compiled._repr_mimebundle_()
    assert bundle["image/svg+xml"].lstrip().startswith("<?xml")
    assert bundle["text/plain"].startswith("<CompiledWorkflow 'research'")
    result = compiled.run_sync(research.ResearchContext(question="How are loops bounded?"))
    assert "<svg" in result._repr_mimebundle_()["image/svg+xml"]
    assert diagram(research.workflow).source == diagram(compiled).source
    assert diagram(compiled, rankdir="TB").graph_attr["rankdir"] == "TB"
    with pytest.raises(ValueError, match="rankdir='sideways'"):
        diagram(compiled, rankdir="sideways")


def test_large_workflows_read_top_to_bottom(tmp_path: Path) -> None:
    """Over 12 states the default layout is top to bottom, and dot renders it."""
    wf = base("chain")
    names = [f"step_{i:02d}" for i in range(22)]
    for i, n in enumerate(names):
        wf.add_state(n, noop, initial=i == 0)
    for a, b in zip(names, [*names[1:], "done"], strict=True):
        wf.transition(a, b)
    compiled = wf.compile()
    assert diagram(compiled).graph_attr["rankdir"] == "TB"
    assert render(diagram(compiled), tmp_path / "chain.png", "png").stat().st_size > 1000


def test_cli_draws_a_recorded_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`diagram --run run.json` overlays a run recorded by `run --json`."""
    from statemachine_agent.cli import main

    target = "statemachine_agent.examples.research:workflow"
    assert main(["run", target, "--input", '{"question": "checker quokka"}', "--json"]) == 0
    run_file = tmp_path / "run.json"
    run_file.write_text(capsys.readouterr().out, encoding="utf-8")
    out = tmp_path / "run.dot"
    assert main(["diagram", target, "-o", str(out), "--run", str(run_file)]) == 0
    assert "(×2)" not in out.read_text(encoding="utf-8")  # each edge once except the loop states
    assert "search\\n(max 2 visits)\\n×2" in out.read_text(encoding="utf-8")
    assert main(["diagram", target, "-o", str(tmp_path / "x.mmd"), "--run", str(run_file)]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    assert main(["diagram", target, "-o", str(out), "--run", str(bad)]) == 2
    assert "is not JSON" in capsys.readouterr().err


def test_odd_names_and_labels_survive_both_formats(tmp_path: Path) -> None:
    """Dashes, spaces, reserved words, backslashes and HTML-like names render, and read back as written."""
    wf = base("odd-names")
    for i, name in enumerate(["fetch-data", "note", "<init>", "ends\\", "two words"]):
        wf.add_state(name, noop, initial=i == 0)
    wf.transition("fetch-data", "note", guard=guard(lambda c: True, name='a;b] "q" C:\\new <x>'))
    wf.transition("fetch-data", "<init>", default=True)
    wf.transition("note", "ends\\").transition("<init>", "ends\\").transition("ends\\", "two words")
    wf.transition("two words", "done")
    compiled = wf.compile()
    mermaid = to_mermaid(compiled)
    assert 'state "fetch-data" as s2' in mermaid  # ids follow declaration order; terminals came first
    assert 'state "note" as s3' in mermaid  # a reserved word
    assert "s2 --> s3: 1. [a#59;b] \"q\" C#58;\\new #lt;x#gt;]" in mermaid
    assert "    s6 --> done" in mermaid
    svg = (render(diagram(compiled), tmp_path / "odd.svg", "svg")).read_text(encoding="utf-8")
    assert "&lt;init&gt;" in svg  # drawn as text, not taken for an HTML label
    assert "ends\\" in svg
    assert "C:\\new" in svg


@pytest.mark.parametrize("name", ["ends\\", "a\\\\", 'q"uote\\', "line\nbreak\\", "wÑ\\"])
def test_a_name_ending_in_a_backslash_gives_dot_that_graphviz_reads(name: str) -> None:
    """Workflow, state and run names are escaped in the title and graph name too: a trailing
    backslash used to end DOT's quoted string (graphviz warned, and dot refused the file)."""
    import warnings

    from statemachine_agent import Context, Workflow

    class C(Context):
        n: int = 0

    wf = Workflow(name, C)

    @wf.state(initial=True, reads=[], writes=[])
    def start(ctx: C) -> None:
        return None

    wf.terminal(name + "end")
    wf.terminal("failed", outcome="failure")
    wf.transition("start", name + "end")
    compiled = wf.compile()
    result = compiled.run_sync(C(), run_id=name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source = diagram(compiled, result).source
    out = subprocess.run(["dot", "-Tsvg"], input=source, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
