"""`runs check MODULE:OBJECT --store DB` (which stored runs a new version of a workflow would refuse,
and why) and the versions `runs list` and `runs show` print, on real SQLiteStore files holding runs of
two versions of one workflow.

``shopflow.py`` (written to the test's folder and named as MODULE:OBJECT, like a user's module) holds
``v1``: prepare -> approve (a wait, for orders of 100 or more) -> ship -> done, and ``v2``, which
renames ``ship`` to ``dispatch`` and takes no amount over 1000. Under ``v1`` the store gets ``wait-1``
(500, waits for its approval: fits ``v2``), ``big-1`` (5000, waits: its context no longer validates)
and ``crash-1`` (5, crashed in ``ship``: a state ``v2`` lacks).
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli_runs import run_cli, set_record

from statemachine_agent.stores import RunStatus, SQLiteStore

ROOT = Path(__file__).resolve().parents[1]

FLOWS = '''
from pydantic import BaseModel, Field, SecretStr

from statemachine_agent import Context, Workflow


class Crash(BaseException):
    """Stands for the process dying: never routed, never caught by the runner."""


MODE = {"crash": False}


class Approval(BaseModel):
    ok: bool


class Order(Context):
    amount: int = 0
    approval: Approval | None = None
    shipped: bool = False


class OrderV2(Order):
    amount: int = Field(0, le=1000)


def build(version: int) -> Workflow:
    wf = Workflow("order", Order if version == 1 else OrderV2)
    ship = "ship" if version == 1 else "dispatch"
    wf.add_state("prepare", lambda ctx: None, initial=True, reads=["amount"])
    wf.wait("approve", event="approval", payload=Approval, writes=["approval"])

    def send(ctx: Order) -> None:
        if MODE["crash"]:
            MODE["crash"] = False
            raise Crash
        ctx.shipped = True

    wf.add_state(ship, send, reads=["amount"], writes=["shipped"])
    wf.terminal("done")
    wf.terminal("rejected", outcome="failure")
    wf.transition("prepare", "approve", guard=lambda c: c.amount >= 100)
    wf.transition("prepare", ship)
    wf.transition("approve", ship, guard=lambda c: c.approval is not None and c.approval.ok)
    wf.transition("approve", "rejected")
    wf.transition(ship, "done")
    return wf


v1 = build(1).compile()
v2 = build(2).compile()
NOT_A_WORKFLOW = 42

other = Workflow("other", Order)
other.add_state("start", lambda ctx: None, initial=True)
other.terminal("end")
other.terminal("failed", outcome="failure")
other.transition("start", "end")
other = other.compile()


class Sealed(Context):
    token: SecretStr
    approval: Approval | None = None


sealed = Workflow("sealed", Sealed)
sealed.wait("confirm", event="approval", payload=Approval, writes=["approval"], initial=True)
sealed.terminal("done")
sealed.terminal("failed", outcome="failure")
sealed.transition("confirm", "done")
sealed = sealed.compile()
'''

RUNS = ("wait-1", "big-1", "crash-1")
REFUSED_BY_V2 = {"big-1": "resume-bad-context", "crash-1": "resume-unknown-state"}
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


@dataclass
class Shop:
    """The folder (the current one) holding shopflow.py and runs.db, and the imported module."""

    root: Path
    db: Path
    flows: ModuleType


def add_run(shop: Shop, run_id: str, amount: int, *, version: str = "v1", crash: bool = False) -> None:
    compiled = getattr(shop.flows, version)
    with SQLiteStore(shop.db) as store:
        shop.flows.MODE["crash"] = crash
        if crash:
            with pytest.raises(shop.flows.Crash):
                compiled.run_sync(compiled.context_type(amount=amount), store=store, run_id=run_id)
        else:
            compiled.run_sync(compiled.context_type(amount=amount), store=store, run_id=run_id)


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Shop:
    (tmp_path / "shopflow.py").write_text(FLOWS, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "shopflow", raising=False)
    importlib.invalidate_caches()
    shop = Shop(tmp_path, tmp_path / "runs.db", importlib.import_module("shopflow"))
    add_run(shop, "wait-1", 500)
    add_run(shop, "big-1", 5000)
    add_run(shop, "crash-1", 5, crash=True)
    with SQLiteStore(shop.db) as store:
        assert [store.load(r).result().run.status for r in RUNS] == [RunStatus.WAITING, RunStatus.WAITING,
                                                                       RunStatus.RUNNING]
    return shop


def files(root: Path) -> dict[str, bytes]:
    """Every file of the folder (the store, and any -wal, -shm or -intents beside it) and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def check(*extra: str, target: str = "shopflow:v2", store: str = "runs.db") -> tuple[int, str, str]:
    return run_cli(["runs", "check", target, "--store", store, *extra])


def blocks(out: str) -> dict[str, list[str]]:
    """The refused runs of `runs check`'s text: each block's header line by run id -> its problem lines."""
    found: dict[str, list[str]] = {}
    for block in out.split("\n\n")[:-1]:
        head, *problems = block.splitlines()
        match = re.fullmatch(r"run (\S+): .*", head)
        assert match, head
        found[match.group(1)] = problems
    return found


# --- runs check --------------------------------------------------------------------------------------
def test_check_lists_each_refused_run_and_why(shop: Shop) -> None:
    """One block per refused run (id, status and state, then each problem as [code] message), a blank
    line after each, and a summary counting the refused runs of all; the run that fits is not named."""
    code, out, err = check()
    assert (code, err) == (1, "")
    found = blocks(out)
    assert set(found) == set(REFUSED_BY_V2)
    assert "run crash-1: running in state ship\n" in out
    assert "run big-1: waiting in state approve for event approval\n" in out
    for run_id, expected in REFUSED_BY_V2.items():
        assert all(re.fullmatch(r"  - \[resume-[a-z-]+\] \S.*", line) for line in found[run_id]), found[run_id]
        assert f"  - [{expected}] " in "\n".join(found[run_id])
    assert "  - [resume-unknown-state] the run is stored in state 'ship', which this workflow does not have" \
        in found["crash-1"]
    assert out.splitlines()[-1] == ("2 of 3 runs of workflow 'order' would be refused; resume them with migrate=, "
                                    "or keep the old version running until they end")


def test_check_says_when_every_run_fits(shop: Shop) -> None:
    """Under the version that stored them every run fits: one line saying so, exit 0; a store with no
    run of the workflow says that instead (exit 0)."""
    assert check(target="shopflow:v1") == (0, "all 3 runs of workflow 'order' fit this version\n", "")
    assert check(target="shopflow:other") == (0, "no runs of workflow 'other' in the store 'runs.db'\n", "")
    assert check("--json", target="shopflow:v1") == (0, "[]\n", "")


def test_check_takes_ended_runs_too(shop: Shop) -> None:
    """Ended runs are checked like the others: one whose context no longer validates is listed (its
    stored result could not be read back under the new version); one that still fits is not."""
    with SQLiteStore(shop.db) as store:
        assert shop.flows.v1.deliver_sync("big-1", "approval", {"ok": True}, store=store).terminal == "done"
    add_run(shop, "done-1", 5)
    code, out, _ = check()
    assert code == 1
    assert set(blocks(out)) == set(REFUSED_BY_V2)
    assert "run big-1: ended in done (success)\n  - [resume-bad-context] " in out
    assert out.splitlines()[-1].startswith("2 of 4 runs of workflow 'order' would be refused")
    assert check(target="shopflow:v1") == (0, "all 4 runs of workflow 'order' fit this version\n", "")


def test_check_one_refused_run_is_said_in_the_singular(shop: Shop) -> None:
    """The summary's numbers agree with the runs: one refused run of one."""
    add_run(Shop(shop.root, shop.root / "one.db", shop.flows), "crash-2", 5, crash=True)
    code, out, _ = check(store="one.db")
    assert code == 1 and set(blocks(out)) == {"crash-2"}
    assert out.splitlines()[-1] == ("1 of 1 run of workflow 'order' would be refused; resume it with migrate=, or "
                                    "keep the old version running until it ends")
    assert check(target="shopflow:v1", store="one.db")[1] == "the 1 run of workflow 'order' fits this version\n"


def test_check_as_json(shop: Shop) -> None:
    """--json: a list of the refused runs, each {run_id, status, state, problems: [{code, message,
    where}]}, the same as the text says; exit 1."""
    code, out, err = check("--json")
    assert (code, err) == (1, "")
    data = json.loads(out)
    assert [set(r) for r in data] == [{"run_id", "status", "state", "problems"}] * len(data)
    assert {r["run_id"]: (r["status"], r["state"]) for r in data} == {"crash-1": ("running", "ship"),
                                                                    "big-1": ("waiting", "approve")}
    text = blocks(check()[1])
    for r in data:
        assert all(set(p) == {"code", "message", "where"} for p in r["problems"])
        assert REFUSED_BY_V2[r["run_id"]] in [p["code"] for p in r["problems"]]
        assert [f"  - [{p['code']}] {p['message']}" for p in r["problems"]] == text[r["run_id"]]
    [unknown] = [p for r in data for p in r["problems"] if p["code"] == "resume-unknown-state"]
    assert unknown["where"] == "ship"


def test_check_opens_the_store_read_only_and_writes_nothing(shop: Shop) -> None:
    """Every file in the store's folder has the same bytes after a check (text and JSON), and no file
    is added (no -wal, -shm or -intents)."""
    before = files(shop.root)
    assert check()[0] == 1
    assert check("--json")[0] == 1
    assert check(target="shopflow:v1")[0] == 0
    assert files(shop.root) == before


def _damage(db: Path, run_id: str, table: str) -> None:
    """Break the checksum of one of the run's rows (its record in sma_runs, or its first step)."""
    conn = sqlite3.connect(db)
    try:
        changed = conn.execute(f"UPDATE {table} SET crc = crc + 1 WHERE rowid = (SELECT MIN(rowid) FROM {table} "
                               "WHERE run_id = ?)", (run_id,)).rowcount
        conn.commit()
    finally:
        conn.close()
    assert changed == 1


@pytest.mark.parametrize("table", ["sma_runs", "sma_steps"])
def test_check_reports_a_damaged_run_and_goes_on(shop: Shop, table: str) -> None:
    """A run whose record (or a step of it) fails its checksum is listed with the store's message as
    its problem, and the other runs are still checked; exit 1, and the file is left as it is."""
    _damage(shop.db, "wait-1", table)
    before = files(shop.root)
    code, out, err = check()
    assert (code, err) == (1, "")
    found = blocks(out)
    assert set(found) == {"wait-1", *REFUSED_BY_V2}
    [line] = found["wait-1"]
    assert line.startswith("  - [resume-unreadable] the stored run cannot be read: StoreCorrupted: run 'wait-1'")
    assert "fails its checksum" in line
    assert out.splitlines()[-1] == ("3 of 3 runs of workflow 'order' would be refused; resume them with migrate=, "
                                    "or keep the old version running until they end (1 of them cannot be read from "
                                    "the store at all: restore the store from a backup)")
    data = json.loads(check("--json")[1])
    [damaged] = [r for r in data if r["run_id"] == "wait-1"]
    assert [p["code"] for p in damaged["problems"]] == ["resume-unreadable"]
    if table == "sma_runs":  # its record cannot be read: its status and state are unknown
        assert (damaged["status"], damaged["state"]) == (None, None)
        assert "run wait-1: it cannot be read from the store\n" in out
    assert files(shop.root) == before


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged=st.dictionaries(st.sampled_from(RUNS), st.sampled_from(["sma_runs", "sma_steps"]), max_size=3),
       version=st.sampled_from(["v1", "v2"]), as_json=st.booleans())
def test_check_property_names_exactly_the_runs_that_cannot_go_on(shop: Shop, tmp_path_factory: pytest.TempPathFactory,
                                                                  damaged: dict[str, str], version: str,
                                                                  as_json: bool) -> None:
    """Whatever runs are damaged (record or step) and whichever version checks them: the runs named
    are the damaged ones and those the version refuses, the damaged ones as resume-unreadable only; exit 1
    exactly when one is named; nothing in the folder changes."""
    folder = tmp_path_factory.mktemp("copy")
    shutil.copy(shop.db, folder / "runs.db")
    for run_id, table in damaged.items():
        _damage(folder / "runs.db", run_id, table)
    before = files(folder)
    code, out, err = check(*(["--json"] if as_json else []), target=f"shopflow:{version}",
                           store=str(folder / "runs.db"))
    expected = set(damaged) | (set(REFUSED_BY_V2) if version == "v2" else set())
    assert err == ""
    assert code == (1 if expected else 0)
    if as_json:
        named = {r["run_id"]: [p["code"] for p in r["problems"]] for r in json.loads(out)}
    else:
        named = {run_id: [re.match(r"  - \[([a-z-]+)\]", line).group(1) for line in lines]  # type: ignore[union-attr]
                 for run_id, lines in blocks(out).items()}
        assert out.splitlines()[-1].startswith(f"{len(expected)} of 3 runs" if expected else "all 3 runs")
    assert set(named) == expected
    for run_id, codes in named.items():
        if run_id in damaged:
            assert codes == ["resume-unreadable"]
        else:
            assert REFUSED_BY_V2[run_id] in codes
    assert files(folder) == before


def test_check_escapes_hostile_run_ids(shop: Shop) -> None:
    """A run id holding ESC sequences, a newline and a right-to-left override is shown escaped (and
    quoted) in the text; in JSON it reads back as it is, and no raw control character is printed."""
    evil = "evil\x1b[2J\u202e\nid"
    add_run(shop, evil, 5, crash=True)
    code, out, _ = check()
    assert code == 1
    assert '\nrun "evil\\u001b[2J\\u202e\\nid": running in state ship\n' in "\n" + out
    assert not any(c in out for c in "\x1b\u202e")
    assert out.splitlines()[-1].startswith("3 of 4 runs of workflow 'order' would be refused")
    code, out, _ = check("--json")
    assert evil in [r["run_id"] for r in json.loads(out)]
    assert not any(c in out for c in "\x1b\u202e")


def test_check_of_runs_holding_secrets_needs_their_key(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose context holds a secret is checked with --secrets-env (its context is validated
    decrypted); without it the command exits 2 saying what to pass; under another key the run is
    listed as unreadable (exit 1). Nothing is written, nor is the secret printed."""
    from pydantic import SecretStr

    from statemachine_agent.secrets import FernetSecrets

    monkeypatch.setenv("SHOP_KEY", FernetSecrets.generate_key())
    monkeypatch.setenv("OTHER_KEY", FernetSecrets.generate_key())
    with SQLiteStore(shop.db, secrets=FernetSecrets.from_env("SHOP_KEY")) as store:
        shop.flows.sealed.run_sync(shop.flows.Sealed(token=SecretStr("tok-CANARY-77")), store=store, run_id="s-1")
    before = files(shop.root)
    code, out, err = check(target="shopflow:sealed")
    assert code == 2 and "--secrets-env NAME" in err and out == ""
    assert check("--secrets-env", "SHOP_KEY", target="shopflow:sealed") == (
        0, "the 1 run of workflow 'sealed' fits this version\n", "")
    code, out, err = check("--secrets-env", "OTHER_KEY", target="shopflow:sealed")
    assert (code, err) == (1, "")
    [line] = blocks(out)["s-1"]
    assert line.startswith("  - [resume-unreadable] the stored run cannot be read: SecretUnreadable: run 's-1': the "
                           "stored secret of field 'token' cannot be decrypted")
    assert "tok-CANARY-77" not in out
    assert files(shop.root) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["shopflow:v2", "--store", "missing.db"], "no store at 'missing.db'"),
        (["shopflow:v2", "--store", "shopflow.py"], "the store 'shopflow.py' is damaged (file is not a database)"),
        (["shopflow:v2", "--store", "other.sqlite"], "an SQLite database of another program"),
        (["shopflow:v2", "--store", "empty.db"], "the file is empty"),
        (["shopflow:v2", "--store", "."], "it is a folder"),
        (["shopflow:v2", "--store", ""], "--store ''"),
        (["shopflow", "--store", "runs.db"], "is not MODULE:OBJECT"),
        (["no_such_module_xyz:wf", "--store", "runs.db"], "cannot import module 'no_such_module_xyz'"),
        (["shopflow:nothing", "--store", "runs.db"], "module 'shopflow' has no 'nothing'"),
        (["shopflow:NOT_A_WORKFLOW", "--store", "runs.db"], "is a int, not a Workflow"),
        (["bad\x1b[31mmod:wf", "--store", "runs.db"], "cannot import module"),
        (["shopflow:v2"], "the following arguments are required: --store"),
        (["shopflow:v2", "--store", "runs.db", "--secrets-env", "NO_SUCH_KEY_XYZ"], "NO_SUCH_KEY_XYZ"),
    ],
)
def test_check_bad_input_exits_2_saying_why(shop: Shop, argv: list[str], message: str) -> None:
    """A missing store, a file that is no store, a bad target, a missing option: exit 2 with one message
    saying why, no traceback, no raw control character, and no file made or changed."""
    (shop.root / "empty.db").write_bytes(b"")
    conn = sqlite3.connect(shop.root / "other.sqlite")
    conn.execute("CREATE TABLE notes (x)")
    conn.close()
    before = files(shop.root)
    code, out, err = run_cli(["runs", "check", *argv])
    assert code == 2 and message in err, err
    assert out == "" and "Traceback" not in err and "\x1b" not in err
    assert files(shop.root) == before


def test_check_as_a_real_command(shop: Shop) -> None:
    """`python -m statemachine_agent.cli runs check ...` in a process of its own prints what the
    in-process call prints and exits 1; a missing store exits 2 with no traceback."""
    expected = check()
    command = [sys.executable, "-m", "statemachine_agent.cli", "runs", "check", "shopflow:v2", "--store"]
    done = subprocess.run([*command, "runs.db"], cwd=shop.root, capture_output=True, text=True, timeout=120,
                          check=False)
    assert (done.returncode, done.stdout, done.stderr) == expected
    done = subprocess.run([*command, "nope.db"], cwd=shop.root, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2 and "no store at 'nope.db'" in done.stderr and "Traceback" not in done.stderr


# --- versions in runs list and runs show -------------------------------------------------------------
def _created(shop: Shop, **at: float) -> None:
    """Set the runs' creation times (the newest version is the one of the most recently created run)."""
    with SQLiteStore(shop.db) as store:
        records = {r: store.load(r).result().run for r in at}
    for run_id, when in at.items():
        r = records[run_id]
        set_record(shop.db, run_id, status=str(r.status), created_at=when)


def _listed(out: str) -> dict[str, str]:
    """`runs list`'s rows: run id -> its VERSION cell."""
    lines = out.splitlines()
    assert lines[0].split() == ["RUN", "WORKFLOW", "STATUS", "STATE", "STEPS", "VERSION", "UPDATED", "(UTC)"]
    rows = {}
    for line in lines[1:]:
        if line.startswith("* "):
            break
        match = re.fullmatch(rf"(\S+)\s+\S+\s+\S+\s+\S+(?: \(\w+\))?\s+\d+\s+([0-9a-f]{{8}}\*?)\s+{ISO}", line)
        assert match, line
        rows[match.group(1)] = match.group(2)
    return rows


FOOTNOTE = ("* stored under an earlier version of its workflow: `statemachine-agent runs check MODULE:OBJECT "
            "--store runs.db` says whether the current one can continue them")


def test_list_marks_runs_stored_under_an_earlier_version(shop: Shop) -> None:
    """VERSION is the first 8 hex digits of the run's fingerprint; a run stored under another version
    than its workflow's most recently created run gets a * and the list a footnote naming `runs check`.
    Another workflow's runs are compared with their own workflow's newest run."""
    add_run(shop, "new-1", 500, version="v2")
    add_run(shop, "other-1", 0, version="other")
    _created(shop, **{"wait-1": 1000.0, "big-1": 1001.0, "crash-1": 1002.0, "new-1": 2000.0, "other-1": 10.0})
    old, new = shop.flows.v1.fingerprint[:8], shop.flows.v2.fingerprint[:8]
    code, out, err = run_cli(["runs", "list", "--store", "runs.db"])
    assert (code, err) == (0, "")
    assert _listed(out) == {"wait-1": old + "*", "big-1": old + "*", "crash-1": old + "*", "new-1": new,
                            "other-1": shop.flows.other.fingerprint[:8]}
    assert out.splitlines()[-1] == FOOTNOTE
    data = json.loads(run_cli(["runs", "list", "--store", "runs.db", "--json"])[1])
    assert {r["run_id"]: r["version_changed"] for r in data} == {"wait-1": True, "big-1": True, "crash-1": True,
                                                                 "new-1": False, "other-1": False}
    # The newest by creation, not by update: with new-1 created first, it is the one marked.
    _created(shop, **{"new-1": 1.0})
    assert _listed(run_cli(["runs", "list", "--store", "runs.db"])[1]) == {
        "wait-1": old, "big-1": old, "crash-1": old, "new-1": new + "*", "other-1": shop.flows.other.fingerprint[:8]}
    out = run_cli(["runs", "list", "--store", "runs.db", "--workflow", "order"])[1]
    assert out.splitlines()[-1] == FOOTNOTE.replace("continue them", "continue it")


def test_list_of_runs_of_one_version_marks_none(shop: Shop) -> None:
    """All runs stored under one version: no *, no footnote."""
    code, out, _ = run_cli(["runs", "list", "--store", "runs.db"])
    assert code == 0
    assert set(_listed(out).values()) == {shop.flows.v1.fingerprint[:8]}
    assert len(out.splitlines()) == 4


def test_list_against_a_workflow_compares_with_its_fingerprint(shop: Shop) -> None:
    """--against MODULE:OBJECT lists that workflow's runs and marks those stored under another
    version than its compiled.fingerprint, with a footnote naming it."""
    add_run(shop, "other-1", 0, version="other")
    code, out, err = run_cli(["runs", "list", "--store", "runs.db", "--against", "shopflow:v2"])
    assert (code, err) == (0, "")
    assert _listed(out) == dict.fromkeys(RUNS, shop.flows.v1.fingerprint[:8] + "*")
    assert out.splitlines()[-1] == ("* stored under another version than shopflow:v2's: `statemachine-agent runs "
                                    "check shopflow:v2 --store runs.db` says whether it can continue them")
    code, out, _ = run_cli(["runs", "list", "--store", "runs.db", "--against", "shopflow:v1"])
    assert _listed(out) == dict.fromkeys(RUNS, shop.flows.v1.fingerprint[:8]) and len(out.splitlines()) == 4
    data = json.loads(run_cli(["runs", "list", "--store", "runs.db", "--against", "shopflow:v2", "--json"])[1])
    assert {r["run_id"]: r["version_changed"] for r in data} == dict.fromkeys(RUNS, True)
    code, _, err = run_cli(["runs", "list", "--store", "runs.db", "--against", "shopflow:v2", "--workflow", "other"])
    assert code == 2 and "name different workflows" in err
    code, _, err = run_cli(["runs", "list", "--store", "runs.db", "--against", "shopflow:nothing"])
    assert code == 2 and "has no 'nothing'" in err


def test_show_says_the_version_of_the_run(shop: Shop) -> None:
    """show's `version:` line: the run's version, and whether it is its workflow's newest (or the one
    of --against); --json has version_changed."""
    old, new = shop.flows.v1.fingerprint[:8], shop.flows.v2.fingerprint[:8]

    def version_line(*extra: str) -> str:
        code, out, err = run_cli(["runs", "show", "wait-1", "--store", "runs.db", *extra])
        assert (code, err) == (0, "")
        [line] = [x for x in out.splitlines() if x.startswith("version:")]
        assert out.splitlines().index(line) == [x[:8] for x in out.splitlines()].index("created:") + 1
        return line

    def changed(*extra: str) -> object:
        return json.loads(run_cli(["runs", "show", "wait-1", "--store", "runs.db", "--json", *extra])[1])[
            "version_changed"]

    assert version_line() == f"version:  {old} (the newest of workflow order)"
    assert changed() is False
    assert version_line("--against", "shopflow:v1") == f"version:  {old} (the version of shopflow:v1)"
    assert version_line("--against", "shopflow:v2") == (
        f"version:  {old}* stored under another version than shopflow:v2's ({new}): `statemachine-agent runs check "
        "shopflow:v2 --store runs.db` says whether it can continue it")
    assert changed("--against", "shopflow:v2") is True
    add_run(shop, "new-1", 500, version="v2")
    _created(shop, **{"wait-1": 1000.0, "big-1": 1000.0, "crash-1": 1000.0, "new-1": 2000.0})
    assert version_line() == (f"version:  {old}* stored under an earlier version of its workflow ({new}): "
                              "`statemachine-agent runs check MODULE:OBJECT --store runs.db` says whether the current "
                              "one can continue it")
    assert changed() is True
    code, _, err = run_cli(["runs", "show", "wait-1", "--store", "runs.db", "--against", "shopflow:other"])
    assert code == 2 and "is a run of workflow 'order', not 'other'" in err


def test_show_of_a_run_beside_a_damaged_one_still_shows_it(shop: Shop) -> None:
    """Another run's damaged record keeps the newest version unknown, not the run from being shown."""
    _damage(shop.db, "big-1", "sma_runs")
    code, out, _ = run_cli(["runs", "show", "wait-1", "--store", "runs.db"])
    assert code == 0
    assert re.search(rf"\nversion:  {shop.flows.v1.fingerprint[:8]} \(not compared with the newest run of workflow "
                     r"order: run 'big-1': the stored record fails its checksum", out)
    assert json.loads(run_cli(["runs", "show", "wait-1", "--store", "runs.db", "--json"])[1])["version_changed"] is None


# --- docs --------------------------------------------------------------------------------------------
def _quoted_check(page: str) -> tuple[str, str]:
    """The `runs check` command docs/durability.md's "Command line" section shows, and its output."""
    section = page.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```text\n\$ (statemachine-agent runs check .*)\n((?:.*\n)*?)```", section)
    assert match, "no ```text block with `$ statemachine-agent runs check ...` in the Command line section"
    return match.group(1), match.group(2)


def test_docs_quote_the_real_output_of_runs_check(shop: Shop) -> None:
    """The output the durability page quotes is what the command prints for this module's runs."""
    command, quoted = _quoted_check((ROOT / "docs" / "durability.md").read_text(encoding="utf-8"))
    argv = command.split()[1:]
    assert argv == ["runs", "check", "shopflow:v2", "--store", "runs.db"]
    code, out, _ = run_cli(argv)
    assert code == 1
    assert quoted == out
