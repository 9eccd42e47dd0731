"""Diagrams of workflows and runs: spec -> plain graph data -> DOT (Graphviz) or Mermaid text.

Diagrams are functions over a compiled workflow (and a run): :func:`diagram` and :func:`mermaid`,
not methods of ``CompiledWorkflow`` or ``RunResult``, which sit in layers below this one (see
docs/design.md). Jupyter's display of both reaches :func:`jupyter_display` through the slot the
package facade fills (``compile.set_display``). The file formats are one registry, :data:`FORMATS`,
which the command line's ``diagram`` uses.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import re
import shutil
import stat
import typing
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import graphviz

from .errors import StateMachineAgentError, error_name
from .result import RunResult, StepKind
from .spec import Outcome, WorkflowSpec
from .workflow import Workflow

if TYPE_CHECKING:
    from .compile import CompiledWorkflow

__all__ = ["FORMATS", "DiagramEdge", "DiagramEdgeKind", "DiagramFormat", "DiagramNode", "DiagramNodeKind",
           "GraphvizMissing", "OutputRefused", "OverlayOutcome", "RunOverlay", "diagram", "extract", "format_of",
           "jupyter_display", "mermaid", "register_format", "render", "to_dot", "to_mermaid", "to_svg",
           "write_diagrams", "write_file"]


class Drawable(Protocol):
    """What a diagram needs of a compiled workflow (a ``CompiledWorkflow`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> WorkflowSpec: ...

    @property
    def max_steps(self) -> int: ...

    @property
    def failure_terminal(self) -> str: ...


class GraphvizMissing(StateMachineAgentError, RuntimeError):
    """Graphviz's ``dot`` binary is not installed, so SVG or PNG cannot be rendered."""


class OutputRefused(StateMachineAgentError, ValueError):
    """A diagram's output path is a symbolic link, or not a regular file: nothing was written."""


class DiagramNodeKind(enum.StrEnum):
    """How a state is drawn."""

    STATE = "state"
    DECISION = "decision"
    TERMINAL = "terminal"


class DiagramEdgeKind(enum.StrEnum):
    """How a move is drawn."""

    TRANSITION = "transition"
    DEFAULT = "default"
    """A default (else) exit: dashed."""
    ERROR = "error"
    """An error transition."""
    FAIL = "fail"
    """A run's move to the failure terminal (drawn only over a run)."""


class OverlayOutcome(enum.StrEnum):
    """The ``outcome`` of an overlay that is not one run's (:class:`~.spec.Outcome`)."""

    COVERAGE = "coverage"
    """The overlay sums many runs (``testing.Coverage.overlay``)."""


@dataclass(frozen=True, slots=True)
class DiagramNode:
    """A state, as drawn."""

    name: str
    kind: DiagramNodeKind
    """``state``, ``decision`` or ``terminal``."""
    outcome: Outcome | None
    """A terminal's outcome."""
    label: str
    visits: int = 0
    initial: bool = False


@dataclass(frozen=True, slots=True)
class DiagramEdge:
    """A transition, as drawn."""

    source: str
    target: str
    kind: DiagramEdgeKind
    """``transition``, ``default``, ``error`` or ``fail``."""
    label: str
    taken: int = 0


@dataclass(frozen=True, slots=True)
class RunOverlay:
    """What a diagram needs of a run: plain data, from a :class:`RunResult` or a recorded one."""

    run_id: str
    terminal: str
    outcome: str
    """The run's :class:`~.spec.Outcome` value, or :attr:`OverlayOutcome.COVERAGE`."""
    steps: int
    reason: str | None
    visits: dict[str, int]
    taken: dict[str, int]
    """Times each transition was taken, by name (``fail:STATE`` for moves to the failure terminal)."""
    errors: dict[str, str]
    """The last error type raised in each state that raised."""

    @classmethod
    def of(cls, run: RunResult[Any] | dict[str, Any] | RunOverlay) -> RunOverlay:
        """Read a run result, or its recorded form (``result.to_dict()``, e.g. loaded from JSON)."""
        if isinstance(run, RunOverlay):
            return run
        if isinstance(run, dict):
            path, terminal, outcome, run_id, reason = _recorded(run)
        else:
            path = [(p.state, p.transition, p.kind, p.ran, error_name(p.error) if p.error else None)
                    for p in run.path]
            terminal, outcome, run_id, reason = run.terminal, run.outcome.value, run.run_id, run.reason
        visits: Counter[str] = Counter()
        taken: Counter[str] = Counter()
        errors: dict[str, str] = {}
        for state, transition, kind, ran, error in path:
            if ran:
                visits[state] += 1
            taken[transition if kind != StepKind.FAIL else f"fail:{state}"] += 1
            if error:
                errors[state] = error
        visits[terminal] += 1
        return cls(run_id, terminal, outcome, sum(1 for p in path if p[3]), reason, dict(visits),
                   dict(taken), errors)


_MISSING = object()
_RECORDED = "not a recorded run (as written by RunResult.to_dict() or `statemachine-agent run --json`)"


def _kind(value: Any) -> str:
    return "missing" if value is _MISSING else "null" if value is None else f"a {type(value).__name__}"


def _recorded(run: dict[str, Any]
              ) -> tuple[list[tuple[str, str, str, bool, str | None]], str, str, str, str | None]:
    """The parts of a recorded run a diagram draws, each checked for its type (``ValueError`` naming
    the first bad field): the run may come from any file."""

    def need(value: Any, types: type | tuple[type, ...], where: str, want: str) -> Any:
        if value is _MISSING or not isinstance(value, types):
            raise ValueError(f"{_RECORDED}: {where} should be {want}, not {_kind(value)}")
        return value

    steps = need(run.get("path", _MISSING), list, "'path'", "a list of steps")
    path: list[tuple[str, str, str, bool, str | None]] = []
    for i, p in enumerate(steps):
        need(p, dict, f"path[{i}]", "an object (a step)")
        state, transition, kind = (need(p.get(k, _MISSING), str, f"path[{i}].{k}", "a string")
                                   for k in ("state", "transition", "kind"))
        ran = need(p.get("ran", True), bool, f"path[{i}].ran", "true or false")
        error = need(p.get("error"), (str, type(None)), f"path[{i}].error", "a string or null")
        path.append((state, transition, kind, ran, (error or "").split(":")[0] or None))
    terminal = need(run.get("terminal", _MISSING), str, "'terminal'", "a string")
    outcome = need(run.get("outcome", _MISSING), str, "'outcome'", "a string")
    run_id = need(run.get("run_id", ""), str, "'run_id'", "a string")
    reason = need(run.get("reason"), (str, type(None)), "'reason'", "a string or null")
    return path, terminal, outcome, run_id, reason


def extract(workflow: Drawable, run: RunResult[Any] | dict[str, Any] | RunOverlay | None = None
            ) -> tuple[list[DiagramNode], list[DiagramEdge]]:
    """The workflow (and optionally a run over it) as plain nodes and edges, in spec order."""
    spec = workflow.spec
    overlay = RunOverlay.of(run) if run is not None else None
    drawn = [*overlay.visits, *(k[5:] for k in overlay.taken if k.startswith("fail:"))] if overlay else []
    for name in drawn:
        if not spec.has_state(name):
            raise ValueError(f"the run visits {name!r}, which workflow {spec.name!r} does not declare: "
                             "was it recorded from another workflow?")
    visits = overlay.visits if overlay else {}
    taken = overlay.taken if overlay else {}
    nodes: list[DiagramNode] = []
    for s in spec.states:
        kind = (DiagramNodeKind.TERMINAL if s.terminal else DiagramNodeKind.DECISION if s.decision
                else DiagramNodeKind.STATE)
        extra = [f"max {s.max_visits} visit{'s' if s.max_visits != 1 else ''}"] if s.max_visits else []
        label = s.name if not extra else f"{s.name}\n({', '.join(extra)})"
        if overlay and s.name in overlay.errors:
            label += f"\n✗ {overlay.errors[s.name]}"
        nodes.append(DiagramNode(s.name, kind, s.outcome, label,
                                 visits.get(s.name, 0), s.initial))
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
        edge_kind = DiagramEdgeKind.DEFAULT if t.default else DiagramEdgeKind.TRANSITION
        edges.append(DiagramEdge(t.source, t.target, edge_kind, label, taken.get(t.name, 0)))
    for e in spec.error_transitions:
        label = f"on {e.error.__name__}" + (f" max {e.max_traversals}x" if e.max_traversals else "")
        edges.append(DiagramEdge(e.source, e.target, DiagramEdgeKind.ERROR, label, taken.get(e.name, 0)))
    if overlay is not None:
        for key, count in taken.items():
            if key.startswith("fail:"):
                edges.append(DiagramEdge(key[5:], workflow.failure_terminal, DiagramEdgeKind.FAIL,
                                         _short(overlay.reason or "failed"), count))
    return nodes, edges


def _short(text: str, width: int = 48) -> str:
    """Wrap a long reason onto a few lines of a label."""
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    return "\n".join(lines[:4]) + ("…" if len(lines) > 4 else "")


def _dot_text(text: str) -> str:
    """``text`` inside a DOT quoted string: backslashes kept, line breaks as DOT's own escape."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _dot_label(text: str) -> str:
    """A label as DOT reads it: backslashes kept, line breaks as DOT's own escape, never HTML."""
    # nohtml returns a str subclass that graphviz must see as it is (str() would drop the mark).
    return typing.cast(str, graphviz.nohtml(_dot_text(text)))


def _dot_id(name: str) -> str:
    """A node id DOT reads back as written (backslashes doubled, never an HTML label)."""
    return typing.cast(str, graphviz.nohtml(name.replace("\\", "\\\\")))


_OUTCOME_COLOUR = {Outcome.SUCCESS.value: "#2e7d32", Outcome.FAILURE.value: "#c62828"}


def to_dot(workflow: Drawable,
           run: RunResult[Any] | dict[str, Any] | RunOverlay | None = None, *,
           rankdir: str | None = None) -> graphviz.Digraph:
    """A ``graphviz.Digraph`` of the workflow, with ``run`` (a result or a recorded one) laid over it.

    ``rankdir`` is ``"LR"`` (left to right) or ``"TB"`` (top to bottom); by default small workflows
    read left to right and larger ones (over 12 states) top to bottom, which keeps them legible.
    """
    if rankdir is None:
        rankdir = "LR" if len(workflow.spec.states) <= 12 else "TB"
    if rankdir not in ("LR", "TB", "RL", "BT"):
        raise ValueError(f"rankdir={rankdir!r}: use 'LR' (left to right) or 'TB' (top to bottom)")
    nodes, edges = extract(workflow, run)
    overlay = RunOverlay.of(run) if run is not None else None
    # The title's names are escaped as labels are (a name ending in a backslash would end DOT's
    # quoted string); its line breaks are DOT's own escape.
    title = f"{_dot_text(workflow.name)} (worst case {workflow.max_steps} steps)"
    if overlay is not None and overlay.outcome == OverlayOutcome.COVERAGE:
        title += f"\\ncoverage of {_dot_text(overlay.run_id)}"
    elif overlay is not None:
        title += (f"\\nrun {_dot_text(overlay.run_id[:8])}: {_dot_text(str(overlay.terminal))} "
                  f"({_dot_text(str(overlay.outcome))}, {overlay.steps} steps)")
    label = typing.cast(str, graphviz.nohtml(title))
    g = graphviz.Digraph(name=_dot_id(workflow.name), graph_attr={
        "rankdir": rankdir, "label": label, "labelloc": "t", "fontname": "Helvetica", "fontsize": "14",
        "nodesep": "0.35", "ranksep": "0.5",
    }, node_attr={"fontname": "Helvetica", "fontsize": "11"}, edge_attr={"fontname": "Helvetica",
                                                                          "fontsize": "9"})
    g.node("__start__", "", shape="point", width="0.15")
    for n in nodes:
        attrs: dict[str, str] = {"shape": "box", "style": "rounded"}
        if n.kind is DiagramNodeKind.DECISION:
            attrs = {"shape": "diamond", "style": ""}
        if n.kind is DiagramNodeKind.TERMINAL:
            colour = _OUTCOME_COLOUR.get(n.outcome or "", "black")
            # A double-bordered box, not a circle: circles grow with long names and dwarf the rest.
            attrs = {"shape": "box", "style": "rounded,bold", "peripheries": "2", "color": colour,
                     "fontcolor": colour}
        label = n.label
        if overlay is not None and n.visits:
            label += f"\n×{n.visits}"
            attrs["penwidth"] = "2.5"
            attrs["style"] = ",".join(filter(None, [attrs.get("style", ""), "filled"]))
            attrs["fillcolor"] = "#fff3c4" if n.kind is not DiagramNodeKind.TERMINAL else "#e8f5e9" \
                if n.outcome == Outcome.SUCCESS else "#ffebee"
        if "✗" in label:
            attrs["color"] = "#c62828"
        g.node(_dot_id(n.name), _dot_label(label), **attrs)
    initial = next(n.name for n in nodes if n.initial)
    g.edge("__start__", _dot_id(initial))
    for e in edges:
        attrs = {}
        if e.kind is DiagramEdgeKind.DEFAULT:
            attrs["style"] = "dashed"
        elif e.kind is DiagramEdgeKind.ERROR:
            attrs.update(color="#c62828", fontcolor="#c62828", style="dotted")
        elif e.kind is DiagramEdgeKind.FAIL:
            attrs.update(color="#c62828", fontcolor="#c62828", style="bold")
        label = e.label
        if overlay is not None and e.taken:
            label += f" (×{e.taken})"
            attrs["penwidth"] = "2.5"
            attrs.setdefault("color", "#1565c0")
        g.edge(_dot_id(e.source), _dot_id(e.target), _dot_label(label), **attrs)
    return g


_MERMAID_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words Mermaid's state-diagram grammar reserves: a state must not be called one of these.
_MERMAID_WORDS = frozenset({"state", "note", "end", "direction", "as", "classDef", "class", "click",
                            "style", "stateDiagram", "left", "right", "of", "hide", "empty", "description"})
_MERMAID_ESCAPES = {";": "#59;", ":": "#58;", "<": "#lt;", ">": "#gt;", "#": "#35;", "\n": " ", "%": "#37;"}


def _mermaid_label(text: str) -> str:
    return "".join(_MERMAID_ESCAPES.get(c, c) for c in text).strip()


def to_mermaid(workflow: Drawable) -> str:
    """The workflow as Mermaid ``stateDiagram-v2`` text (for GitHub and docs).

    States keep their names as ids when Mermaid allows it; others get ids ``s0``, ``s1``... and
    their name as the label. Labels are entity-escaped, so any name or guard reads back as written.
    """
    nodes, edges = extract(workflow)
    ids: dict[str, str] = {}
    lines = ["stateDiagram-v2",
             f"    %% {_mermaid_label(workflow.name)}: worst case {workflow.max_steps} steps"]
    for i, n in enumerate(nodes):
        plain = _MERMAID_ID.fullmatch(n.name) and n.name not in _MERMAID_WORDS
        ids[n.name] = n.name if plain else f"s{i}"
        if not plain:
            lines.append(f'    state "{_mermaid_label(n.name).replace(chr(34), "#quot;")}" as {ids[n.name]}')
    for n in nodes:
        if n.kind is DiagramNodeKind.DECISION:
            lines.append(f"    state {ids[n.name]} <<choice>>")
    for n in nodes:
        if n.initial:
            lines.append(f"    [*] --> {ids[n.name]}")
    for e in edges:
        label = _mermaid_label(e.label)
        lines.append(f"    {ids[e.source]} --> {ids[e.target]}" + (f": {label}" if label else ""))
    for n in nodes:
        if n.kind is DiagramNodeKind.TERMINAL:
            lines.append(f"    {ids[n.name]} --> [*]")
            lines.append(f"    note right of {ids[n.name]}: {n.outcome}")
    return "\n".join(lines) + "\n"


def _drawable(subject: object, function: str) -> Drawable:
    if isinstance(subject, Workflow):
        compiled: Drawable = subject.compile()
        return compiled
    if all(hasattr(subject, a) for a in ("name", "spec", "max_steps", "failure_terminal")):
        return typing.cast(Drawable, subject)
    raise TypeError(f"{function}() draws a Workflow, a compiled workflow or a run result, not "
                    f"{type(subject).__name__}: pass wf.compile() or the result a run returned")


def diagram(subject: Workflow[Any] | Drawable | RunResult[Any],
            run: RunResult[Any] | dict[str, Any] | RunOverlay | None = None, *,
            rankdir: str | None = None) -> graphviz.Digraph:
    """The ``graphviz.Digraph`` of a workflow, for further styling: ``diagram(compiled)``,
    ``diagram(wf)`` (compiled first), with ``run`` (a result or a recorded one) laid over it, or
    ``diagram(result)``: a run over the workflow that ran it. See :func:`to_dot` for ``rankdir``."""
    if isinstance(subject, RunResult):
        if run is not None:
            raise TypeError("diagram(result) draws that result over its workflow: pass run= only with a "
                            "workflow, diagram(compiled, run)")
        if subject.compiled is None:
            raise ValueError("this result does not know its workflow: use "
                             "statemachine_agent.diagrams.diagram(compiled, result)")
        return to_dot(subject.compiled, subject, rankdir=rankdir)
    return to_dot(_drawable(subject, "diagram"), run, rankdir=rankdir)


def mermaid(subject: Workflow[Any] | Drawable) -> str:
    """A workflow (a ``Workflow`` is compiled first) as Mermaid ``stateDiagram-v2`` text."""
    return to_mermaid(_drawable(subject, "mermaid"))


def render(graph: graphviz.Digraph, path: str | Path, fmt: str) -> Path:
    """Render ``graph`` to ``path`` in ``fmt`` (svg, png, pdf) with Graphviz's ``dot``."""
    return write_file(path, _pipe(graph, fmt))


def _pipe(graph: graphviz.Digraph, fmt: str) -> bytes:
    """``graph`` rendered in ``fmt`` by Graphviz's ``dot``."""
    if shutil.which("dot") is None:
        raise GraphvizMissing(
            f"cannot render {fmt.upper()}: Graphviz's 'dot' binary is not on PATH. Install the system "
            "package graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz), "
            "or write DOT source instead"
        )
    try:
        return bytes(graph.pipe(format=fmt))
    except graphviz.ExecutableNotFound as exc:  # found on PATH but not runnable
        raise GraphvizMissing(f"cannot render {fmt.upper()}: Graphviz's 'dot' could not run ({exc}); "
                              "reinstall the system package graphviz") from exc


def write_file(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to the regular file ``path`` (created or replaced), never through a symbolic
    link: a link as the last part of ``path``, or a path that is no regular file (a device, a pipe),
    raises :class:`OutputRefused` and writes nothing. Folders on the way may be links."""
    out = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
        | getattr(os, "O_BINARY", 0)
    if not hasattr(os, "O_NOFOLLOW") and out.is_symlink():  # pragma: no cover - Windows
        raise OutputRefused(f"refusing to write {str(out)!r}: it is a symbolic link; give the real file's path, "
                            "or remove the link")
    try:
        fd = os.open(out, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP or out.is_symlink():
            raise OutputRefused(f"refusing to write {str(out)!r}: it is a symbolic link; give the real file's "
                                "path, or remove the link") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OutputRefused(f"refusing to write {str(out)!r}: it is not a regular file (a device, a pipe "
                                "or a socket); give a file's path")
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return out


def to_svg(graph: graphviz.Digraph) -> str:
    """SVG text of ``graph`` (needs Graphviz's ``dot``)."""
    if shutil.which("dot") is None:
        raise GraphvizMissing("cannot render SVG: Graphviz's 'dot' binary is not on PATH. Install the "
                              "system package graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: "
                              "brew install graphviz)")
    try:
        return str(graph.pipe(format="svg", encoding="utf-8"))
    except graphviz.ExecutableNotFound as exc:
        raise GraphvizMissing(f"cannot render SVG: Graphviz's 'dot' could not run ({exc})") from exc


def jupyter_display(compiled: CompiledWorkflow[Any], run: RunResult[Any] | None = None) -> dict[str, str]:
    """How Jupyter shows a compiled workflow, with ``run`` over it when given: SVG when Graphviz can
    draw it, always the text. The package facade installs it with ``compile.set_display``."""
    return jupyter_bundle(to_dot(compiled, run), repr(run) if run is not None else repr(compiled))


def jupyter_bundle(graph: graphviz.Digraph | None, text: str) -> dict[str, str]:
    """A ``_repr_mimebundle_`` answer: SVG when Graphviz can draw it, always the text."""
    bundle = {"text/plain": text}
    if graph is not None and shutil.which("dot") is not None:
        with contextlib.suppress(GraphvizMissing):
            bundle["image/svg+xml"] = to_svg(graph)
    return bundle


def write_diagrams(workflow: Drawable, directory: str | Path,
                   run: RunResult[Any] | None = None) -> Iterable[Path]:
    """Write ``NAME.dot`` and ``NAME.mmd`` (and ``NAME.svg`` when ``dot`` is installed), plus
    ``NAME.run.dot``/``.svg`` for ``run``; return the paths written. Like :func:`write_file`, never
    through a symbolic link."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    graph = to_dot(workflow)
    dot_path = out / f"{workflow.name}.dot"
    write_file(dot_path, graph.source.encode("utf-8"))
    written.append(dot_path)
    mmd = out / f"{workflow.name}.mmd"
    write_file(mmd, to_mermaid(workflow).encode("utf-8"))
    written.append(mmd)
    has_dot = shutil.which("dot") is not None
    if has_dot:
        written.append(render(graph, out / f"{workflow.name}.svg", "svg"))
    if run is not None:
        run_graph = to_dot(workflow, run)
        run_dot = out / f"{workflow.name}.run.dot"
        write_file(run_dot, run_graph.source.encode("utf-8"))
        written.append(run_dot)
        if has_dot:
            written.append(render(run_graph, out / f"{workflow.name}.run.svg", "svg"))
    return written


# --- the file formats --------------------------------------------------------------------------------
RunInput = RunResult[Any] | dict[str, Any] | RunOverlay
"""A run to draw over a workflow: a result, or its recorded form (``result.to_dict()``)."""


@dataclass(frozen=True, slots=True)
class DiagramFormat:
    """A file format diagrams are written in: an entry of :data:`FORMATS`."""

    name: str
    """What ``--format`` takes."""
    label: str
    """How messages name it (``SVG``)."""
    suffixes: tuple[str, ...]
    """The file extensions that pick it, lower case with the dot; the first is the one to suggest."""
    draw: Callable[[Drawable, RunInput | None, str | None], bytes]
    """The file's bytes for a workflow, a run over it (or ``None``) and a ``rankdir`` (or ``None``)."""
    draws_runs: bool = True
    """Whether a run can be laid over the workflow in this format."""


def _graphviz_format(fmt: str) -> Callable[[Drawable, RunInput | None, str | None], bytes]:
    def draw(workflow: Drawable, run: RunInput | None, rankdir: str | None) -> bytes:
        return _pipe(to_dot(workflow, run, rankdir=rankdir), fmt)

    return draw


def _dot_source(workflow: Drawable, run: RunInput | None, rankdir: str | None) -> bytes:
    return str(to_dot(workflow, run, rankdir=rankdir).source).encode("utf-8")


def _mermaid_text(workflow: Drawable, run: RunInput | None, rankdir: str | None) -> bytes:
    if run is not None:
        raise ValueError("Mermaid has no highlighting: a run is drawn in another format")
    return to_mermaid(workflow).encode("utf-8")


FORMATS: dict[str, DiagramFormat] = {}
"""Every format diagrams are written in, by name, in the order they were registered."""


def register_format(fmt: DiagramFormat) -> DiagramFormat:
    """Add ``fmt`` to :data:`FORMATS` (the command line's ``diagram`` offers it at once). Its name and
    suffixes must be new: ``ValueError`` names the format that has them."""
    if not isinstance(fmt, DiagramFormat):
        raise TypeError(f"register_format() takes a DiagramFormat, not {type(fmt).__name__}")
    if fmt.name in FORMATS:
        raise ValueError(f"a diagram format named {fmt.name!r} is registered already")
    for other in FORMATS.values():
        taken = set(fmt.suffixes) & set(other.suffixes)
        if taken:
            raise ValueError(f"the suffixes {sorted(taken)} already pick format {other.name!r}")
    bad = [s for s in fmt.suffixes if not s.startswith(".") or s != s.lower()]
    if bad or not fmt.suffixes:
        raise ValueError(f"format {fmt.name!r}: suffixes must be lower case and start with a dot, not {bad}")
    FORMATS[fmt.name] = fmt
    return fmt


def format_of(path: str | Path) -> DiagramFormat | None:
    """The format a file name's extension picks, or ``None``."""
    suffix = Path(path).suffix.lower()
    return next((f for f in FORMATS.values() if suffix in f.suffixes), None)


register_format(DiagramFormat("dot", "DOT", (".dot", ".gv"), _dot_source))
register_format(DiagramFormat("svg", "SVG", (".svg",), _graphviz_format("svg")))
register_format(DiagramFormat("png", "PNG", (".png",), _graphviz_format("png")))
register_format(DiagramFormat("pdf", "PDF", (".pdf",), _graphviz_format("pdf")))
register_format(DiagramFormat("mermaid", "Mermaid", (".mmd", ".mermaid"), _mermaid_text, draws_runs=False))
