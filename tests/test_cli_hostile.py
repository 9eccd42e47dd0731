"""The command line under hostile input (issue 16, group 6): names that would drive a terminal,
endless or huge @files, junk run files, modules that exit at import, NaN, and symlinked outputs.
Bad input exits 2 with one line that says what to do; nothing printed holds a raw control or bidi
character; --json is strict JSON."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachine_agent.cli import MAX_INPUT_BYTES, main, non_finite_field
from statemachine_agent.stores import SQLiteStore

EXAMPLE = "statemachine_agent.examples.research:workflow"

# Characters a terminal acts on: C0 (ESC, CR, NUL, BEL...), DEL, C1 (NEL, CSI), and the bidi marks,
# embeddings, overrides and isolates that reorder what follows them; line and paragraph separators.
HOSTILE = ("\x1b", "\n", "\r", "\t", "\x00", "\x07", "\x08", "\x7f", "\x85", "\x9b", "\u061c", "\u200e", "\u200f",
           "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\u2028",
           "\u2029")
hostile_text = st.text(st.one_of(st.sampled_from(HOSTILE), st.characters(codec="utf-8")), min_size=1, max_size=10)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run the command in-process: its exit code (argparse's SystemExit included), stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_clean(text: str, *names: str) -> None:
    """Nothing in ``text`` but printable characters and the command's own line breaks, and no name
    that holds a character that is not printable appears in it as it is."""
    raw = sorted({f"U+{ord(c):04X}" for c in text if not c.isprintable() and c != "\n"})
    assert not raw, (raw, text)
    for name in names:
        if not name.isprintable():
            assert name not in text, (name, text)


def assert_one_line_usage_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2, (code, out, err)
    assert "Traceback" not in err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("statemachine-agent: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# --- 1. names that would drive a terminal ------------------------------------------------------------
FLOW = '''
import json
import pathlib

from pydantic import BaseModel

from statemachine_agent import UNSET, Context, Workflow

NAMES = json.loads((pathlib.Path(__file__).parent / "names.json").read_text(encoding="utf-8"))


class Ok(BaseModel):
    ok: bool = True


class C(Context):
    amount: float = 0.0
    approval: Ok = UNSET


wf = Workflow(NAMES["workflow"], C)
wf.add_state(NAMES["state"], lambda c: None, initial=True)
wf.wait(NAMES["wait"], event=NAMES["event"], payload=Ok, writes=["approval"])
wf.terminal(NAMES["terminal"])
wf.terminal("failed", outcome="failure")
wf.transition(NAMES["state"], NAMES["wait"])
wf.transition(NAMES["wait"], NAMES["terminal"])
compiled = wf.compile()
'''


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder on sys.path holding hostileflow.py, whose names come from names.json beside it."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "hostileflow.py").write_text(FLOW, encoding="utf-8")
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("hostileflow", None)


def load_flow(root: Path, names: dict[str, str]) -> Any:
    (root / "names.json").write_text(json.dumps(names), encoding="utf-8")
    sys.modules.pop("hostileflow", None)
    importlib.invalidate_caches()
    return importlib.import_module("hostileflow")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=hostile_text, other=hostile_text)
def test_printed_names_never_hold_a_raw_control_or_bidi_character(text: str, other: str, flow_dir: Path) -> None:
    """Whatever a run id, workflow, state, event or terminal is called, every command that prints it
    (check, run, runs list/show/deliver/resume, diagram, and their errors) escapes what a terminal
    would act on, and --json reads back as the very names."""
    names = {"workflow": "w" + text, "state": "s" + text, "wait": "v" + text, "event": "e" + text,
             "terminal": "t" + text}
    flow = load_flow(flow_dir, names)
    run_id = "r" + text
    db = flow_dir / "runs.db"
    for leftover in flow_dir.glob("runs.db*"):
        leftover.unlink()
    with SQLiteStore(db) as store:
        assert flow.compiled.run_sync(flow.C(), store=store, run_id=run_id).waiting == "e" + text
    every = [*names.values(), run_id, "x" + other]
    store_args = ["--store", str(db)]
    for argv in (["check", "hostileflow:compiled"], ["run", "hostileflow:compiled"],
                 ["runs", "list", *store_args], ["runs", "list", "--workflow", "w" + text, *store_args],
                 ["runs", "show", run_id, *store_args], ["runs", "show", "x" + other, *store_args],
                 ["runs", "resume", "hostileflow:compiled", "x" + other, *store_args],
                 ["runs", "deliver", "hostileflow:compiled", run_id, "x" + other, *store_args],
                 ["diagram", "hostileflow:compiled", "-o", str(flow_dir / "x.dot"), "--run", run_id, *store_args],
                 ["diagram", "hostileflow:compiled", "-o", str(flow_dir / f"x{other}.dot")],
                 ["runs", "deliver", "hostileflow:compiled", run_id, "e" + text, *store_args]):
        code, out, err = run_cli(argv)
        assert code in (0, 1, 2), (argv, code, err)
        assert "Traceback" not in err, (argv, err)
        assert_clean(out + err, *every)
    for argv in (["run", "hostileflow:compiled", "--json"], ["runs", "list", "--json", *store_args],
                 ["runs", "show", run_id, "--json", *store_args]):
        code, out, err = run_cli(argv)
        assert code == (1 if argv[0] == "run" else 0), (argv, err)  # a run that waits has not succeeded
        assert_clean(out + err, *every)
        data = json.loads(out)
        record = data[0] if isinstance(data, list) else data.get("run", data)
        assert record["workflow"] == "w" + text
        if argv[0] == "runs":
            assert record["run_id"] == run_id


def test_argparse_errors_escape_the_words_they_echo() -> None:
    """An unknown extra word (argparse echoes it as it is) or a bad choice: exit 2, escaped."""
    for argv in (["check", EXAMPLE, "\x1b[2J\u202eX"], ["\x1b[2J\u202eX"], ["runs", "\x9b31m"]):
        code, out, err = run_cli(argv)
        assert code == 2 and "error:" in err, (argv, err)
        assert_clean(out + err, *argv)


def test_the_resume_hint_of_an_odd_id_is_printable_and_pastes_back(flow_dir: Path) -> None:
    """The `resume it:` command of a run whose id holds ESC, a newline and a right-to-left override
    is printable, and bash reads its ANSI-C quoted id back as the id."""
    flow = load_flow(flow_dir, {"workflow": "w", "state": "s", "wait": "v", "event": "e", "terminal": "t"})
    run_id = "r\x1b[2J\n\u202eok'"
    db = flow_dir / "hint.db"
    with SQLiteStore(db) as store:
        flow.compiled.run_sync(flow.C(), store=store, run_id=run_id)
    code, out, err = run_cli(["runs", "show", run_id, "--store", str(db)])
    assert (code, err) == (0, "")
    assert_clean(out, run_id)
    hint = out.splitlines()[-1]
    word = hint.split(" MODULE:OBJECT ")[1].split(" e --store ")[0]
    assert word == "$'r\\x1b[2J\\n\\u202eok\\''"
    assert subprocess.run(["bash", "-c", f"printf %s {word}"], capture_output=True, text=True,
                          check=True).stdout == run_id


BROKEN = '''
from statemachine_agent import Context, Workflow


class C(Context):
    x: int | None = None


X = "\\x1b[2J\\nrm -rf ~\\u202e"
wf = Workflow("b" + X, C)
wf.add_state("a" + X, lambda c: None, initial=True, reads=["x"])
wf.add_state("b" + X, lambda c: None)
wf.terminal("done" + X)
wf.transition("a" + X, "b" + X).transition("b" + X, "a" + X).transition("a" + X, "nope" + X)
'''


def test_check_lists_each_problem_on_one_line_whatever_the_names(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken workflow whose names hold ESC, a newline and a right-to-left override: exit 1, the
    header, then exactly one escaped line per problem (a newline in a name starts no line)."""
    (tmp_path / "brokenhostile.py").write_text(BROKEN, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "brokenhostile", raising=False)
    code, out, err = run_cli(["check", "brokenhostile:wf"])
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert lines[0] == "workflow 'b\\x1b[2J\\nrm -rf ~\\u202e' has 5 problems:"
    assert len(lines) == 6 and all(line.startswith("  - [") for line in lines[1:]), err
    assert_clean(err, "\x1b[2J\nrm -rf ~\u202e")


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """`statemachine-agent run ... --json | head -c0`: the pipe closes before the command writes;
    it stops quietly (exit 1, nothing on stderr) instead of a BrokenPipeError traceback."""
    child = subprocess.Popen([sys.executable, "-m", "statemachine_agent.cli", "run", EXAMPLE, "--input",
                              '{"question": "How does the checker bound loops?"}', "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    err = child.stderr.read().decode()
    assert (child.wait(timeout=60), err) == (1, "")


# --- 2. @file inputs are read with a bound -----------------------------------------------------------
def _limit_memory() -> None:  # pragma: no cover - runs in the child
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.parametrize("option", ["--input", "--payload"])
def test_an_endless_at_file_exits_2_promptly(option: str, tmp_path: Path) -> None:
    """`--input @/dev/zero` (or a payload from it) is refused after reading 16 MiB: exit 2 within
    seconds, one line, in a real process (its memory capped, so an unbounded read fails fast)."""
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero here")
    argv = ["run", EXAMPLE, "--input", "@/dev/zero"] if option == "--input" else \
        ["runs", "deliver", EXAMPLE, "r", "e", "--payload", "@/dev/zero", "--store", str(tmp_path / "none.db")]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "statemachine_agent.cli", *argv], capture_output=True, text=True,
                          timeout=60, preexec_fn=_limit_memory, check=False)
    assert time.monotonic() - started < 30
    assert_one_line_usage_error(done.returncode, done.stdout, done.stderr, "'/dev/zero' is larger than 16 MiB")


def test_an_input_file_over_the_cap_is_refused_naming_it(tmp_path: Path) -> None:
    """A regular file one byte over the cap: exit 2 with one line naming the file and the cap; one at
    the cap is read (and judged as JSON)."""
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(MAX_INPUT_BYTES + 1)
    code, out, err = run_cli(["run", EXAMPLE, "--input", f"@{big}"])
    assert_one_line_usage_error(code, out, err, f"input file {str(big)!r} is larger than 16 MiB")
    with big.open("wb") as f:
        f.write(b'{"question": "x"}' + b" " * (MAX_INPUT_BYTES - 17))
    assert os.path.getsize(big) == MAX_INPUT_BYTES
    code, out, err = run_cli(["run", EXAMPLE, "--input", f"@{big}"])
    assert code in (0, 1) and err == ""


# --- 3. run files for diagram --run -------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real run of the example, as `run --json` writes it."""
    code, out, _ = run_cli(["run", EXAMPLE, "--input", '{"question": "How does the checker bound loops?"}',
                            "--json"])
    assert code == 0
    data: dict[str, Any] = json.loads(out)
    return data


BAD_RUN_FILES = {
    "not JSON": b"{not json",
    "binary": bytes(range(256)) * 4,
    "empty": b"",
    "a list": b"[1, 2]",
    "huge nesting": b"[" * 100_000 + b"]" * 100_000,
    "nested object": b'{"path": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001,
    "huge number": b'{"terminal": ' + b"9" * 5000 + b"}",
    "no path": b'{"terminal": "done", "outcome": "success"}',
    "path not a list": b'{"path": "plan", "terminal": "done", "outcome": "success"}',
    "step not an object": b'{"path": [1], "terminal": "done", "outcome": "success"}',
    "state a list": b'{"path": [{"state": ["plan"], "transition": "t", "kind": "transition"}], '
                    b'"terminal": "done", "outcome": "success"}',
    "error a number": b'{"path": [{"state": "plan", "transition": "t", "kind": "transition", "error": 7}], '
                      b'"terminal": "done", "outcome": "success"}',
    "transition an object": b'{"path": [{"state": "plan", "transition": {}, "kind": "transition"}], '
                            b'"terminal": "done", "outcome": "success"}',
    "ran a string": b'{"path": [{"state": "plan", "transition": "t", "kind": "transition", "ran": "no"}], '
                    b'"terminal": "done", "outcome": "success"}',
    "terminal null": b'{"path": [], "terminal": null, "outcome": "success"}',
    "unknown state": b'{"path": [{"state": "ghost\\u001b", "transition": "t", "kind": "fail"}], '
                     b'"terminal": "done", "outcome": "success"}',
    "NaN run id": b'{"path": [], "terminal": "done", "outcome": "success", "run_id": NaN}',
}


@pytest.mark.parametrize("name", sorted(BAD_RUN_FILES))
def test_malformed_run_files_exit_2_with_one_line(name: str, tmp_path: Path) -> None:
    """A run file that is not a recorded run (not JSON, binary, nested 100,000 deep, wrong types,
    another workflow's states): exit 2 and one line saying how to write one; nothing is drawn."""
    run_file = tmp_path / "run.json"
    run_file.write_bytes(BAD_RUN_FILES[name])
    code, out, err = run_cli(["diagram", EXAMPLE, "-o", str(tmp_path / "x.dot"), "--run", str(run_file)])
    assert_one_line_usage_error(code, out, err)
    assert_clean(err)
    assert not (tmp_path / "x.dot").exists()


JSON_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def junk_run_files(draw: st.DrawFn, recorded: dict[str, Any]) -> bytes:
    """Bytes, JSON junk, or the real recorded run with a field (of the run or of a step) replaced."""
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "mutated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "json":
        return json.dumps(draw(JSON_JUNK)).encode()
    run = json.loads(json.dumps(recorded))
    target = run
    if draw(st.booleans()) and run["path"]:
        target = run["path"][draw(st.integers(0, len(run["path"]) - 1))]
    key = draw(st.sampled_from(sorted(target)))
    if draw(st.integers(0, 4)) == 0:
        del target[key]
    else:
        target[key] = draw(JSON_JUNK)
    return json.dumps(run).encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_junk_run_files_draw_or_exit_2_with_one_line(data: st.DataObject, recorded: dict[str, Any],
                                                    tmp_path: Path) -> None:
    """Whatever the run file holds, diagram --run draws it (exit 0) or exits 2 with one printable
    line; never a traceback."""
    run_file = tmp_path / "run.json"
    run_file.write_bytes(data.draw(junk_run_files(recorded)))
    code, out, err = run_cli(["diagram", EXAMPLE, "-o", str(tmp_path / "x.dot"), "--run", str(run_file)])
    if code != 0:
        assert_one_line_usage_error(code, out, err)
    assert_clean(out + err)


# --- 4. a module that exits while importing -----------------------------------------------------------
EXITS = {
    "SystemExit(0)": ("raise SystemExit(0)\n", "SystemExit(0)"),
    "sys.exit()": ("import sys\nsys.exit()\n", "SystemExit(None)"),
    "exit with a message": ("raise SystemExit('bye\\x1b[2J')\n", "SystemExit('bye\\x1b[2J')"),
    "SystemExit(3)": ("raise SystemExit(3)\n", "SystemExit(3)"),
    "a BaseException": ("class Stop(BaseException):\n    pass\nraise Stop('halt')\n", "Stop: halt"),
    "GeneratorExit": ("raise GeneratorExit\n", "GeneratorExit"),
}


@pytest.mark.parametrize("how", sorted(EXITS))
@pytest.mark.parametrize("command", ["check", "run", "diagram", "policy"])
def test_a_module_exiting_at_import_is_an_error(how: str, command: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """sys.exit() (any code, 0 and None too) or another BaseException raised while importing the
    user's module: exit 2 with one line naming the module and what it raised, never a silent exit."""
    source, shown = EXITS[how]
    (tmp_path / "exitmod.py").write_text(source, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "exitmod", raising=False)
    argv = {"check": ["check", "exitmod:wf"], "run": ["run", "exitmod:wf"],
            "diagram": ["diagram", "exitmod:wf", "-o", "x.dot"],
            "policy": ["run", EXAMPLE, "--input", '{"question": "q"}', "--policy", "exitmod:p"]}[command]
    code, out, err = run_cli(argv)
    assert_one_line_usage_error(code, out, err, "importing 'exitmod' failed", shown)
    assert_clean(err)


def test_keyboard_interrupt_at_import_still_interrupts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the module imports is the person stopping the command: it propagates."""
    (tmp_path / "intmod.py").write_text("raise KeyboardInterrupt\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "intmod", raising=False)
    with pytest.raises(KeyboardInterrupt):
        main(["check", "intmod:wf"])


# --- 5. --json is strict JSON --------------------------------------------------------------------------
NAN_FLOW = '''
from statemachine_agent import Context, Workflow


class M(Context):
    x: float = 0.0
    xs: list[float] = []


wf = Workflow("measure", M)


@wf.state(initial=True, writes=["x", "xs"])
def measure(ctx: M) -> None:
    ctx.x = float("nan")
    ctx.xs = [float("inf"), -float("inf"), 1.5]


wf.terminal("done")
wf.terminal("failed", outcome="failure")
wf.transition(measure, "done")
'''


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def test_run_json_is_strict_json_even_with_nan_in_the_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """A context holding NaN and infinities prints as strict JSON (a reader refusing NaN and Infinity
    reads it), the numbers as the strings "NaN", "Infinity", "-Infinity"; the plain output too."""
    (tmp_path / "nanflow.py").write_text(NAN_FLOW, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "nanflow", raising=False)
    code, out, err = run_cli(["run", "nanflow:wf", "--json"])
    assert (code, err) == (0, "")
    data = json.loads(out, parse_constant=_refuse_constant)
    assert data["context"] == {"x": "NaN", "xs": ["Infinity", "-Infinity", 1.5]}
    code, out, _ = run_cli(["run", "nanflow:wf"])
    assert code == 0
    context = out.split("context:  ", 1)[1]
    assert json.loads(context, parse_constant=_refuse_constant) == data["context"]


# --- 6. non-finite numbers in inputs and payloads ------------------------------------------------------
NON_FINITE = [('{"amount": NaN}', "amount", "is NaN"), ('{"amount": Infinity}', "amount", "is infinite"),
              ('{"amount": -Infinity}', "amount", "is infinite"), ('{"amount": 1e999}', "amount", "is infinite"),
              ('{"order": {"items": [1, {"price": NaN}]}}', "order.items[1].price", "is NaN"),
              ('{"odd key": [-1e400]}', '["odd key"][0]', "is infinite")]


@pytest.mark.parametrize(("raw", "field", "what"), NON_FINITE)
@pytest.mark.parametrize("where", ["--input", "--input @file", "--payload", "--patch"])
def test_a_non_finite_number_is_refused_naming_its_field(raw: str, field: str, what: str, where: str,
                                                         tmp_path: Path) -> None:
    """NaN, Infinity, -Infinity and 1e999, in an input, a file, a payload or a patch: exit 2 with one
    line naming the field's path; nothing runs and no store is touched."""
    option = where.split(maxsplit=1)[0]
    value = raw
    if where.endswith("@file"):
        (tmp_path / "in.json").write_text(raw, encoding="utf-8")
        value = f"@{tmp_path / 'in.json'}"
    db = tmp_path / "none.db"
    argv = {"--input": ["run", EXAMPLE, "--input", value],
            "--payload": ["runs", "deliver", EXAMPLE, "r", "e", "--payload", value, "--store", str(db)],
            "--patch": ["runs", "fork", EXAMPLE, "r", "--at-step", "0", "--patch", value, "--store", str(db)]}[option]
    code, out, err = run_cli(argv)
    assert_one_line_usage_error(code, out, err, f"field '{field}' {what}")
    assert not db.exists()


def test_an_input_that_does_not_fit_the_context_is_one_line_naming_the_fields() -> None:
    """Input pydantic refuses: one line naming each bad field (escaped), not pydantic's report."""
    code, out, err = run_cli(["run", EXAMPLE, "--input", '{"question": "", "odd\\u001b\\n": 1}'])
    assert_one_line_usage_error(code, out, err, "--input does not fit ResearchContext: field 'question': ",
                                "field '[\"odd\\u001b\\n\"]': Extra inputs are not permitted")
    assert_clean(err)


JSON_LIKE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    | st.tuples(inner, inner),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(JSON_LIKE)
def test_non_finite_field_finds_a_number_exactly_when_json_cannot_hold_it(value: Any) -> None:
    """The helper the command line (and the library's deliver) uses: a path exactly when strict JSON
    refuses the value, and that path leads to a NaN or an infinity."""
    field = non_finite_field(value)
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        assert field is not None
    else:
        assert field is None
    if field is not None:
        found = _follow(value, field)
        assert isinstance(found, float) and not math.isfinite(found)


def _follow(value: Any, field: str) -> Any:
    """Walk ``field`` (``a.b[2]["odd key"]``) into ``value``."""
    rest = field
    while rest:
        if rest.startswith("["):
            token, rest = rest[1:].split("]", 1) if not rest.startswith('["') else _quoted(rest)
            value = value[json.loads(token)] if token.startswith('"') else value[int(token)]
        else:
            rest = rest.removeprefix(".")
            cut = min([i for i in (rest.find("."), rest.find("[")) if i >= 0], default=len(rest))
            value, rest = value[rest[:cut]], rest[cut:]
    return value


def _quoted(rest: str) -> tuple[str, str]:
    decoder = json.JSONDecoder()
    key, end = decoder.raw_decode(rest, 1)
    return json.dumps(key), rest[end + 1:]


# --- 7. -o never writes through a symlink ---------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".dot", ".mmd", ".svg"])
@pytest.mark.parametrize("dangling", [False, True])
def test_diagram_output_refuses_a_symlink(suffix: str, dangling: bool, tmp_path: Path) -> None:
    """-o naming a symbolic link (to a file, or to nowhere yet): exit 2, one line; the file the link
    points to is neither written nor created."""
    target = tmp_path / "precious.txt"
    if not dangling:
        target.write_text("keep me", encoding="utf-8")
    link = tmp_path / f"out{suffix}"
    link.symlink_to(target)
    code, out, err = run_cli(["diagram", EXAMPLE, "-o", str(link)])
    assert_one_line_usage_error(code, out, err, "symbolic link")
    if dangling:
        assert not target.exists()
    else:
        assert target.read_text(encoding="utf-8") == "keep me"
    assert link.is_symlink()


def test_diagram_output_refuses_what_is_no_regular_file(tmp_path: Path) -> None:
    """-o naming a FIFO (here with a reader, so an open never blocks the test) or a device: exit 2
    with one line, nothing written into the pipe."""
    fifo = tmp_path / "out.dot"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        code, out, err = run_cli(["diagram", EXAMPLE, "-o", str(fifo)])
        assert_one_line_usage_error(code, out, err, "is not a regular file")
        assert os.read(reader, 4096) == b""  # the command's writer closed with nothing written
    finally:
        os.close(reader)
    if Path("/dev/null").exists():
        code, out, err = run_cli(["diagram", EXAMPLE, "-o", "/dev/null", "--format", "dot"])
        assert_one_line_usage_error(code, out, err, "is not a regular file")


def test_diagram_output_to_a_pipe_nobody_reads_does_not_hang(tmp_path: Path) -> None:
    """-o naming a FIFO without a reader: exit 2 at once (the open does not wait for a reader). In a
    child process with a timeout, so that a regression fails instead of hanging the suite."""
    fifo = tmp_path / "out.dot"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-m", "statemachine_agent.cli", "diagram", EXAMPLE, "-o", str(fifo)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert_one_line_usage_error(done.returncode, done.stdout, done.stderr, "cannot write")


def test_write_diagrams_does_not_write_through_a_symlink(tmp_path: Path) -> None:
    """The library's write_diagrams (what `python -m statemachine_agent.examples --diagrams` uses)
    refuses a NAME.dot that is a symbolic link, with OutputRefused, leaving its target as it was."""
    from statemachine_agent.diagrams import OutputRefused, write_diagrams
    from statemachine_agent.examples.research import workflow

    target = tmp_path / "precious.txt"
    target.write_text("keep me", encoding="utf-8")
    (tmp_path / "research.dot").symlink_to(target)
    with pytest.raises(OutputRefused, match="symbolic link"):
        write_diagrams(workflow.compile(), tmp_path)
    assert target.read_text(encoding="utf-8") == "keep me"
