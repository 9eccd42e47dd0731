"""Diagrams are functions over a compiled workflow and a run; formats come from one registry that the
command line uses; Jupyter's display reaches the diagrams through the slot the package facade fills."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broken_specs import base, noop

import statemachine_agent.compile as compile_module
from statemachine_agent import RunResult
from statemachine_agent.cli import main
from statemachine_agent.diagrams import (
    FORMATS,
    DiagramFormat,
    diagram,
    format_of,
    jupyter_display,
    mermaid,
    register_format,
    to_dot,
    to_mermaid,
)
from statemachine_agent.examples import research

EXAMPLE = "statemachine_agent.examples.research:workflow"


def small():  # type: ignore[no-untyped-def]
    wf = base("small")
    wf.add_state("act", noop, initial=True)
    wf.transition("act", "done")
    return wf


def test_a_workflow_a_compiled_one_and_a_result_draw_alike() -> None:
    """diagram() and mermaid() take a Workflow (compiled first) or a compiled one; diagram(result)
    draws the run over the workflow that ran it, as diagram(compiled, result) does."""
    wf = small()
    compiled = wf.compile()
    assert diagram(wf).source == diagram(compiled).source == to_dot(compiled).source
    assert mermaid(wf) == mermaid(compiled) == to_mermaid(compiled)
    result = compiled.run_sync({"question": "q"})
    assert diagram(result, rankdir="TB").source == diagram(compiled, result, rankdir="TB").source
    assert "×1" in diagram(result).source


def test_bad_subjects_say_what_to_pass() -> None:
    """Anything but a workflow or a result is a TypeError naming what to pass; a result that does not
    know its workflow says how to draw it."""
    compiled = small().compile()
    result = compiled.run_sync({"question": "q"})
    with pytest.raises(TypeError, match=r"diagram\(\) draws a Workflow, a compiled workflow or a run result, not str"):
        diagram("small")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"mermaid\(\) draws .* not int"):
        mermaid(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"pass run= only with a workflow"):
        diagram(result, result)
    orphan: RunResult[Any] = dataclasses.replace(result, compiled=None)
    with pytest.raises(ValueError, match=r"diagram\(compiled, result\)"):
        diagram(orphan)


def test_jupyter_display_goes_through_the_facades_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """The facade installs the diagrams' renderer; a compiled workflow and a result both display through
    whatever renderer is installed, and with none only as text."""
    assert compile_module._display == [jupyter_display]
    compiled = small().compile()
    result = compiled.run_sync({"question": "q"})
    seen: list[Any] = []

    def renderer(workflow: Any, run: Any) -> dict[str, str]:
        seen.append((workflow, run))
        return {"text/plain": "drawn"}

    monkeypatch.setattr(compile_module, "_display", [])
    compile_module.set_display(renderer)
    assert compiled._repr_mimebundle_() == {"text/plain": "drawn"}
    assert result._repr_mimebundle_() == {"text/plain": "drawn"}
    assert seen == [(compiled, None), (compiled, result)]
    monkeypatch.setattr(compile_module, "_display", [])
    assert compiled._repr_mimebundle_() == {"text/plain": repr(compiled)}
    with pytest.raises(TypeError, match="takes a callable"):
        compile_module.set_display("svg")  # type: ignore[arg-type]


@pytest.fixture
def registry() -> Iterator[dict[str, DiagramFormat]]:
    """The format registry (the very dict cli.py reads), restored in place after the test."""
    saved = dict(FORMATS)
    yield FORMATS
    FORMATS.clear()
    FORMATS.update(saved)


def _names(workflow: Any, run: Any, rankdir: str | None) -> bytes:
    return "\n".join(s.name for s in workflow.spec.states).encode()


def test_a_registered_format_is_the_command_lines_at_once(
        registry: dict[str, DiagramFormat], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A format registered in diagrams.py is one `diagram` picks by extension or --format and names in
    its messages: cli.py keeps no list of formats of its own."""
    register_format(DiagramFormat("names", "NAMES", (".names", ".states"), _names, draws_runs=False))
    assert format_of(tmp_path / "x.STATES") is registry["names"]
    states = "\n".join(s.name for s in research.workflow.spec().states)
    assert main(["diagram", EXAMPLE, "-o", str(tmp_path / "x.states")]) == 0
    assert (tmp_path / "x.states").read_text() == states
    assert main(["diagram", EXAMPLE, "-o", str(tmp_path / "x.dot"), "--format", "names"]) == 0
    assert (tmp_path / "x.dot").read_text() == states
    capsys.readouterr()
    assert main(["diagram", EXAMPLE, "-o", str(tmp_path / "x.jpeg")]) == 2
    assert "use a .dot, .svg, .png, .pdf, .mmd or .names name, or --format" in capsys.readouterr().err
    result = research.workflow.compile().run_sync(research.ResearchContext(question="How are loops bounded?"))
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps(result.to_dict()))
    assert main(["diagram", EXAMPLE, "-o", str(tmp_path / "y.names"), "--run", str(run_file)]) == 2
    assert ("--run draws a run over the workflow in DOT, SVG, PNG or PDF; NAMES has no highlighting"
            in capsys.readouterr().err)
    assert not (tmp_path / "y.names").exists()


def test_the_registry_refuses_a_name_or_suffix_taken() -> None:
    """Registering a name or an extension twice, or a suffix without its dot, is refused and changes
    nothing."""
    before = dict(FORMATS)
    with pytest.raises(ValueError, match="named 'svg' is registered already"):
        register_format(DiagramFormat("svg", "SVG", (".svg2",), _names))
    with pytest.raises(ValueError, match=r"\['.gv'\] already pick format 'dot'"):
        register_format(DiagramFormat("graph", "graph", (".gv",), _names))
    with pytest.raises(ValueError, match="start with a dot"):
        register_format(DiagramFormat("txt", "text", ("txt",), _names))
    with pytest.raises(TypeError, match="takes a DiagramFormat"):
        register_format("svg")  # type: ignore[arg-type]
    assert before == FORMATS
