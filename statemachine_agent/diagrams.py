"""Diagrams of workflows and runs: spec -> plain graph data -> DOT (Graphviz) or Mermaid text."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import graphviz

from .errors import StateMachineAgentError
from .spec import Outcome

if TYPE_CHECKING:
    from .compile import CompiledWorkflow
    from .result import RunResult

__all__ = ["DiagramEdge", "DiagramNode", "GraphvizMissing", "extract", "to_dot", "to_mermaid",
           "write_diagrams"]


class GraphvizMissing(StateMachineAgentError, RuntimeError):
    """Graphviz's ``dot`` binary is not installed, so SVG or PNG cannot be rendered."""


@dataclass(frozen=True, slots=True)
class DiagramNode:
    """A state, as drawn."""

    name: str
    kind: str
    """``initial``, ``state``, ``decision`` or ``terminal``."""
    outcome: str | None
    label: str
    visits: int = 0


@dataclass(frozen=True, slots=True)
class DiagramEdge:
    """A transition, as drawn."""

    source: str
    target: str
    kind: str
    """``transition``, ``default``, ``error`` or ``fail``."""
    label: str
    taken: int = 0


def extract(workflow: CompiledWorkflow[Any], run: RunResult[Any] | None = None
            ) -> tuple[list[DiagramNode], list[DiagramEdge]]:
    """The workflow (and optionally a run over it) as plain nodes and edges, in spec order."""
    spec = workflow.spec
    visits: Counter[str] = Counter()
    taken: Counter[str] = Counter()
    if run is not None:
        for step in run.path:
            if step.ran:
                visits[step.state] += 1
            taken[step.transition if step.kind != "fail" else f"fail:{step.state}"] += 1
        visits[run.terminal] += 1
    nodes: list[DiagramNode] = []
    for s in spec.states:
        if s.terminal:
            kind = "terminal"
        elif s.initial:
            kind = "initial"
        else:
            kind = "decision" if s.decision else "state"
        extra = [f"max {s.max_visits} visit{'s' if s.max_visits != 1 else ''}"] if s.max_visits else []
        label = s.name if not extra else f"{s.name}\n({', '.join(extra)})"
        nodes.append(DiagramNode(s.name, kind, s.outcome.value if s.outcome else None, label,
                                 visits[s.name]))
    edges: list[DiagramEdge] = []
    exits = Counter(t.source for t in spec.transitions)
    for t in spec.transitions:
        parts = []
        if t.guard is not None:
            parts.append(f"[{t.guard.name}]")
        elif t.default:
            parts.append("[else]")
        if t.description and (t.guard is None or spec.state(t.source).decision):
            parts.append(t.description)
        if t.max_traversals:
            parts.append(f"max {t.max_traversals}x")
        # The order matters only where a state has a choice of exits.
        order = f"{t.order + 1}." if exits[t.source] > 1 else ""
        label = " ".join(filter(None, [order, *parts]))
        edges.append(DiagramEdge(t.source, t.target, "default" if t.default else "transition", label,
                                 taken[t.name]))
    for e in spec.error_transitions:
        label = f"on {e.error.__name__}" + (f" max {e.max_traversals}x" if e.max_traversals else "")
        edges.append(DiagramEdge(e.source, e.target, "error", label, taken[e.name]))
    if run is not None:
        for step in run.path:
            if step.kind == "fail":
                edges.append(DiagramEdge(step.state, step.target, "fail",
                                         (run.reason or "failed")[:60], 1))
    return nodes, edges


_OUTCOME_COLOUR = {Outcome.SUCCESS.value: "#2e7d32", Outcome.FAILURE.value: "#c62828"}


def to_dot(workflow: CompiledWorkflow[Any], run: RunResult[Any] | None = None, *,
           rankdir: str = "LR") -> graphviz.Digraph:
    """A ``graphviz.Digraph`` of the workflow, with ``run`` laid over it when given."""
    nodes, edges = extract(workflow, run)
    title = f"{workflow.name} (worst case {workflow.max_steps} steps)"
    if run is not None:
        title += f"\\nrun {run.run_id[:8]}: {run.terminal} ({run.outcome.value}, {run.steps} steps)"
    g = graphviz.Digraph(name=workflow.name, graph_attr={
        "rankdir": rankdir, "label": title, "labelloc": "t", "fontname": "Helvetica", "fontsize": "14",
    }, node_attr={"fontname": "Helvetica", "fontsize": "11"}, edge_attr={"fontname": "Helvetica",
                                                                          "fontsize": "9"})
    g.node("__start__", "", shape="point", width="0.15")
    for n in nodes:
        attrs: dict[str, str] = {"shape": "box", "style": "rounded"}
        if n.kind == "decision":
            attrs = {"shape": "diamond", "style": ""}
        if n.kind == "terminal":
            colour = _OUTCOME_COLOUR.get(n.outcome or "", "black")
            attrs = {"shape": "doublecircle", "color": colour, "fontcolor": colour}
        label = n.label
        if run is not None and n.visits:
            label += f"\n×{n.visits}"
            attrs["penwidth"] = "2.5"
            attrs["style"] = ",".join(filter(None, [attrs.get("style", ""), "filled"]))
            attrs["fillcolor"] = "#fff3c4" if n.kind != "terminal" else "#e8f5e9" \
                if n.outcome == "success" else "#ffebee"
        g.node(n.name, label.replace("\n", "\\n"), **attrs)  # DOT's own line break escape
    initial = next(n.name for n in nodes if n.kind == "initial")
    g.edge("__start__", initial)
    for e in edges:
        attrs = {}
        if e.kind == "default":
            attrs["style"] = "dashed"
        elif e.kind == "error":
            attrs.update(color="#c62828", fontcolor="#c62828", style="dotted")
        elif e.kind == "fail":
            attrs.update(color="#c62828", fontcolor="#c62828", style="bold")
        label = e.label
        if run is not None and e.taken:
            label += f" (×{e.taken})"
            attrs["penwidth"] = "2.5"
            attrs.setdefault("color", "#1565c0")
        g.edge(e.source, e.target, label, **attrs)
    return g


def to_mermaid(workflow: CompiledWorkflow[Any]) -> str:
    """The workflow as Mermaid ``stateDiagram-v2`` text (for GitHub and docs)."""
    nodes, edges = extract(workflow)
    lines = ["stateDiagram-v2", f"    %% {workflow.name}: worst case {workflow.max_steps} steps"]
    for n in nodes:
        if n.kind == "decision":
            lines.append(f"    state {n.name} <<choice>>")
    for n in nodes:
        if n.kind == "initial":
            lines.append(f"    [*] --> {n.name}")
    for e in edges:
        label = e.label.replace(":", " ").replace("\n", " ")
        lines.append(f"    {e.source} --> {e.target}" + (f": {label}" if label else ""))
    for n in nodes:
        if n.kind == "terminal":
            lines.append(f"    {n.name} --> [*]")
            lines.append(f"    note right of {n.name}: {n.outcome}")
    return "\n".join(lines) + "\n"


def render(graph: graphviz.Digraph, path: str | Path, fmt: str) -> Path:
    """Render ``graph`` to ``path`` in ``fmt`` (svg, png, pdf) with Graphviz's ``dot``."""
    if shutil.which("dot") is None:
        raise GraphvizMissing(
            f"cannot render {fmt.upper()}: Graphviz's 'dot' binary is not on PATH. Install the system "
            "package graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz), "
            "or write DOT source instead"
        )
    try:
        data = graph.pipe(format=fmt)
    except graphviz.ExecutableNotFound as exc:  # found on PATH but not runnable
        raise GraphvizMissing(f"cannot render {fmt.upper()}: Graphviz's 'dot' could not run ({exc}); "
                              "reinstall the system package graphviz") from exc
    out = Path(path)
    out.write_bytes(data)
    return out


def write_diagrams(workflow: CompiledWorkflow[Any], directory: str | Path,
                   run: RunResult[Any] | None = None) -> Iterable[Path]:
    """Write ``NAME.dot`` and ``NAME.mmd`` (and ``NAME.svg`` when ``dot`` is installed), plus
    ``NAME.run.dot``/``.svg`` for ``run``; return the paths written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    graph = to_dot(workflow)
    dot_path = out / f"{workflow.name}.dot"
    dot_path.write_text(graph.source, encoding="utf-8")
    written.append(dot_path)
    mmd = out / f"{workflow.name}.mmd"
    mmd.write_text(to_mermaid(workflow), encoding="utf-8")
    written.append(mmd)
    has_dot = shutil.which("dot") is not None
    if has_dot:
        written.append(render(graph, out / f"{workflow.name}.svg", "svg"))
    if run is not None:
        run_graph = to_dot(workflow, run)
        run_dot = out / f"{workflow.name}.run.dot"
        run_dot.write_text(run_graph.source, encoding="utf-8")
        written.append(run_dot)
        if has_dot:
            written.append(render(run_graph, out / f"{workflow.name}.run.svg", "svg"))
    return written
