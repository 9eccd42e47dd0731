"""The command line: check, run and diagram, with exit codes and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from statemachine_agent.cli import main

EXAMPLE = "statemachine_agent.examples.research:workflow"


def test_check_accepts_the_example_and_prints_the_bound(capsys: pytest.CaptureFixture[str]) -> None:
    """check exits 0 and prints the worst-case step bound."""
    assert main(["check", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert "ok: workflow 'research'" in out
    assert "worst-case steps: 5" in out


def test_check_rejects_a_broken_spec_listing_every_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check exits 1 and prints every problem of a broken workflow."""
    (tmp_path / "brokenflow.py").write_text(
        "from statemachine_agent import Context, Workflow\n"
        "class C(Context):\n    x: int | None = None\n"
        "wf = Workflow('broken', C)\n"
        "wf.add_state('a', lambda c: None, initial=True, reads=['x'])\n"
        "wf.add_state('b', lambda c: None)\n"
        "wf.terminal('done')\n"
        "wf.transition('a', 'b').transition('b', 'a')\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    assert main(["check", "brokenflow:wf"]) == 1
    err = capsys.readouterr().err
    for code in ("no-failure-terminal", "unreachable-state", "trap-cycle", "unbounded-cycle", "unset-read"):
        assert f"[{code}]" in err


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nocolon", "is not MODULE:OBJECT"),
        ("no_such_module_xyz:wf", "cannot import module 'no_such_module_xyz'"),
        ("statemachine_agent.examples.research:nope", "has no 'nope'"),
        ("statemachine_agent.examples.research:Corpus", "not a Workflow"),
    ],
)
def test_bad_targets_exit_2_with_a_message(target: str, message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A target that is not MODULE:OBJECT naming a workflow exits 2 and says why."""
    assert main(["check", target]) == 2
    assert message in capsys.readouterr().err


def test_run_prints_the_result_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    """run answers from the docs corpus and prints the whole result as JSON."""
    code = main(["run", EXAMPLE, "--input", '{"question": "How does the checker bound loops?"}', "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["terminal"] == "done"
    assert [s["state"] for s in data["path"]] == ["plan", "search", "summarize"]
    assert data["context"]["answer"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "--input is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"question": ""}', "does not fit ResearchContext"),
        ("@/nonexistent/input.json", "cannot read input file"),
    ],
)
def test_run_bad_input_exit_2(raw: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Malformed input exits 2 with a message that says what to give."""
    assert main(["run", EXAMPLE, "--input", raw]) == 2
    assert message in capsys.readouterr().err


def test_run_input_from_file_and_failure_exit_code(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--input @file works, and a failure outcome exits 1 with its reason."""
    f = tmp_path / "in.json"
    f.write_text('{"question": "zebra xylophone quokka"}', encoding="utf-8")
    assert main(["run", EXAMPLE, "--input", f"@{f}"]) == 1
    out = capsys.readouterr().out
    assert "terminal: not_found (failure)" in out
    assert "plan -> search -> refine -> search -> not_found" in out


def test_run_rejects_bad_policy(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown --policy exits 2 naming the accepted ones."""
    assert main(["run", EXAMPLE, "--input", '{"question": "x"}', "--policy", "llm"]) == 2
    assert "use 'first', 'random[:SEED]' or MODULE:OBJECT" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".dot", ".mmd", ".svg", ".png"])
def test_diagram_formats(tmp_path: Path, suffix: str) -> None:
    """diagram picks the format from the extension; SVG and PNG use the real dot binary."""
    if suffix in (".svg", ".png"):
        assert shutil.which("dot"), "make test installs Graphviz; install it to run this test"
    out = tmp_path / f"research{suffix}"
    assert main(["diagram", EXAMPLE, "-o", str(out)]) == 0
    data = out.read_bytes()
    expected = {".dot": b"digraph research", ".mmd": b"stateDiagram-v2", ".svg": b"<svg",
                ".png": b"\x89PNG"}[suffix]
    assert expected in data[:400]


def test_diagram_unknown_extension(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An extension with no known format exits 2 and lists the known ones."""
    assert main(["diagram", EXAMPLE, "-o", str(tmp_path / "x.jpeg")]) == 2
    assert "use a .dot, .svg, .png, .pdf or .mmd name" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("raise RuntimeError('boom at import')\n", "importing 'badmod' failed: RuntimeError: boom at import"),
        ("def broken(:\n", "importing 'badmod' failed: SyntaxError"),
    ],
)
def test_modules_failing_at_import_exit_2(source: str, message: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A module that fails while importing is reported in one line, exit 2, no traceback."""
    import sys

    (tmp_path / "badmod.py").write_text(source, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "badmod", raising=False)
    assert main(["check", "badmod:wf"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_relative_module_and_unwritable_output_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A relative module name and an output path that cannot be written are usage errors."""
    assert main(["check", ".foo:bar"]) == 2
    assert main(["diagram", EXAMPLE, "-o", "/dev/null/x.dot"]) == 2
    assert "cannot write '/dev/null/x.dot'" in capsys.readouterr().err
