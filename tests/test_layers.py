"""Imports run one way: each module of statemachine_agent imports only from its own layer or lower.

The layer map below is the data; the tests read every module's imports with ``ast`` (module level,
inside functions and under ``if TYPE_CHECKING:``, relative and absolute) and fail on an upward edge
or an import cycle, naming the edge and what to do. docs/design.md shows the map as a picture that
:func:`layers_picture` generates; a test checks the doc holds exactly that text. To update the doc
after changing the map: ``python tests/test_layers.py --write``.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import itertools
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "statemachine_agent"
SOURCE = ROOT / PACKAGE
DESIGN = ROOT / "docs" / "design.md"

# --- the data ---------------------------------------------------------------------------------------
# Modules are named relative to the package (``stores._base`` is statemachine_agent/stores/_base.py,
# ``stores`` its __init__.py). ``NAME.*`` places a package's submodules; an exact name wins over a
# pattern (``llm.testing`` is L9 though ``llm.*`` is L4).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("errors", "clock", "context", "usage", "guards", "_graph", "secrets")),
    ("define", ("spec", "_tooldef", "workflow")),
    ("check", ("_rules", "check")),
    ("compile", ("_plan",)),
    ("run", ("result", "events", "_views", "_ops", "policies", "tools", "runner", "_journal", "_program", "llm",
             "llm.*")),
    ("durable", ("_compat", "_durable", "compile", "stores._records", "stores._base", "protocols")),
    ("stores", ("stores._sqlite", "stores._sql*", "stores._segments", "stores")),
    ("observability", ("otel", "traces")),
    ("diagrams", ("diagrams",)),
    ("testing", ("testing", "testing.*", "llm.testing", "stores.conformance")),
    ("cli", ("cli", "ui", "ui.*")),
)

OUTSIDE = frozenset({"", "__main__", "examples", "examples.*"})
"""Outside the map: the package facade (``""``, statemachine_agent/__init__.py), which imports from
every layer to re-export, and the examples, which are user code."""

PLANNED: frozenset[str] = frozenset()
"""Placed in the map, not written yet (issue 22): drop a name from here when its module lands."""

ALLOWED: dict[tuple[str, str], str] = {
    ("workflow", "check"): "Workflow.analyze()/check() run the checker",
    ("workflow", "compile"): "Workflow.compile() compiles",
}
"""The one documented reach upward: ``Workflow``'s methods reach the checker and the compiler
through ONE import inside a function of workflow.py (``_upward``), and name their results' types
(``CheckReport``, ``CompiledWorkflow``) under ``TYPE_CHECKING``; never a module-level import."""

ALLOWED_FUNCTION = "_upward"
"""The function of workflow.py that holds the one lazy import."""

TYPE_ONLY: dict[tuple[str, str], str] = {
    ("workflow", "tools"): "the Action type names the run's Tools handle, so mypy checks an action's second "
                           "parameter; the handle's class is the run's (L4)",
}
"""Edges allowed only under ``if TYPE_CHECKING:`` (an annotation names a type of a higher layer)."""

PENDING: dict[tuple[str, str], str] = {}
"""Upward edges the lead removes (issue 22, item 2); emptied when they go."""


# --- reading the code -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    how: str
    """``module`` (a module-level import), ``function`` (inside a function, run when it is called) or
    ``type-only`` (under ``if TYPE_CHECKING:``)."""
    function: str | None = None
    """The outermost function holding a function-level import."""

    def __str__(self) -> str:
        where = f"{_path(self.source)}:{self.line}"
        return f"{self.source or PACKAGE} -> {self.target or PACKAGE} ({self.how} import, {where})"


def _path(module: str) -> str:
    parts = [PACKAGE, *module.split(".")] if module else [PACKAGE]
    package = SOURCE.parent.joinpath(*parts)
    if package.is_dir():
        return f"{'/'.join(parts)}/__init__.py"
    return f"{'/'.join(parts)}.py"


def modules() -> dict[str, Path]:
    """Every module of the package, by its name relative to the package."""
    found: dict[str, Path] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(base: str, names: list[str], known: set[str]) -> list[str]:
    """The package's modules an import of ``names`` from module ``base`` loads: ``base`` itself,
    and each name that is a submodule of it."""
    targets = []
    for name in names:
        sub = f"{base}.{name}" if base else name
        targets.append(sub if sub in known else base)
    return targets or [base]


def imports_of(module: str, tree: ast.Module, known: set[str], is_package: bool) -> list[Edge]:
    """Every import of the package's own modules in ``tree``, with how it is made."""
    edges: list[Edge] = []
    package = module if is_package else module.rpartition(".")[0]

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            out = []
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    name = alias.name[len(PACKAGE) + 1:]
                    while name and name not in known:  # `import pkg.mod.Thing` is not a thing, but be safe
                        name = name.rpartition(".")[0]
                    out.append(name)
            return out
        names = [a.name for a in node.names if a.name != "*"]
        if node.level:
            base_parts = package.split(".") if package else []
            if node.level > 1:
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join([*base_parts, *([node.module] if node.module else [])])
            return _resolve(base, names, known)
        if node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
            return _resolve((node.module or "")[len(PACKAGE) + 1:], names, known)
        return []

    def visit(node: ast.AST, how: str, function: str | None) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            edges.extend(Edge(module, t, node.lineno, how, function)
                         for t in dict.fromkeys(targets(node)) if t != module)
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            inner_how = how if how == "type-only" else "function"
            inner_function = function or getattr(node, "name", "<lambda>")
            for child in ast.iter_child_nodes(node):
                visit(child, inner_how, inner_function)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, "type-only", function)
            for child in node.orelse:
                visit(child, how, function)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, how, function)

    visit(tree, "module", None)
    return edges


@functools.cache
def all_edges() -> tuple[Edge, ...]:
    """Every import of the package's own modules, in every module (read once per session)."""
    found = modules()
    known = set(found)
    edges: list[Edge] = []
    for name, path in found.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges.extend(imports_of(name, tree, known, path.name == "__init__.py"))
    return tuple(edges)


def _layer_index() -> tuple[dict[str, int], list[tuple[str, int]]]:
    exact: dict[str, int] = {}
    patterns: list[tuple[str, int]] = []
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            if "*" in name:
                patterns.append((name, index))
            else:
                assert name not in exact, f"{name!r} is placed twice in LAYERS"
                exact[name] = index
    return exact, patterns


def layer_of(module: str) -> int | None:
    """The module's layer (an index into LAYERS), or None when the map does not place it."""
    exact, patterns = _layer_index()
    if module in exact:
        return exact[module]
    layers = {index for pattern, index in patterns if fnmatch.fnmatchcase(module, pattern)}
    assert len(layers) <= 1, f"{module!r} matches patterns of several layers: name it exactly in LAYERS"
    return layers.pop() if layers else None


def _is_outside(module: str) -> bool:
    return any(fnmatch.fnmatchcase(module, pattern) for pattern in OUTSIDE)


def _label(index: int) -> str:
    return f"L{index} {LAYERS[index][0]}"


# --- the tests ----------------------------------------------------------------------------------------
def test_every_module_is_placed() -> None:
    """A new module must be given a layer (or declared outside the map); a name in the map that is no
    module must be a planned one."""
    found = modules()
    unplaced = [m for m in found if layer_of(m) is None and not _is_outside(m)]
    assert not unplaced, (
        f"modules with no layer: {unplaced}. Place each in LAYERS in tests/test_layers.py (the lowest layer "
        "whose modules are all it needs), then run `python tests/test_layers.py --write` to redraw docs/design.md")
    both = [m for m in found if layer_of(m) is not None and _is_outside(m)]
    assert not both, f"{both} are both in LAYERS and OUTSIDE: keep each in one"
    exact, _ = _layer_index()
    stale = sorted(set(exact) - set(found) - PLANNED)
    assert not stale, f"LAYERS names {stale}, which are no modules: remove them, or add them to PLANNED"
    landed = sorted(PLANNED & set(found))
    assert not landed, f"{landed} exist now: drop them from PLANNED in tests/test_layers.py"


def test_imports_run_one_way() -> None:
    """No module imports from a layer above its own (at module level, in a function or under
    TYPE_CHECKING), except the documented reach from workflow.py and the edges the lead removes."""
    bad: list[str] = []
    seen_pending: set[tuple[str, str]] = set()
    for edge in all_edges():
        if _is_outside(edge.source):
            continue
        if edge.target == "" or _is_outside(edge.target):
            bad.append(f"{edge}: import from the module that defines the name, not from the package facade")
            continue
        source, target = layer_of(edge.source), layer_of(edge.target)
        assert source is not None and target is not None, "test_every_module_is_placed fails first"
        if target <= source:
            continue
        pair = (edge.source, edge.target)
        if pair in PENDING:
            seen_pending.add(pair)
            continue
        if pair in ALLOWED and (edge.how == "type-only" or edge.function == ALLOWED_FUNCTION):
            continue
        if pair in TYPE_ONLY and edge.how == "type-only":
            continue
        bad.append(
            f"{edge}: {_label(source)} reaches up to {_label(target)}. Move what it needs down to "
            f"{LAYERS[source][0]} or lower, have the caller pass it in (a protocol in the lower layer, or a "
            f"slot the facade fills), or move {edge.source} up if it belongs there (tests/test_layers.py LAYERS)")
    assert not bad, "imports that run upward:\n" + "\n".join(bad)
    gone = sorted(set(PENDING) - seen_pending)
    assert not gone, f"PENDING edges {gone} are gone from the code: remove them from PENDING in tests/test_layers.py"


def test_the_reach_from_workflow_is_one_lazy_import() -> None:
    """workflow.py reaches check and compile through exactly one import statement, inside
    ``_upward``, and nowhere at module level."""
    runtime = [e for e in all_edges() if (e.source, e.target) in ALLOWED and e.how != "type-only"]
    assert {(e.target, e.how, e.function) for e in runtime} == {
        (target, "function", ALLOWED_FUNCTION) for _, target in ALLOWED}, (
        f"workflow.py must reach {sorted(t for _, t in ALLOWED)} only through one import inside "
        f"{ALLOWED_FUNCTION}(): found {[str(e) for e in runtime]}")
    assert len({e.line for e in runtime}) == 1, f"one import statement, not {len({e.line for e in runtime})}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def walk(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_stack:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in done and (found := walk(nxt)):
                return found
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (found := walk(node)):
            return found
    return None


def test_no_import_cycles() -> None:
    """No module reaches itself through imports of any kind (PENDING edges aside: they go)."""
    graph: dict[str, set[str]] = {}
    lines: dict[tuple[str, str], Edge] = {}
    for edge in all_edges():
        if _is_outside(edge.source) or (edge.source, edge.target) in PENDING:
            continue
        graph.setdefault(edge.source, set()).add(edge.target)
        lines.setdefault((edge.source, edge.target), edge)
    cycle = _cycle(graph)
    assert cycle is None, (
        "import cycle: " + " -> ".join(cycle) + "\n" + "\n".join(str(lines[a, b]) for a, b in itertools.pairwise(cycle))
        + "\nbreak it: move what one side needs below both, or pass it in")


def test_the_reader_sees_every_kind_of_import() -> None:
    """The reader finds module-level, function-level and TYPE_CHECKING imports, relative and absolute,
    and names the submodule a ``from . import x`` loads."""
    code = (
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "from ._base import Store\n"
        "from ..errors import Problem\n"
        "import statemachine_agent.stores._base\n"
        "from statemachine_agent import diagrams\n"
        "from . import _sqlite as sq\n"
        "if TYPE_CHECKING:\n"
        "    from ..runner import Run\n"
        "def f():\n"
        "    from statemachine_agent.check import check\n"
        "    def g():\n"
        "        from .. import compile\n"
    )
    known = {"errors", "stores", "stores._base", "stores._sqlite", "stores.x", "diagrams", "runner", "check",
             "compile"}
    edges = imports_of("stores.x", ast.parse(code), known, is_package=False)
    assert [(e.target, e.how, e.function) for e in edges] == [
        ("stores._base", "module", None),
        ("errors", "module", None),
        ("stores._base", "module", None),
        ("diagrams", "module", None),
        ("stores._sqlite", "module", None),
        ("runner", "type-only", None),
        ("check", "function", "f"),
        ("compile", "function", "f"),
    ]


# --- the picture in docs/design.md ---------------------------------------------------------------------
PICTURE_START = "<!-- layers: generated by `python tests/test_layers.py --write`; do not edit -->"
PICTURE_END = "<!-- /layers -->"


def layers_picture() -> str:
    """The layer map as text: the highest layer first, each with its modules, then the allowed reaches
    upward and the pending edges, each with why."""
    labels = [f"L{i:<2} {name}" for i, (name, _) in enumerate(LAYERS)]
    width = max(map(len, labels)) + 2
    lines = [f"{'layer':<{width}}modules (each imports only from its own layer and the ones below)"]
    for index in reversed(range(len(LAYERS))):
        names = [f"{n} (planned)" if n in PLANNED else n for n in LAYERS[index][1]]
        lines.extend(textwrap.wrap(", ".join(names) or "(none yet)", 100, initial_indent=f"{labels[index]:<{width}}",
                                   subsequent_indent=" " * width, break_on_hyphens=False))
        if index:
            lines.append(" " * width + "|")
    lines.append("")
    lines.append(f"outside the map: {', '.join(n or 'the package facade (__init__)' for n in sorted(OUTSIDE))}")
    for title, edges in (("allowed upward: one lazy import, and type-only names", ALLOWED),
                         ("allowed upward: type-only (under TYPE_CHECKING)", TYPE_ONLY),
                         ("pending upward edges (the lead removes them)", PENDING)):
        lines.append(f"{title}:")
        for (a, b), why in edges.items():
            lines.extend(textwrap.wrap(f"{a} -> {b}: {why}", 100, initial_indent="  ", subsequent_indent="      ",
                                       break_on_hyphens=False))
        if not edges:
            lines.append("  (none)")
    return "\n".join(lines) + "\n"


def _doc_block() -> str:
    return f"{PICTURE_START}\n```text\n{layers_picture()}```\n{PICTURE_END}"


def test_design_doc_holds_the_generated_picture() -> None:
    """docs/design.md shows exactly the picture the map above draws."""
    text = DESIGN.read_text(encoding="utf-8")
    assert PICTURE_START in text and PICTURE_END in text, (
        f"docs/design.md lost its layer picture markers: put {PICTURE_START!r} and {PICTURE_END!r} back")
    current = text[text.index(PICTURE_START):text.index(PICTURE_END) + len(PICTURE_END)]
    assert current == _doc_block(), "docs/design.md's layer picture is stale: run `python tests/test_layers.py --write`"


def test_design_doc_points_only_at_tests_that_exist() -> None:
    """Every test docs/design.md names as holding a claim (``tests/FILE.py::test_name``) exists."""
    text = DESIGN.read_text(encoding="utf-8")
    named = re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", text)
    assert named, "docs/design.md names no test"
    missing = []
    for file, test in named:
        path = ROOT / file
        if not path.is_file():
            missing.append(file)
        elif test and not any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == test
                              for n in ast.parse(path.read_text(encoding="utf-8")).body):
            missing.append(f"{file}::{test}")
    assert not missing, (f"docs/design.md points at tests that do not exist: {missing}; name the test that "
                         "holds the claim")


def write_picture() -> None:
    text = DESIGN.read_text(encoding="utf-8")
    start, end = text.index(PICTURE_START), text.index(PICTURE_END) + len(PICTURE_END)
    DESIGN.write_text(text[:start] + _doc_block() + text[end:], encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_picture()
    elif sys.argv[1:]:
        pytest.exit("usage: python tests/test_layers.py [--write]")
    else:
        print(layers_picture(), end="")
