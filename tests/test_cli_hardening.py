"""The command line against bad input: exit 2 with a message, never a traceback; exit 1 only for
a failure outcome, a workflow with problems or a bug in the workflow's own code."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachine_agent import compile as compile_module
from statemachine_agent.cli import main

EXAMPLE = "statemachine_agent.examples.research:workflow"


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run the command in-process: its exit code (argparse's SystemExit included), stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Input files of every bad kind, made once."""
    root = tmp_path_factory.mktemp("inputs")
    made = {
        "deep": "[" * 30000 + "]" * 30000,
        "deep_object": '{"question": ' + '{"a": ' * 30000 + "1" + "}" * 30001,
        "list": "[1, 2]",
        "huge_float": '{"question": 1e999}',
        "huge_int": '{"question": ' + "9" * 5000 + "}",
        "garbage": "{not json",
        "empty": "",
        "good": '{"question": "How does the checker bound loops?"}',
    }
    paths = {}
    for name, text in made.items():
        paths[name] = root / f"{name}.json"
        paths[name].write_text(text, encoding="utf-8")
    paths["bad_utf8"] = root / "bad_utf8.json"
    paths["bad_utf8"].write_bytes(b'{"question": "caf\xe9"}')
    paths["directory"] = root
    paths["missing"] = root / "missing.json"
    paths["unreadable"] = root / "unreadable.json"
    paths["unreadable"].write_text("{}", encoding="utf-8")
    paths["unreadable"].chmod(0)
    return paths


def test_deeply_nested_input_exits_2_without_traceback(files: dict[str, Path]) -> None:
    """JSON nested 30,000 deep, inline or in a file, is bad input: exit 2 and a message."""
    for raw in ("[" * 30000 + "]" * 30000, f"@{files['deep']}", f"@{files['deep_object']}"):
        code, _, err = run_cli(["run", EXAMPLE, "--input", raw])
        assert code == 2
        assert "nests too deeply" in err
        assert "Traceback" not in err


def test_input_file_that_is_not_utf8_is_named(files: dict[str, Path]) -> None:
    """A file of bad UTF-8 is named in the error, which says to save it as UTF-8."""
    code, _, err = run_cli(["run", EXAMPLE, "--input", f"@{files['bad_utf8']}"])
    assert code == 2
    assert f"input file {str(files['bad_utf8'])!r} is not UTF-8 text" in err
    assert "save it as UTF-8" in err


def test_check_reports_a_workflow_compiled_at_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    """A module compiling a broken workflow at import (the README's pattern) gets its problems
    listed exactly as for a bad workflow, exit 1, not an import failure."""
    (tmp_path / "eagerflow.py").write_text(
        "from statemachine_agent import Context, Workflow\n"
        "class C(Context):\n    x: int | None = None\n"
        "wf = Workflow('eager', C)\n"
        "wf.add_state('a', lambda c: None, initial=True, reads=['x'])\n"
        "wf.add_state('b', lambda c: None)\n"
        "wf.terminal('done')\n"
        "wf.transition('a', 'b').transition('b', 'a')\n"
        "compiled = wf.compile()\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "eagerflow", raising=False)
    code, _, err = run_cli(["check", "eagerflow:compiled"])
    assert code == 1
    assert "workflow 'eager' has" in err
    for problem in ("[no-failure-terminal]", "[unreachable-state]", "[unbounded-cycle]"):
        assert problem in err
    assert "importing" not in err
    assert "Traceback" not in err


def test_policy_named_as_module_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--policy MODULE:OBJECT uses that callable as the policy; a non-callable or a class exits 2."""
    (tmp_path / "mypolicies.py").write_text(
        "from statemachine_agent import Context, Workflow\n"
        "class C(Context):\n    n: int = 0\n"
        "wf = Workflow('choose', C)\n"
        "wf.add_state('pick', lambda c: None, initial=True, decision=True)\n"
        "wf.terminal('left')\n"
        "wf.terminal('right')\n"
        "wf.terminal('failed', outcome='failure')\n"
        "wf.transition('pick', 'left', description='go left')\n"
        "wf.transition('pick', 'right', description='go right')\n"
        "def last(decision):\n"
        "    return decision.options[-1]\n"
        "not_a_policy = 42\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "mypolicies", raising=False)
    question = "{}"
    code, out, _ = run_cli(["run", "mypolicies:wf"])
    assert (code, "terminal: left" in out) == (0, True)  # the default policy takes the first exit
    code, out, _ = run_cli(["run", "mypolicies:wf", "--policy", "mypolicies:last"])
    assert (code, "terminal: right" in out) == (0, True)
    code, _, err = run_cli(["run", "mypolicies:wf", "--input", question, "--policy",
                                "mypolicies:not_a_policy"])
    assert code == 2
    assert "is a int, not a policy" in err
    code, _, err = run_cli(["run", "mypolicies:wf", "--policy", "nosuchmodule_xyz:p"])
    assert code == 2
    assert "cannot import module 'nosuchmodule_xyz'" in err


@pytest.fixture
def loud_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_sync re-raises an unrouted exception with its result attached (the runner's coming
    default), emulated over today's runner."""
    original = compile_module.CompiledWorkflow.run_sync

    def run_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        if result.error is not None and result.path[-1].kind == "fail":
            setattr(result.error, "__statemachine_agent_result__", result)  # noqa: B010
            raise result.error
        return result

    monkeypatch.setattr(compile_module.CompiledWorkflow, "run_sync", run_sync)


def test_unrouted_error_prints_result_and_users_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          loud_errors: None) -> None:
    """An exception no error transition routes is a bug in the workflow: the run's result, then
    `error: Type: message` and the traceback of the user's code; exit 1."""
    (tmp_path / "buggyflow.py").write_text(
        "from statemachine_agent import Context, Workflow\n"
        "class C(Context):\n    n: int = 0\n"
        "wf = Workflow('buggy', C)\n"
        "def helper(n):\n    return 1 / n\n"
        "@wf.state(initial=True, reads=['n'], writes=['n'])\n"
        "def divide(ctx):\n    ctx.n = helper(ctx.n)\n"
        "wf.terminal('done')\n"
        "wf.terminal('failed', outcome='failure')\n"
        "wf.transition(divide, 'done')\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "buggyflow", raising=False)
    code, out, err = run_cli(["run", "buggyflow:wf", "--input", '{"n": 0}'])
    assert code == 1
    assert "terminal: failed (failure)" in out
    assert "error:    ZeroDivisionError: division by zero" in out
    assert "in your workflow's code" in err
    assert "buggyflow.py" in err
    assert "in helper" in err
    assert "ZeroDivisionError: division by zero" in err
    assert "statemachine_agent/runner.py" not in err  # the library's frames are left out


def test_routed_error_is_a_plain_failure(loud_errors: None) -> None:
    """An error that a transition routes is an outcome, not a bug: no traceback."""
    code, out, err = run_cli(["run", EXAMPLE, "--input", '{"question": "how is it?"}'])
    assert code == 1
    assert "terminal: failed (failure)" in out
    assert err == ""


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@st.composite
def argvs(draw: st.DrawFn, files: dict[str, Path], out_dir: Path) -> list[str]:
    """A command line: a command, a target, and options, any of them bad."""
    command = draw(st.sampled_from(["run", "check", "diagram"]))
    target = draw(st.sampled_from([EXAMPLE, EXAMPLE, EXAMPLE, "nocolon", ":", "x:", ":y", "no_such_xyz:wf",
                                   "statemachine_agent.examples.research:Corpus", "os:path",
                                   "statemachine_agent.examples.research:nope.deeper"]))
    argv = [command, target]
    if command == "run":
        if draw(st.booleans()):
            argv += ["--input", draw(st.one_of(
                JSON_VALUES.map(json.dumps),
                st.fixed_dictionaries({"question": st.text(max_size=30)}).map(json.dumps),
                st.text(max_size=30),
                st.sampled_from([f"@{p}" for p in files.values()] + ["@", "@\x00"]),
            ))]
        if draw(st.booleans()):
            argv += ["--max-steps", draw(st.one_of(st.integers(-3, 8).map(str), st.text(max_size=4)))]
        if draw(st.booleans()):
            argv += ["--timeout", draw(st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e-9", "30", "x",
                                                        "1e400"]))]
        if draw(st.booleans()):
            argv += ["--policy", draw(st.sampled_from(["first", "random", "random:7", "random:x", "llm", ":",
                                                       "statemachine_agent.policies:first_enabled",
                                                       "statemachine_agent.policies:Decision",
                                                       "no_such_xyz:p", "os:sep"]))]
        if draw(st.booleans()):
            argv.append("--json")
    elif command == "diagram":
        name = draw(st.sampled_from(["x.dot", "x.mmd", "x.jpeg", "x", "sub/x.dot"]))
        argv += ["-o", str(out_dir / name)]
        if draw(st.booleans()):
            argv += ["--run", str(draw(st.sampled_from(list(files.values()))))]
    return argv


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_command_lines_never_show_a_traceback(data: st.DataObject, files: dict[str, Path],
                                                     tmp_path: Path) -> None:
    """Whatever the argv and input files (garbage or deep JSON, huge numbers, non-objects, bad
    paths, directories, unreadable files, bad budgets and policies), the exit code is 0, 1 or 2
    and nothing prints a traceback."""
    argv = data.draw(argvs(files, tmp_path))
    code, _, err = run_cli(argv)
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2:
        assert err.strip(), argv  # a usage error always says what is wrong
