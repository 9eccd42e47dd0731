"""The command line for stored runs: `runs list|show|resume|deliver|fork --store FILE` and
`diagram --run RUN_ID --store FILE`, on real SQLiteStore files; bad input exits 2, never a traceback.

The runs are made with the library first: ``ok-1`` ends, ``crash-1`` crashes in its second step (an
exception that is not an ``Exception``, like the process dying) and is left running in the store.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachine_agent import Context, Workflow
from statemachine_agent.cli import main
from statemachine_agent.compile import CompiledWorkflow
from statemachine_agent.result import RunResult
from statemachine_agent.spec import Outcome
from statemachine_agent.stores import MemoryStore, RunStatus, SQLiteStore
from statemachine_agent.stores._sqlite import _run_crc

FLOWS = '''
from typing import Any

from pydantic import Field

from statemachine_agent import Context, Workflow


class Crash(BaseException):
    """Stands for the process dying: never routed, never caught by the runner."""


MODE = {"crash": False, "bug": False}
CALLS: list[int] = []


class Order(Context):
    n: int = 0
    receipts: list[str] = Field(default_factory=list)


wf = Workflow("order", Order)


async def charge(amount: int, idempotency_key: str) -> str:
    CALLS.append(amount)
    return f"receipt-{amount}"


wf.tool(charge, effect="idempotent")


def helper(n: int) -> int:
    return n // 0


@wf.state(initial=True, reads=["n", "receipts"], writes=["n", "receipts"], tools=["charge"])
async def pay(ctx: Order, tools: Any) -> None:
    receipt = await tools.call("charge", amount=ctx.n)
    if ctx.n == 1 and MODE["crash"]:
        MODE["crash"] = False
        raise Crash
    if ctx.n == 1 and MODE["bug"]:
        helper(ctx.n)
    ctx.receipts.append(receipt)
    ctx.n += 1


wf.terminal("done")
wf.terminal("failed", outcome="failure")
wf.transition("pay", "pay", guard=lambda c: c.n < 3, max_traversals=2)
wf.transition("pay", "done")
compiled = wf.compile()

# Another workflow, and a changed "order" whose state `pay` is gone.
other = Workflow("other", Order)
other.add_state("start", lambda c: None, initial=True)
other.terminal("end")
other.terminal("failed", outcome="failure")
other.transition("start", "end")

changed = Workflow("order", Order)
changed.add_state("bill", lambda c: None, initial=True)
changed.terminal("done")
changed.terminal("failed", outcome="failure")
changed.transition("bill", "done")
'''


@dataclass
class Runs:
    """A store file holding a finished run and a crashed one, and the module that made them."""

    db: Path
    flows: ModuleType
    root: Path


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run the command in-process: its exit code (argparse's SystemExit included), stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Runs:
    """runs.db with `ok-1` (done) and `crash-1` (crashed in step 1, left running)."""
    (tmp_path / "runsflow.py").write_text(FLOWS, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "runsflow", raising=False)
    importlib.invalidate_caches()
    flows = importlib.import_module("runsflow")
    db = tmp_path / "runs.db"
    with SQLiteStore(db) as store:
        flows.compiled.run_sync(flows.Order(), store=store, run_id="ok-1")
        flows.MODE["crash"] = True
        with pytest.raises(flows.Crash):
            flows.compiled.run_sync(flows.Order(), store=store, run_id="crash-1")
        assert store.load("crash-1").result().run.status is RunStatus.RUNNING
    flows.CALLS.clear()
    return Runs(db, flows, tmp_path)


def set_record(db: Path, run_id: str, **changes: Any) -> None:
    """Change a stored run's record the way a store would write it (a valid checksum)."""
    conn = sqlite3.connect(db)
    try:
        (text,) = conn.execute("SELECT record FROM sma_runs WHERE run_id=?", (run_id,)).fetchone()
        record = {**json.loads(text), **changes}
        new = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        conn.execute("UPDATE sma_runs SET record=?, crc=?, status=? WHERE run_id=?",
                     (new, _run_crc(run_id, new), record["status"], run_id))
        conn.commit()
    finally:
        conn.close()


ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


# --- runs list ---------------------------------------------------------------------------------------
def test_list_prints_one_line_per_run_newest_first(runs: Runs) -> None:
    """list: a header, then id, workflow, status, state or terminal, steps committed and the update
    time in ISO UTC, one line per run, the most recently updated first."""
    code, out, err = run_cli(["runs", "list", "--store", str(runs.db)])
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["RUN", "WORKFLOW", "STATUS", "STATE", "STEPS", "VERSION", "UPDATED", "(UTC)"]
    version = runs.flows.compiled.fingerprint[:8]
    assert re.fullmatch(rf"crash-1\s+order\s+running\s+pay\s+1\s+{version}\s+{ISO}", lines[1]), lines[1]
    assert re.fullmatch(rf"ok-1\s+order\s+done\s+done \(success\)\s+3\s+{version}\s+{ISO}", lines[2]), lines[2]
    assert len(lines) == 3


def test_list_as_json_and_by_workflow(runs: Runs) -> None:
    """--json gives every record; --workflow keeps one workflow's runs and says when there are none."""
    code, out, _ = run_cli(["runs", "list", "--store", str(runs.db), "--json"])
    data = json.loads(out)
    assert code == 0
    assert [r["run_id"] for r in data] == ["crash-1", "ok-1"]
    assert [r["status"] for r in data] == ["running", "done"]
    code, out, _ = run_cli(["runs", "list", "--store", str(runs.db), "--workflow", "order"])
    assert code == 0 and len(out.splitlines()) == 3
    code, out, _ = run_cli(["runs", "list", "--store", str(runs.db), "--workflow", "other"])
    assert code == 0
    assert out.strip() == f"no runs of workflow 'other' in the store {str(runs.db)!r}"


def test_list_of_an_empty_store_says_so(tmp_path: Path) -> None:
    """A store with no runs: one line saying so (and [] as JSON), exit 0."""
    db = tmp_path / "empty.db"
    SQLiteStore(db).close()
    code, out, _ = run_cli(["runs", "list", "--store", str(db)])
    assert code == 0
    assert out.strip() == f"no runs in the store {str(db)!r}"
    assert json.loads(run_cli(["runs", "list", "--store", str(db), "--json"])[1]) == []


# --- runs show ---------------------------------------------------------------------------------------
def test_show_a_crashed_run_ends_with_how_to_resume_it(runs: Runs) -> None:
    """show: the record, the path, the waits and the journal (the call made in the step that did not
    commit is marked), and a last line with the command that resumes the run."""
    code, out, err = run_cli(["runs", "show", "crash-1", "--store", str(runs.db)])
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "run crash-1 of workflow order"
    assert lines[1].startswith("status:   running: next step 1 is in state pay")
    assert "steps:    1 committed, 1 actions run (budget 3); epoch 1, step 1 resumed 0 times after crashes" in out
    assert re.search(rf"created:  {ISO}   updated: {ISO}", out)
    assert 'context:  {"n": 1, "receipts": ["receipt-0"]}' in out
    assert "path (1 step):\n    0  pay -> pay via pay_to_pay (transition), writes n, receipts\n" in out
    assert "waits:\n  waiting for: nothing\n  inbox: empty\n" in out
    assert "journal (2 calls):" in out
    assert ('    0/0  charge  idempotent  done  key crash-1/0/0  arguments {"amount": 0}  result "receipt-0"\n'
            in out)
    assert re.search(r"  1/0  charge .* key crash-1/1/0 .* result \"receipt-1\"  \(step not committed", out)
    assert lines[-1] == f"resume it: statemachine-agent runs resume MODULE:OBJECT crash-1 --store {runs.db}"


def test_show_a_finished_run_has_no_resume_line(runs: Runs) -> None:
    """A run that ended shows its terminal and outcome, its whole path, and no resume line."""
    code, out, _ = run_cli(["runs", "show", "ok-1", "--store", str(runs.db)])
    assert code == 0
    assert "status:   done: ended in done (success)" in out
    assert "    2  pay -> done via pay_to_done (transition), writes n, receipts" in out
    assert "journal (3 calls):" in out
    assert "resume" not in out


def test_show_needs_only_the_records_not_the_workflows_code(runs: Runs, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """show reads the store only: it works with the workflow's module gone."""
    (runs.root / "runsflow.py").unlink()
    monkeypatch.delitem(sys.modules, "runsflow")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, _ = run_cli(["runs", "show", "crash-1", "--store", str(runs.db)])
    assert code == 0 and "journal (2 calls):" in out


def test_show_as_json(runs: Runs) -> None:
    """--json: the stored run (record, steps, journal, inbox, context) and the resume command."""
    code, out, _ = run_cli(["runs", "show", "crash-1", "--store", str(runs.db), "--json"])
    data = json.loads(out)
    assert code == 0
    assert data["run"]["run_id"] == "crash-1" and data["run"]["status"] == "running"
    assert [s["number"] for s in data["steps"]] == [0]
    assert [(c["step"], c["call"], c["status"]) for c in data["calls"]] == [(0, 0, "done"), (1, 0, "done")]
    assert data["context"] == {"n": 1, "receipts": ["receipt-0"]}
    assert data["resume"] == f"statemachine-agent runs resume MODULE:OBJECT crash-1 --store {runs.db}"
    done = json.loads(run_cli(["runs", "show", "ok-1", "--store", str(runs.db), "--json"])[1])
    assert done["resume"] is None


def test_show_lists_the_wait_and_the_inbox(runs: Runs) -> None:
    """A waiting run shows what it waits for, each inbox event (seq, event, whether consumed, its
    payload), and says how to deliver the event; list shows it as waiting."""
    with SQLiteStore(runs.db) as store:
        store.deliver("crash-1", "approved", {"by": "ann"}).result()
    set_record(runs.db, "crash-1", status="waiting",
               wait={"state": "pay", "event": "approved", "deadline": 1_900_000_000.0})
    code, out, _ = run_cli(["runs", "show", "crash-1", "--store", str(runs.db)])
    assert code == 0
    assert "status:   waiting in state pay" in out
    assert "  waiting for: event approved in state pay, deadline 2030-03-17T17:46:40Z" in out
    assert re.search(rf"  inbox #1  approved  delivered {ISO}, not consumed yet  payload {{\"by\": \"ann\"}}", out)
    assert out.splitlines()[-1].startswith(
        f"resume it: statemachine-agent runs deliver MODULE:OBJECT crash-1 approved --store {runs.db}")
    listed = run_cli(["runs", "list", "--store", str(runs.db)])[1].splitlines()
    assert re.fullmatch(rf"crash-1\s+order\s+waiting\s+pay\s+1\s+[0-9a-f]{{8}}\s+{ISO}", listed[1])


def test_show_quotes_odd_run_ids_and_the_resume_line_is_shell_safe(runs: Runs) -> None:
    """A run id with spaces or control characters is quoted on its line, and shell-quoted in the
    resume command (ANSI-C quotes, so the tab is no raw control character) so that it can be pasted as
    it is: bash reads the word back as the id."""
    with SQLiteStore(runs.db) as store:
        runs.flows.MODE["crash"] = True
        with pytest.raises(runs.flows.Crash):
            runs.flows.compiled.run_sync(runs.flows.Order(), store=store, run_id="it's\tmine")
    code, out, _ = run_cli(["runs", "show", "it's\tmine", "--store", str(runs.db)])
    assert code == 0
    assert out.splitlines()[0] == 'run "it\'s\\tmine" of workflow order'
    assert out.splitlines()[-1].endswith("""runs resume MODULE:OBJECT $'it\\'s\\tmine' --store """ + str(runs.db))
    word = out.splitlines()[-1].split(" MODULE:OBJECT ")[1].split(" --store ")[0]
    assert subprocess.run(["bash", "-c", f"printf %s {word}"], capture_output=True, text=True,
                          check=True).stdout == "it's\tmine"
    listed = run_cli(["runs", "list", "--store", str(runs.db)])[1].splitlines()
    assert listed[1].startswith('"it\'s\\tmine"  order')


# --- runs resume -------------------------------------------------------------------------------------
def test_resume_finishes_a_crashed_run_reusing_its_journal(runs: Runs) -> None:
    """resume continues the crashed run to its end and prints it like `run`; the tool call recorded
    in the step that crashed is not made again."""
    code, out, err = run_cli(["runs", "resume", "runsflow:compiled", "crash-1", "--store", str(runs.db)])
    assert (code, err) == (0, "")
    assert "terminal: done (success)" in out
    assert "path:     pay -> pay -> pay -> done  (3 steps, bound 3)" in out
    assert runs.flows.CALLS == [2]
    with SQLiteStore(runs.db) as store:
        assert store.load("crash-1").result().run.status is RunStatus.DONE


def test_resume_as_json_and_of_a_finished_run(runs: Runs) -> None:
    """--json prints the whole result; resuming a run that ended prints its stored result."""
    code, out, _ = run_cli(["runs", "resume", "runsflow:compiled", "crash-1", "--store", str(runs.db), "--json"])
    data = json.loads(out)
    assert code == 0
    assert data["run_id"] == "crash-1" and data["terminal"] == "done"
    assert data["context"] == {"n": 3, "receipts": ["receipt-0", "receipt-1", "receipt-2"]}
    code, out, _ = run_cli(["runs", "resume", "runsflow:compiled", "ok-1", "--store", str(runs.db)])
    assert code == 0 and "terminal: done (success)" in out
    assert runs.flows.CALLS == [2]  # only crash-1's last step ran a tool


def test_resume_to_a_failure_outcome_exits_1(runs: Runs) -> None:
    """A resumed run that ends in a failure terminal (here: a step budget too small) exits 1."""
    code, out, _ = run_cli(["runs", "resume", "runsflow:compiled", "crash-1", "--store", str(runs.db),
                            "--max-steps", "1"])
    assert code == 1
    assert "terminal: failed (failure)" in out
    assert "reason:" in out


def test_resume_into_a_bug_prints_the_users_traceback_and_exits_1(runs: Runs) -> None:
    """An exception no error transition routes, raised by the resumed step: the result, the error
    line, the user's traceback (not the library's), exit 1."""
    runs.flows.MODE["bug"] = True
    code, out, err = run_cli(["runs", "resume", "runsflow:compiled", "crash-1", "--store", str(runs.db)])
    assert code == 1
    assert "terminal: failed (failure)" in out
    assert "error:    ZeroDivisionError: integer division or modulo by zero" in out
    assert "in your workflow's code" in err and "in helper" in err
    assert "statemachine_agent/runner.py" not in err


@pytest.mark.parametrize(
    ("target", "run_id", "message"),
    [
        ("runsflow:compiled", "nope", "no run 'nope' in the store"),
        ("runsflow:other", "crash-1", "[resume-other-workflow] the run belongs to workflow 'order', not 'other'"),
        ("runsflow:compiled", "", "the run id is empty"),
        ("runsflow:nothing", "crash-1", "module 'runsflow' has no 'nothing'"),
    ],
)
def test_resume_refusals_exit_2_with_one_message(runs: Runs, target: str, run_id: str, message: str) -> None:
    """An unknown run, another workflow's run, an empty id or a bad target: exit 2 and one clear
    message, no traceback; the stored run is left as it was."""
    code, out, err = run_cli(["runs", "resume", target, run_id, "--store", str(runs.db)])
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err
    with SQLiteStore(runs.db) as store:
        assert store.load("crash-1").result().run.epoch == 1  # not claimed


def test_resume_under_a_changed_workflow_prints_every_problem(runs: Runs) -> None:
    """IncompatibleRun prints its whole message, one line per problem, and exits 2."""
    code, _, err = run_cli(["runs", "resume", "runsflow:changed", "crash-1", "--store", str(runs.db)])
    assert code == 2
    lines = err.splitlines()
    assert lines[0].startswith("statemachine-agent: run 'crash-1' cannot resume under this workflow (")
    assert "  - [resume-unknown-state] the run is stored in state 'pay'" in err
    assert "  - [resume-counters]" in err
    assert len(lines) >= 3 and "Traceback" not in err


@pytest.mark.parametrize(("option", "value"), [("--max-steps", "0"), ("--max-steps", "-2"), ("--timeout", "nan"),
                                              ("--timeout", "0"), ("--timeout", "inf")])
def test_resume_bad_budgets_exit_2(runs: Runs, option: str, value: str) -> None:
    """A step budget or deadline that is not positive and finite: exit 2 before anything runs."""
    code, _, err = run_cli(["runs", "resume", "runsflow:compiled", "crash-1", "--store", str(runs.db), option, value])
    assert code == 2 and option in err


# --- store errors ------------------------------------------------------------------------------------
READ_COMMANDS = [
    ["runs", "list"],
    ["runs", "show", "ok-1"],
    ["diagram", "runsflow:compiled", "-o", "out.dot", "--run", "ok-1"],
    ["runs", "resume", "runsflow:compiled", "ok-1"],
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_missing_store_is_named_and_never_created(runs: Runs, command: list[str]) -> None:
    """A --store file that does not exist: "no store at PATH", exit 2, and no file is made (nor is
    its folder, when that is missing too)."""
    missing = runs.root / "missing.db"
    code, _, err = run_cli([*command, "--store", str(missing)])
    assert code == 2 and f"no store at {str(missing)!r}" in err
    assert not missing.exists()
    deep = runs.root / "no" / "such" / "runs.db"
    code, _, err = run_cli([*command, "--store", str(deep)])
    assert code == 2 and "does not exist" in err
    assert not (runs.root / "no").exists()


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("folder", "it is a folder"),
        ("text", "is damaged (file is not a database)"),
        ("empty", "the file is empty"),
        ("foreign", "an SQLite database of another program"),
        ("damaged", "fails its checksum"),
    ],
)
def test_what_is_not_a_sound_store_exits_2_with_one_line(runs: Runs, command: list[str], kind: str,
                                                         message: str) -> None:
    """A folder, a text file, an empty file, another program's database, a record that fails its
    checksum: exit 2, one line, no traceback, and the file is not changed."""
    path = runs.root / f"{kind}.db"
    if kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("not a database\n", encoding="utf-8")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.commit()
        conn.close()
    else:
        path.write_bytes(runs.db.read_bytes())
        conn = sqlite3.connect(path)
        conn.execute("UPDATE sma_runs SET record = replace(record, '\"done\"', '\"gone\"')")
        conn.commit()
        conn.close()
    before = None if kind == "folder" else path.read_bytes()
    code, out, err = run_cli([*command, "--store", str(path)])
    assert code == 2, (out, err)
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    if before is not None and kind != "damaged":
        assert path.read_bytes() == before


# --- runs deliver and runs fork ----------------------------------------------------------------------
def test_deliver_passes_the_event_and_payload_and_prints_the_result(runs: Runs,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """deliver calls compiled.deliver_sync(run_id, event, payload, store=) (here a stand-in that
    resumes the run: this workflow waits for no event, and a resume refuses a run with an event in
    its inbox that no wait takes) and prints the result like `run`."""
    seen: list[tuple[Any, ...]] = []

    def deliver_sync(self: CompiledWorkflow[Any], run_id: str, event: str, payload: Any, *,
                     store: Any) -> RunResult[Any]:
        seen.append((run_id, event, payload, type(store).__name__))
        return self.resume_sync(run_id, store=store)

    monkeypatch.setattr(CompiledWorkflow, "deliver_sync", deliver_sync, raising=False)
    payload = runs.root / "payload.json"
    payload.write_text('{"by": "bob"}', encoding="utf-8")
    code, out, err = run_cli(["runs", "deliver", "runsflow:compiled", "crash-1", "approved", "--payload",
                              f"@{payload}", "--store", str(runs.db)])
    assert (code, err) == (0, "")
    assert seen == [("crash-1", "approved", {"by": "bob"}, "SQLiteStore")]
    assert "terminal: done (success)" in out
    code, out, _ = run_cli(["runs", "deliver", "runsflow:compiled", "crash-1", "again", "--store", str(runs.db)])
    assert seen[-1] == ("crash-1", "again", {}, "SQLiteStore")  # no --payload: an empty object


def test_deliver_to_a_run_that_still_waits_says_for_what(runs: Runs, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the run waits again after the delivery, deliver prints what for and how to go on, exit 0;
    --json adds the status and the wait to the result."""

    def deliver_sync(self: CompiledWorkflow[Any], run_id: str, event: str, payload: Any, *,
                     store: Any) -> RunResult[Any]:
        set_record(runs.db, run_id, status="waiting", wait={"state": "pay", "event": "second", "deadline": None})
        stored = store.load(run_id).result()
        return RunResult("order", run_id, "pay", Outcome.FAILURE, self.context_type(**stored.context), ())

    monkeypatch.setattr(CompiledWorkflow, "deliver_sync", deliver_sync, raising=False)
    code, out, _ = run_cli(["runs", "deliver", "runsflow:compiled", "crash-1", "first", "--store", str(runs.db)])
    assert code == 0
    assert out.splitlines()[0] == "waiting:  run crash-1 waits in state pay for event second (no deadline)"
    assert f"next:     statemachine-agent runs deliver MODULE:OBJECT crash-1 second --store {runs.db}" in out
    code, out, _ = run_cli(["runs", "deliver", "runsflow:compiled", "crash-1", "first", "--store", str(runs.db),
                            "--json"])
    data = json.loads(out)
    assert code == 0
    assert data["status"] == "waiting" and data["wait"] == {"state": "pay", "event": "second", "deadline": None}


def test_fork_passes_its_options_by_keyword(runs: Runs, monkeypatch: pytest.MonkeyPatch) -> None:
    """fork calls compiled.fork_sync(run_id, at_step=, patch=, store=, new_run_id=) (a stand-in
    here) and prints the new run's result."""
    seen: list[dict[str, Any]] = []

    def fork_sync(self: CompiledWorkflow[Any], run_id: str, **kwargs: Any) -> RunResult[Any]:
        seen.append({"run_id": run_id, **kwargs, "store": type(kwargs["store"]).__name__})
        return self.resume_sync("crash-1", store=kwargs["store"])

    monkeypatch.setattr(CompiledWorkflow, "fork_sync", fork_sync, raising=False)
    code, out, err = run_cli(["runs", "fork", "runsflow:compiled", "ok-1", "--at-step", "1", "--patch",
                              '{"n": 2}', "--new-id", "f-1", "--store", str(runs.db)])
    assert (code, err) == (0, "")
    assert seen == [{"run_id": "ok-1", "at_step": 1, "patch": {"n": 2}, "store": "SQLiteStore",
                     "new_run_id": "f-1"}]
    assert "terminal: done (success)" in out
    run_cli(["runs", "fork", "runsflow:compiled", "ok-1", "--at-step", "0", "--store", str(runs.db)])
    assert seen[-1]["patch"] is None and seen[-1]["new_run_id"] is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["deliver", "runsflow:compiled", "crash-1", "ev", "--payload", "{not json"], "--payload is not valid JSON"),
        (["deliver", "runsflow:compiled", "crash-1", "ev", "--payload", "[1]"], "--payload must be a JSON object"),
        (["deliver", "runsflow:compiled", "crash-1", "ev", "--payload", "@/nonexistent.json"],
         "cannot read --payload file"),
        (["deliver", "runsflow:compiled", "crash-1", ""], "the event's name is empty"),
        (["fork", "runsflow:compiled", "ok-1", "--at-step", "-1"], "--at-step -1"),
        (["fork", "runsflow:compiled", "ok-1", "--at-step", "1", "--patch", '"n"'], "--patch must be a JSON object"),
        (["fork", "runsflow:compiled", "ok-1", "--at-step", "1", "--new-id", ""], "--new-id ''"),
    ],
)
def test_deliver_and_fork_bad_arguments_exit_2(runs: Runs, argv: list[str], message: str) -> None:
    """Bad payloads, patches, event names, steps and ids: exit 2 naming the option."""
    code, _, err = run_cli(["runs", *argv, "--store", str(runs.db)])
    assert code == 2 and message in err, err


def test_fork_of_a_finished_run_with_the_real_library(runs: Runs) -> None:
    """fork a finished run before its step 1 under a new id: the fork runs to its end, and the store
    records it with its parent."""
    code, out, err = run_cli(["runs", "fork", "runsflow:compiled", "ok-1", "--at-step", "1", "--new-id", "f-1",
                              "--store", str(runs.db)])
    assert (code, err) == (0, "")
    assert "terminal: done (success)" in out
    with SQLiteStore(runs.db) as store:
        forked = store.load("f-1").result().run
    assert (forked.parent, forked.parent_step, forked.status) == ("ok-1", 1, RunStatus.DONE)
    code, _, err = run_cli(["runs", "fork", "runsflow:compiled", "ok-1", "--at-step", "1", "--new-id", "f-1",
                            "--store", str(runs.db)])
    assert code == 2 and "f-1" in err  # RunExists


def test_deliver_to_a_finished_run_with_the_real_library_exits_2(runs: Runs) -> None:
    """An event the workflow does not wait for (here, to a run that ended): exit 2 with one message
    naming the event, no traceback."""
    code, _, err = run_cli(["runs", "deliver", "runsflow:compiled", "ok-1", "approved", "--store", str(runs.db)])
    assert code == 2 and "waits for no event 'approved'" in err and "Traceback" not in err


# --- diagram --run RUN_ID --store FILE ---------------------------------------------------------------
def test_diagram_draws_a_stored_run(runs: Runs) -> None:
    """With --store, --run is a run id: the finished run and the crashed one are drawn over the
    workflow (the crashed one up to the state it is in); SVG goes through Graphviz."""
    out = runs.root / "ok.dot"
    assert run_cli(["diagram", "runsflow:compiled", "-o", str(out), "--run", "ok-1", "--store", str(runs.db)])[0] == 0
    dot = out.read_text(encoding="utf-8")
    assert "run ok-1: done (success, 3 steps)" in dot
    assert "(×2)" in dot and "(×1)" in dot  # pay -> pay twice, pay -> done once
    out = runs.root / "crash.dot"
    assert run_cli(["diagram", "runsflow:compiled", "-o", str(out), "--run", "crash-1", "--store",
                    str(runs.db)])[0] == 0
    assert "run crash-1: pay (running, 1 steps)" in out.read_text(encoding="utf-8")
    svg = runs.root / "ok.svg"
    assert run_cli(["diagram", "runsflow:compiled", "-o", str(svg), "--run", "ok-1", "--store", str(runs.db)])[0] == 0
    assert b"<svg" in svg.read_bytes()[:400]


def test_diagram_of_a_stored_run_matches_the_one_of_its_json(runs: Runs) -> None:
    """The stored run draws the same graph as the run's own `RunResult.to_dict()` JSON does."""
    with SQLiteStore(runs.db) as store:
        result = runs.flows.compiled.resume_sync("ok-1", store=store)
    recorded = runs.root / "ok.json"
    recorded.write_text(json.dumps(result.to_dict(), default=str), encoding="utf-8")
    a, b = runs.root / "a.dot", runs.root / "b.dot"
    assert run_cli(["diagram", "runsflow:compiled", "-o", str(a), "--run", "ok-1", "--store", str(runs.db)])[0] == 0
    assert run_cli(["diagram", "runsflow:compiled", "-o", str(b), "--run", str(recorded)])[0] == 0
    assert a.read_text(encoding="utf-8") == b.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["runsflow:compiled", "-o", "x.dot", "--store", "runs.db"], "give --run too"),
        (["runsflow:compiled", "-o", "x.dot", "--run", "nope", "--store", "runs.db"], "no run 'nope'"),
        (["runsflow:other", "-o", "x.dot", "--run", "ok-1", "--store", "runs.db"],
         "is a run of workflow 'order', not 'other'"),
        (["runsflow:compiled", "-o", "x.mmd", "--run", "ok-1", "--store", "runs.db"], "Mermaid has no highlighting"),
        (["runsflow:compiled", "-o", "x.dot", "--run", "", "--store", "runs.db"], "give --run too"),
    ],
)
def test_diagram_stored_run_errors_exit_2(runs: Runs, argv: list[str], message: str) -> None:
    """--store without a run, an unknown run, another workflow's run, Mermaid: exit 2 and why."""
    code, _, err = run_cli(["diagram", *argv])
    assert code == 2 and message in err, err
    assert not (runs.root / "x.dot").exists()


# --- fuzz --------------------------------------------------------------------------------------------
@st.composite
def runs_argvs(draw: st.DrawFn, root: Path) -> list[str]:
    """A `runs ...` command line, any part of it bad."""
    command = draw(st.sampled_from(["list", "show", "resume", "deliver", "fork", "nosuch"]))
    run_ids = st.sampled_from(["ok-1", "crash-1", "nope", "", " ", "x\x00y", "-", "ok-1 "])
    targets = st.sampled_from(["runsflow:compiled", "runsflow:compiled", "runsflow:other", "runsflow:changed",
                               "runsflow:Order", "nocolon", ":", "no_such_xyz:wf", "runsflow:MODE"])
    stores = st.sampled_from(["runs.db", "runs.db", "runs.db", "missing.db", "no/such/runs.db", ".", "", "\x00",
                              "text.db", "empty.db", "runsflow.py"])
    argv = ["runs", command]
    if command in ("resume", "deliver", "fork"):
        argv.append(draw(targets))
    if command != "list" and draw(st.integers(0, 9)):
        argv.append(draw(run_ids))
    if command == "deliver" and draw(st.integers(0, 9)):
        argv.append(draw(st.sampled_from(["approved", "", "x y", "\x00"])))
    if draw(st.integers(0, 9)):
        argv += ["--store", draw(stores)]
    payloads = st.one_of(st.sampled_from(["{}", '{"a": 1}', "[1]", "null", "{bad", "@", "@nofile.json",
                                          "@text.db", "@empty.db", "@.", '"x"', "1e999"]),
                         st.text(max_size=12))
    for option, values, allowed in [
        ("--json", None, True),
        ("--workflow", st.sampled_from(["order", "other", ""]), command == "list"),
        ("--max-steps", st.sampled_from(["1", "3", "0", "-1", "x", "99999"]), command == "resume"),
        ("--timeout", st.sampled_from(["30", "0", "nan", "-inf", "1e-9", "x"]), command == "resume"),
        ("--payload", payloads, command == "deliver"),
        ("--at-step", st.sampled_from(["0", "1", "2", "3", "4", "-1", "x"]), command == "fork"),
        ("--patch", payloads, command == "fork"),
        ("--new-id", st.sampled_from(["f-1", "", "ok-1", "crash-1"]), command == "fork"),
    ]:
        if (allowed or draw(st.integers(0, 20)) == 0) and draw(st.booleans()):
            argv += [option] if values is None else [option, draw(values)]
    return argv


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_runs_command_lines_never_show_a_traceback(data: st.DataObject, runs: Runs) -> None:
    """Whatever the `runs` argv (bad targets, ids, stores, payloads, patches, budgets, steps), the
    exit code is 0, 1 or 2, nothing prints a traceback, and exit 2 always says why."""
    (runs.root / "text.db").write_text("not a database", encoding="utf-8")
    (runs.root / "empty.db").write_bytes(b"")
    argv = data.draw(runs_argvs(runs.root))
    code, _, err = run_cli(argv)
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err or "in your workflow's code" in err, (argv, err)
    if code == 2:
        assert err.strip(), argv
    assert not (runs.root / "missing.db").exists()


# --- library bugs found while building the CLI (not fixed here; see the report) ----------------------
class Fail(Context):
    n: int = 0


def _routed_error_workflow() -> Any:
    wf = Workflow("routed", Fail)

    @wf.state(initial=True, reads=["n"], writes=["n"])
    def a(ctx: Fail) -> None:
        raise ValueError("bad")

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("a", "done")
    wf.on_error("a", ValueError, "failed")
    return wf.compile()


def test_a_stored_result_of_a_routed_error_has_no_error() -> None:
    """The result read back from the store equals the one the run returned: a routed error is an
    outcome, so `error` is None in both (the CLI's `runs resume --json` prints it)."""
    compiled = _routed_error_workflow()
    with MemoryStore() as store:
        fresh = compiled.run_sync(Fail(), store=store, run_id="r-1")
        stored = compiled.resume_sync("r-1", store=store)
    assert fresh.error is None
    assert stored.error is None


def test_a_stored_steps_error_reads_as_the_original() -> None:
    """Step.to_dict()['error'] of a step read back from the store is the original's `Type: message`."""
    compiled = _routed_error_workflow()
    with MemoryStore() as store:
        fresh = compiled.run_sync(Fail(), store=store, run_id="r-1")
        stored = compiled.resume_sync("r-1", store=store)
    assert [s.to_dict()["error"] for s in stored.path] == [s.to_dict()["error"] for s in fresh.path]


def test_a_fork_loads_at_every_step_it_holds(tmp_path: Path) -> None:
    """A run forked before step 2 holds steps 0 and 1, so it can be loaded (and forked again) before
    either of them, like its parent, instead of raising StoreCorrupted."""
    compiled = _three_steps()
    with SQLiteStore(tmp_path / "runs.db") as store:
        compiled.run_sync(Fail(), store=store, run_id="p")
        src = store.load("p", at_step=2).result()
        record = {**src.run.model_dump(mode="json"), "run_id": "f", "parent": "p", "parent_step": 2,
                  "next_step": 2, "status": "running", "terminal": None, "outcome": None, "epoch": 1}
        store.fork("p", 2, record, src.context).result()
        assert store.load("f").result().context == {"n": 2}
        assert store.load("f", at_step=1).result().context == store.load("p", at_step=1).result().context


def _three_steps() -> Any:
    wf = Workflow("three", Fail)

    @wf.state(initial=True, reads=["n"], writes=["n"])
    def a(ctx: Fail) -> None:
        ctx.n += 1

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("a", "a", guard=lambda c: c.n < 3, max_traversals=2)
    wf.transition("a", "done")
    return wf.compile()
