"""Store integrity (issue 16, group 3): a damaged or hostile store file is an error naming what is
wrong, never another run's data, a shorter run or a re-run effect; read-only commands write nothing.

Real SQLite files throughout. Damage is made with a second, plain sqlite3 connection, the way another
program (or a flipped index entry, which hides a row or shows it under another key) would leave it:
record and checksum untouched unless a test re-seals the checksum on purpose, so that only the check
under test can catch it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from crash_worker import Job, build
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from statemachine_agent.cli import main
from statemachine_agent.errors import RunNotFound, StoreCorrupted, StoreError
from statemachine_agent.stores import SCHEMA_VERSION, CallStatus, SQLiteStore
from statemachine_agent.stores._sqlite import _SCHEMA_V1, _row_crc

PAGE, WAL_HEADER, WAL_FRAME_HEADER = 4096, 32, 24
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class Crash(BaseException):
    """Stands for the process dying (see tests/test_durable.py)."""


def crash_in(tool: str, sent: list[tuple[str, int]]) -> Callable[[str, str, int], None]:
    """An effect hook that records each tool run and dies inside the first run of ``tool``: after its
    effect, before its outcome is journaled (for an at_most_once tool: its intent is committed)."""
    def effect(name: str, key: str, step: int) -> None:
        sent.append((name, step))
        if name == tool and sum(1 for n, _ in sent if n == tool) == 1:
            raise Crash

    return effect


def recorder(sent: list[tuple[str, int]]) -> Callable[[str, str, int], None]:
    return lambda name, key, step: sent.append((name, step))


@contextlib.contextmanager
def sql(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to a closed store file, committed on leaving."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs.db (closed): run ``d`` finished; run ``w`` crashed inside its at_most_once ``send`` of step 2
    (an INTENT row, no outcome) with an event delivered to it (event 1, not consumed) and, before
    that, its steps 0..1 committed."""
    path = tmp_path_factory.mktemp("integrity") / "runs.db"
    with SQLiteStore(path) as store:
        build("d").run_sync(Job(), store=store, run_id="d")
        with contextlib.suppress(Crash):
            build("w", effect=crash_in("send", [])).run_sync(Job(), store=store, run_id="w")
        store.deliver("w", "poke", {"x": 1}).result()
    return path


def copy(stores: Path, where: Path) -> Path:
    target = where / "runs.db"
    shutil.copy(stores, target)
    return target


def everything(path: Path, run_id: str) -> BaseException | None:
    """Open, load and claim ``run_id``, and list the runs: the first exception, if any."""
    try:
        with SQLiteStore(path) as store:
            store.load(run_id).result()
            store.claim(run_id).result()
            store.list_runs().result()
    except Exception as exc:
        return exc
    return None


def corrupted(outcome: BaseException | None, run_id: str) -> bool:
    return isinstance(outcome, StoreCorrupted) and f"run {run_id!r}" in str(outcome)


# --- 1. every row's CRC covers its key --------------------------------------------------------------
ROWS = {  # kind -> (table, record column, two rows to swap; the first's run is loaded)
    # (a run's row needs no test here: its record holds its run_id, which was always checked)
    "step": ("sma_steps", "record", ("run_id='d' AND number=1", "run_id='w' AND number=1")),
    "snapshot": ("sma_snapshots", "context", ("run_id='w' AND step=0", "run_id='d' AND step=0")),
    "call": ("sma_journal", "record", ("run_id='d' AND step=0 AND call=0", "run_id='w' AND step=0 AND call=0")),
}


@pytest.mark.parametrize("kind", list(ROWS))
def test_a_row_read_under_another_key_is_corrupted(stores: Path, tmp_path: Path, kind: str) -> None:
    """Two rows' records swapped with their checksums (what a flipped index entry pointing at the other
    row shows): each valid under its own key, so only a CRC over the key catches it."""
    path = copy(stores, tmp_path)
    table, column, (a, b) = ROWS[kind]
    with sql(path) as conn:
        ra = conn.execute(f"SELECT {column}, crc FROM {table} WHERE {a}").fetchone()
        rb = conn.execute(f"SELECT {column}, crc FROM {table} WHERE {b}").fetchone()
        conn.execute(f"UPDATE {table} SET {column}=?, crc=? WHERE {a}", rb)
        conn.execute(f"UPDATE {table} SET {column}=?, crc=? WHERE {b}", ra)
    run_id = a.split("'")[1]
    outcome = everything(path, run_id)
    assert corrupted(outcome, run_id), outcome


def test_an_event_read_under_another_run_or_consumed_step_is_corrupted(stores: Path, tmp_path: Path) -> None:
    """Run w's event moved to run d (r1 consuming r0's event), or w's event marked consumed by a step
    (or a consumed one marked not consumed): the inbox CRC covers run, seq and consumed_step."""
    for change in ("UPDATE sma_inbox SET run_id='d' WHERE run_id='w'",
                   "UPDATE sma_inbox SET consumed_step=1 WHERE run_id='w'"):
        path = copy(stores, tmp_path)
        with sql(path) as conn:
            conn.execute(change)
            moved = conn.execute("SELECT run_id FROM sma_inbox").fetchone()[0]
            if moved == "d":  # keep the count right, so the key is what is caught
                conn.execute("UPDATE sma_runs SET inbox_rows=1 WHERE run_id='d'")
        outcome = everything(path, moved)
        assert corrupted(outcome, moved), (change, outcome)
        path.unlink()


def test_a_consumed_event_cannot_be_made_unconsumed(tmp_path: Path) -> None:
    """A consumed event's consumed_step set back to NULL (so a second step could take it): corrupted."""
    from crash_worker import Job as _Job  # noqa: F401  (the same module the other tests use)

    path = tmp_path / "runs.db"
    with SQLiteStore(path) as store:
        store.create(_run("r"), {}).result()
        store.deliver("r", "go", 1).result()
        store.commit({"run": {**_run("r"), "next_step": 1}, "epoch": 1, "consume": 1,
                      "step": _step(0)}).result()
        assert store.load("r").result().inbox[0].consumed_step == 0
    with sql(path) as conn:
        conn.execute("UPDATE sma_inbox SET consumed_step=NULL")
    assert corrupted(everything(path, "r"), "r")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**53


def _run(run_id: str, **over: Any) -> dict[str, Any]:
    return {"run_id": run_id, "workflow": "wf", "fingerprint": "", "status": "running", "state": "s",
            "next_step": 0, "epoch": 1, "counters": {}, "written": [], "max_steps": 50, "created_at": 0.0,
            "updated_at": 0.0, **over}


def _step(number: int, **over: Any) -> dict[str, Any]:
    return {"number": number, "state": "s", "target": "s", "transition": "t", "kind": "action",
            "started_at": 0.0, "duration": 0.0, **over}


def _cell(run_id: str, *ints: int) -> bytes:
    """An index b-tree leaf cell holding (run_id, ints..., rowid), each int in 0..127 (as in
    tests/test_store_damage.py): payload size, record header (its size, serial types), values."""
    header = bytes([2 + len(ints), 13 + 2 * len(run_id)]) + bytes(8 + i if i < 2 else 1 for i in ints)
    body = run_id.encode() + bytes(i for i in ints if i >= 2)
    return bytes([len(header) + len(body)]) + header + body


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Runs r0 and r1 alike (4 steps, a journal row per step, a snapshot at step 2, one event each),
    closed; and how each loads."""
    path = tmp_path_factory.mktemp("twins") / "runs.db"
    with SQLiteStore(path) as store:
        for r in ("r0", "r1"):
            store.create(_run(r), {"n": 0}).result()
            for i in range(4):
                call = {"step": i, "call": 0, "tool": "t", "effect": "read", "status": "done", "key": f"{r}/{i}/0",
                        "result": f"{r}-{i}"}
                store.commit({"run": _run(r, next_step=i + 1), "epoch": 1, "step": _step(i, delta={"n": i + 1}),
                              "calls": [call], "snapshot": {"n": i + 1} if i == 1 else None}).result()
            store.deliver(r, "go", {"to": r}).result()
        loads = {r: store.load(r).result() for r in ("r0", "r1")}
    return path, loads


INDEXES = {"step": ("sma_steps", (2,)), "call": ("sma_journal", (2, 0)), "inbox": ("sma_inbox", (1,)),
           "snapshot": ("sma_snapshots", (2,))}


@pytest.mark.parametrize("mode", ["hide", "other run's row"])
@pytest.mark.parametrize("kind", list(INDEXES))
def test_a_flipped_index_entry_of_any_row_kind_is_damage_never_other_data(
        twins: tuple[Path, dict[str, Any]], tmp_path: Path, kind: str, mode: str) -> None:
    """A real flipped byte in a table's index, in the file: r0's entry of a row renamed to r1 (the row
    hidden from r0, and shown to r1 a second time), or r1's entry pointing at r0's row (its rowid
    changed). Each run loads exactly as before or raises StoreCorrupted naming it: never another run's
    row (r1 consuming r0's event), a shorter journal, or a missing run."""
    pristine, loads = twins
    path = tmp_path / "runs.db"
    shutil.copy(pristine, path)
    table, key = INDEXES[kind]
    with sql(path) as conn:
        (page,) = conn.execute(f"SELECT rootpage FROM sqlite_master WHERE name='sqlite_autoindex_{table}_1'").fetchone()
        where = " AND ".join(f"{c}=?" for c in {"sma_steps": ["number"], "sma_journal": ["step", "call"],
                                               "sma_inbox": ["seq"], "sma_snapshots": ["step"]}[table])
        rowid = {r: conn.execute(f"SELECT rowid FROM {table} WHERE run_id=? AND {where}", (r, *key)).fetchone()[0]
                 for r in ("r0", "r1")}
    data = bytearray(path.read_bytes())
    victim = "r0" if mode == "hide" else "r1"
    entry = _cell(victim, *key, rowid[victim])
    at = data.find(entry, (page - 1) * PAGE, page * PAGE)
    assert at >= 0 and data.find(entry, at + 1, page * PAGE) < 0, "the entry must occur once in its page"
    if mode == "hide":
        data[at + entry.index(b"r0") + 1] ^= 0x01  # 'r0' -> 'r1'
    else:
        data[at + len(entry) - 1] = rowid["r0"]
    path.write_bytes(bytes(data))
    with SQLiteStore(path) as store:
        for r in ("r0", "r1"):
            try:
                got: Any = store.load(r).result()
            except StoreCorrupted as exc:
                got = exc
            if isinstance(got, StoreCorrupted):
                assert f"run {r!r}" in str(got), got
            else:
                # The same data; which snapshot rebuilt it (a hidden one: an earlier one) is bookkeeping.
                assert got.model_copy(update={"snapshot_at": 0}) == loads[r].model_copy(
                    update={"snapshot_at": 0}), f"{r} loaded other data"


# --- 2. the run counts its rows ------------------------------------------------------------------
@pytest.mark.parametrize(("table", "where"), [("sma_journal", "run_id='w' AND step=2"),
                                              ("sma_journal", "run_id='w' AND step=0"),
                                              ("sma_inbox", "run_id='w'")])
def test_a_hidden_row_is_corrupted_never_a_shorter_journal(stores: Path, tmp_path: Path, table: str,
                                                           where: str) -> None:
    """A journal row or inbox event gone from what the queries return (as a damaged index hides it):
    the run's counts disagree, so it is StoreCorrupted, and resuming w never re-sends step 2."""
    path = copy(stores, tmp_path)
    with sql(path) as conn:
        assert conn.execute(f"DELETE FROM {table} WHERE {where}").rowcount == 1
    (tmp_path / "runs.db-intents").unlink(missing_ok=True)  # only the counts may catch it
    assert corrupted(everything(path, "w"), "w")
    sent: list[tuple[str, int]] = []
    with contextlib.suppress(StoreError), SQLiteStore(path) as store:
        build("w", effect=recorder(sent)).resume_sync("w", store=store)
    assert ("send", 2) not in sent


# --- 3. an at_most_once intent survives a -wal roll-back -------------------------------------------------
@pytest.fixture(scope="module")
def walled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, bytes, bytes]:
    """A store killed inside send (step 2): the main file, its -wal (the intent is the last commit)
    and its intent log, copied while the store is open, as a SIGKILL leaves them."""
    where = tmp_path_factory.mktemp("walled")
    path = where / "runs.db"
    store = SQLiteStore(path)
    try:
        build("d").run_sync(Job(), store=store, run_id="d")
        store.close()
        store = SQLiteStore(path)  # d checkpointed into the main file; m only in the -wal
        with contextlib.suppress(Crash):
            build("m", effect=crash_in("send", [])).run_sync(Job(), store=store, run_id="m")
        assert store.load("m").result().calls[-1].status is CallStatus.INTENT
        files = (path.read_bytes(), Path(f"{path}-wal").read_bytes(), Path(f"{path}-intents").read_bytes())
    finally:
        store.close()
    return (where, *files)


def resume_m(where: Path, data: bytes, wal: bytes, log: bytes | None) -> tuple[list[tuple[str, int]], str]:
    d = where / f"case{time.monotonic_ns()}"
    d.mkdir()
    (d / "runs.db").write_bytes(data)
    (d / "runs.db-wal").write_bytes(wal)
    if log is not None:
        (d / "runs.db-intents").write_bytes(log)
    sent: list[tuple[str, int]] = []
    try:
        with SQLiteStore(d / "runs.db") as store:
            result = build("m", effect=recorder(sent)).resume_sync("m", store=store)
            end = result.terminal
    except StoreError as exc:
        end = f"error: {exc}"
    finally:
        shutil.rmtree(d)
    return sent, end


def last_commit_frames(wal: bytes) -> list[int]:
    """The frame numbers (0-based) of the -wal's last transaction."""
    frame = PAGE + WAL_FRAME_HEADER
    n = (len(wal) - WAL_HEADER) // frame
    commits = [i for i in range(n) if wal[WAL_HEADER + i * frame + 4:WAL_HEADER + i * frame + 8] != bytes(4)]
    start = commits[-2] + 1 if len(commits) > 1 else 0
    return list(range(start, commits[-1] + 1))


@SETTINGS
@given(data=st.data())
def test_an_intent_lost_to_wal_damage_is_never_run_again(walled: tuple[Path, bytes, bytes, bytes],
                                                          data: st.DataObject) -> None:
    """A byte flipped in the frames of the -wal's last commit (the intent's): SQLite's recovery stops
    there and opens the store without the intent, silently. The intent log still has it: resuming
    takes the documented unknown-outcome route and never sends again."""
    where, main_file, wal, log = walled
    frames = last_commit_frames(wal)
    frame = PAGE + WAL_FRAME_HEADER
    i = data.draw(st.sampled_from(frames), label="frame")
    at = WAL_HEADER + i * frame + data.draw(st.integers(0, frame - 1), label="byte")
    damaged = bytearray(wal)
    damaged[at] ^= data.draw(st.integers(1, 255), label="mask")
    sent, end = resume_m(where, main_file, bytes(damaged), log)
    assert ("send", 2) not in sent, end
    assert end == "unknown" or end.startswith("error: "), end


def test_without_the_intent_log_the_same_damage_would_send_again(walled: tuple[Path, bytes, bytes, bytes]) -> None:
    """The control for the test above: the same damage with the log removed re-sends (the store cannot
    know), so the log is what keeps the intent."""
    where, main_file, wal, log = walled
    damaged = bytearray(wal)
    damaged[WAL_HEADER + last_commit_frames(wal)[-1] * (PAGE + WAL_FRAME_HEADER) + 30] ^= 0x10
    sent, _ = resume_m(where, main_file, bytes(damaged), None)
    assert ("send", 2) in sent
    sent, end = resume_m(where, main_file, bytes(damaged), log)
    assert ("send", 2) not in sent and end == "unknown"


def test_damage_in_the_middle_of_the_wal_is_corrupted(walled: tuple[Path, bytes, bytes, bytes]) -> None:
    """A flipped byte in an earlier commit's frame, with later commits after it: SQLite would drop them
    all silently; the store sees the good commit frames after the damage and refuses to open."""
    where, main_file, wal, log = walled
    frame = PAGE + WAL_FRAME_HEADER
    damaged = bytearray(wal)
    damaged[WAL_HEADER + 1 * frame + 100] ^= 0x01
    sent, end = resume_m(where, main_file, bytes(damaged), log)
    assert end.startswith("error: ") and "-wal" in end and sent == [], end


def test_a_torn_last_line_of_the_intent_log_is_ignored_and_a_damaged_middle_line_is_not(
        walled: tuple[Path, bytes, bytes, bytes]) -> None:
    """A crash while a line was written leaves it torn at the end: ignored (its call never ran). A line
    that fails its checksum with good lines after it: StoreCorrupted naming the log and line."""
    where, main_file, wal, log = walled
    sent, end = resume_m(where, main_file, wal, log + b'0badc0de ["m",{"step":9')
    assert end == "unknown" and ("send", 2) not in sent
    good = log.splitlines(keepends=True)[0]
    sent, end = resume_m(where, main_file, wal, b"00000000 [1]\n" + good)
    assert end.startswith("error: ") and "line 1" in end and "-intents" in end, end


def test_a_new_store_empties_an_intent_log_left_beside_it(walled: tuple[Path, bytes, bytes, bytes],
                                                          tmp_path: Path) -> None:
    """A new store at a path where a killed process's log stayed (the old files deleted): the old
    intents are not this store's runs' and are dropped, so a new run of the same id is not taken as
    interrupted."""
    path = tmp_path / "runs.db"
    Path(f"{path}-intents").write_bytes(walled[3])
    sent: list[tuple[str, int]] = []
    with SQLiteStore(path) as store:
        assert build("m", effect=recorder(sent)).run_sync(Job(), store=store, run_id="m").terminal == "done"
    assert ("send", 2) in sent


def test_the_intent_log_is_emptied_when_the_last_connection_closes(tmp_path: Path) -> None:
    """Once the database was closed by its last connection (every commit checkpointed into the main
    file, no -wal left), the log is emptied; while another instance has it open, it is kept."""
    path = tmp_path / "runs.db"
    log = Path(f"{path}-intents")
    other = SQLiteStore(path)
    with SQLiteStore(path) as store, contextlib.suppress(Crash):
        build("m", effect=crash_in("send", [])).run_sync(Job(), store=store, run_id="m")
    assert log.stat().st_size > 0, "kept: the other instance still has the database open"
    other.close()
    with SQLiteStore(path) as store:  # opened and closed again: now the last connection
        assert store.load("m").result().calls[-1].status is CallStatus.INTENT
    assert not Path(f"{path}-wal").exists() and log.stat().st_size == 0


# --- 4. read-only opening --------------------------------------------------------------------------
FLOWS = "from crash_worker import Job, build\n\nflow = build('d')\n"


def fingerprint(path: Path) -> dict[str, tuple[bytes, int] | None]:
    out: dict[str, tuple[bytes, int] | None] = {}
    for suffix in ("", "-wal", "-shm", "-intents", "-journal"):
        f = Path(f"{path}{suffix}")
        out[suffix] = (f.read_bytes(), f.stat().st_mtime_ns) if f.exists() else None
    return out


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def test_read_only_commands_write_nothing(stores: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`runs list`, `runs show` and `diagram --run` on a closed store: the file's bytes and mtime are the
    same after them, and no -wal, -shm or journal appears."""
    path = copy(stores, tmp_path)
    (tmp_path / "flows_ro.py").write_text(FLOWS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = fingerprint(path)
    time.sleep(0.01)  # an mtime written now would differ
    for argv in (["runs", "list", "--store", str(path)], ["runs", "show", "d", "--store", str(path)],
                 ["runs", "show", "w", "--store", str(path), "--json"],
                 ["diagram", "flows_ro:flow", "-o", str(tmp_path / "d.dot"), "--run", "d", "--store", str(path)]):
        code, _, err = cli(argv)
        assert code == 0, (argv, err)
        assert fingerprint(path) == before, argv


def test_a_read_only_store_refuses_every_write_and_creates_nothing(stores: Path, tmp_path: Path) -> None:
    """readonly=True: reads work; every write method raises StoreError saying it is read-only, and the
    file is unchanged; a missing file is a StoreError and is not created."""
    path = copy(stores, tmp_path)
    before = fingerprint(path)
    with SQLiteStore(path, readonly=True) as store:
        assert {r.run_id for r in store.list_runs().result()} == {"d", "w"}
        assert store.load("w").result().run.next_step == 2
        writes: dict[str, Callable[[], Any]] = {
            "create": lambda: store.create(_run("x"), {}),
            "claim": lambda: store.claim("w"),
            "commit": lambda: store.commit({"run": {**_run("w"), "next_step": 3}, "epoch": 1, "step": _step(2)}),
            "suspend": lambda: store.suspend({**_run("w"), "next_step": 2}, 1, {}),
            "record_call": lambda: store.record_call("w", 1, {"step": 2, "call": 1, "tool": "t", "effect": "read",
                                                              "status": "done", "key": "w/2/1"}),
            "deliver": lambda: store.deliver("w", "poke", 2),
            "fork": lambda: store.fork("d", 1, _run("f"), {}),
        }
        for name, call in writes.items():
            with pytest.raises(StoreError, match="read-only") as info:
                call().result()
            assert not isinstance(info.value, StoreCorrupted), name
    assert fingerprint(path) == before
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="no such file"):
        SQLiteStore(missing, readonly=True)
    assert not any(tmp_path.glob("missing.db*"))


def test_a_read_only_store_reads_a_store_another_process_has_open(stores: Path, tmp_path: Path) -> None:
    """With a writer open (its -wal present), a read-only store reads the latest commits and leaves the
    main file and the -wal as they were."""
    path = copy(stores, tmp_path)
    with SQLiteStore(path) as writer:
        writer.deliver("w", "poke", 2).result()
        main_file, wal = path.read_bytes(), Path(f"{path}-wal").read_bytes()
        with SQLiteStore(path, readonly=True) as reader:
            assert [e.payload for e in reader.load("w").result().inbox] == [{"x": 1}, 2]
        assert path.read_bytes() == main_file and Path(f"{path}-wal").read_bytes() == wal


def test_a_version_1_file_is_migrated_read_write_and_refused_read_only(tmp_path: Path) -> None:
    """A store written by schema version 1 (CRCs over the record alone, no counts): read-only opening
    refuses it, saying to open it read-write once; read-write opening migrates it (sealing each CRC
    with its key, counting the rows from the tables) and the run loads exactly as before; a row that
    failed its version-1 checksum still fails after the migration."""
    path = tmp_path / "runs.db"
    with sql(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA application_id={0x534D4131}")
        conn.executescript(_SCHEMA_V1)
        conn.execute("INSERT INTO sma_meta VALUES ('schema_version', '1')")
        for run_id, damaged in (("r", False), ("bad", True)):
            run = json.dumps(_run(run_id, next_step=1), separators=(",", ":"))
            conn.execute("INSERT INTO sma_runs VALUES (?, 'wf', 1, 1, 'running', 0.0, ?, ?)",
                         (run_id, run, zlib.crc32(run.encode())))
            step = json.dumps(_step(0, delta={"n": 1}), separators=(",", ":"))
            conn.execute("INSERT INTO sma_steps VALUES (?, 0, ?, ?)", (run_id, step, zlib.crc32(step.encode())))
            conn.execute("INSERT INTO sma_snapshots VALUES (?, 0, '{}', ?)", (run_id, zlib.crc32(b"{}") ^ damaged))
            call = json.dumps({"step": 0, "call": 0, "tool": "t", "effect": "read", "status": "done",
                               "key": f"{run_id}/0/0", "result": 5})
            conn.execute("INSERT INTO sma_journal VALUES (?, 0, 0, ?, ?)", (run_id, call, zlib.crc32(call.encode())))
    with pytest.raises(StoreError, match=r"version 1.*without readonly"):
        SQLiteStore(path, readonly=True)
    with SQLiteStore(path) as store:
        got = store.load("r").result()
        assert got.context == {"n": 1} and [c.result for c in got.calls] == [5]
        with pytest.raises(StoreCorrupted, match="run 'bad' snapshot at step 0"):
            store.load("bad").result()
    with sql(path) as conn:
        assert conn.execute("SELECT value FROM sma_meta WHERE key='schema_version'").fetchone()[0] == \
            str(SCHEMA_VERSION)
        assert conn.execute("SELECT journal_rows FROM sma_runs WHERE run_id='r'").fetchone()[0] == 1


# --- 5. objects the library did not create ----------------------------------------------------------
HANG = "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c)"
FOREIGN = {
    "trigger": f"CREATE TRIGGER sma_hang BEFORE UPDATE ON sma_runs BEGIN SELECT {HANG}; END",
    "meta trigger": f"CREATE TRIGGER t2 AFTER INSERT ON sma_meta BEGIN SELECT {HANG}; END",
    "view": "CREATE VIEW v AS SELECT * FROM sma_runs",
    "table": "CREATE TABLE notes (x)",
    "index": "CREATE INDEX sma_runs_extra ON sma_runs (status)",
}


@pytest.mark.parametrize("what", list(FOREIGN))
def test_a_store_with_objects_the_library_did_not_create_is_refused(stores: Path, tmp_path: Path, what: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted trigger (one that would loop forever on the next write), view, table or index: every
    command refuses the file at once, naming the object, in a real process with a bounded wait."""
    path = copy(stores, tmp_path)
    with sql(path) as conn:
        conn.execute(FOREIGN[what])
    before = path.read_bytes()
    flows = tmp_path / "flows_foreign.py"
    flows.write_text(FLOWS, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    commands = (["runs", "list"], ["runs", "show", "w"], ["runs", "resume", "flows_foreign:flow", "w"],
                ["runs", "deliver", "flows_foreign:flow", "w", "poke", "--payload", '{"x": 1}'])
    if "trigger" not in what:  # nothing to hang: in this process
        monkeypatch.syspath_prepend(str(tmp_path))
        for argv in commands:
            code, _, err = cli([*argv, "--store", str(path)])
            assert code != 0 and "did not create" in err, (argv, err)
        commands = ()
    for argv in commands:  # a trigger that loops: each command in a process of its own, with a deadline
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-c", "import sys; from statemachine_agent.cli import main; "
                               "sys.exit(main(sys.argv[1:]))", *argv, "--store", str(path)],
                              capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path, check=False)
        assert time.monotonic() - t0 < 30, argv
        assert done.returncode != 0 and "did not create" in done.stderr, (argv, done.stderr)
        assert "Traceback" not in done.stderr
    with pytest.raises(StoreError, match="did not create"):
        SQLiteStore(path)
    assert path.read_bytes() == before


# --- 6. every loaded number is range-checked; 7. every loader error is StoreCorrupted ------------------
def _seal(conn: sqlite3.Connection, table: str, column: str, where: str, text: str) -> None:
    """Write ``text`` as the record of the row ``where`` with a valid keyed checksum."""
    row = conn.execute(f"SELECT * FROM {table} WHERE {where}").fetchone()
    names = [d[0] for d in conn.execute(f"SELECT * FROM {table} LIMIT 0").description]
    r = dict(zip(names, row, strict=True))
    consumed = "" if r.get("consumed_step") is None else r["consumed_step"]
    kind, key = {"sma_runs": ("run", ""), "sma_steps": ("step", r.get("number")),
                 "sma_journal": ("call", f"{r.get('step')}/{r.get('call')}"),
                 "sma_snapshots": ("snapshot", r.get("step")),
                 "sma_inbox": ("inbox", f"{r.get('seq')}/{consumed}")}[table]
    conn.execute(f"UPDATE {table} SET {column}=?, crc=? WHERE {where}",
                 (text, _row_crc(kind, r["run_id"], key, text)))


HOSTILE_NUMBERS = st.one_of(
    st.sampled_from([-1, -(2**63), 2**53 + 1, 2**63 - 1, 10**12, 10**30, "7", "", True, 1.5, [], {}]),
    st.integers(min_value=2**53 + 1, max_value=2**64), st.integers(max_value=-1))
HOSTILE_FLOATS = st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", '"now"', "null", "[]", "true"])
RUN_INTS = ["next_step", "epoch", "restarts", "max_steps", "parent_step"]
MODEL_CALL = {"provider": "p", "model": "m", "mode": "prompt", "purpose": "answer", "input_tokens": 1,
              "output_tokens": 1, "latency": 0.1, "finish_reason": "stop", "attempt": 1}


@SETTINGS
@given(where=st.sampled_from(["run int", "run float", "counters", "model_calls", "step float", "call int",
                              "event seq"]),
       field=st.data(), value=HOSTILE_NUMBERS, number=HOSTILE_FLOATS)
def test_every_loaded_number_is_range_checked(stores: Path, tmp_path_factory: pytest.TempPathFactory, *, where: str,
                                              field: st.DataObject, value: Any, number: str) -> None:
    """A record re-sealed (valid checksum) with a number out of range or of the wrong type: a step count
    of 10**12, an epoch of 2**63-1, a token count that is a string or negative, a timestamp 1e999 or
    NaN: StoreCorrupted naming the run and the row, never KeyError, MemoryError, OverflowError or
    TypeError."""
    path = copy(stores, tmp_path_factory.mktemp("numbers"))
    with sql(path) as conn:
        if where.startswith("run"):
            (text,) = conn.execute("SELECT record FROM sma_runs WHERE run_id='w'").fetchone()
            record = json.loads(text)
            if where == "run int":
                name = field.draw(st.sampled_from(RUN_INTS), label="field")
                # a big restart count or step bound is legal; for next_step and epoch, the column must agree
                assume(name in ("next_step", "epoch") or not _whole(value))
                record[name] = value
                new = json.dumps(record)
                if name in ("next_step", "epoch") and isinstance(value, int) and abs(value) < 2**63:
                    conn.execute(f"UPDATE sma_runs SET {name}=? WHERE run_id='w'", (value,))
            else:
                name = field.draw(st.sampled_from(["created_at", "updated_at"]), label="field")
                new = json.dumps({**record, name: "TOKEN"}).replace('"TOKEN"', number)
            _seal(conn, "sma_runs", "record", "run_id='w'", new)
            row = "run 'w'"
        elif where == "counters":
            (text,) = conn.execute("SELECT record FROM sma_runs WHERE run_id='w'").fetchone()
            record = json.loads(text)
            assume(not _whole(value))  # any whole number up to 2**53 is a legal count
            record["counters"] = {"actions_run": 1, "visits": {"fetch": value}, "traversals": {}}
            _seal(conn, "sma_runs", "record", "run_id='w'", json.dumps(record))
            row = "run 'w'"
        elif where in ("model_calls", "step float"):
            (text,) = conn.execute("SELECT record FROM sma_steps WHERE run_id='w' AND number=1").fetchone()
            record = json.loads(text)
            if where == "model_calls":
                name = field.draw(st.sampled_from(["input_tokens", "output_tokens", "attempt", "latency", "cost"]),
                                  label="field")
                legal = (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e300
                         if name in ("latency", "cost") else _whole(value))
                assume(not legal)  # a count up to 2**53 and finite seconds or costs >= 0 are legal
                record["model_calls"] = [{**MODEL_CALL, name: value}]
                new = json.dumps(record)
            else:
                name = field.draw(st.sampled_from(["started_at", "duration"]), label="field")
                new = json.dumps({**record, name: "TOKEN"}).replace('"TOKEN"', number)
            _seal(conn, "sma_steps", "record", "run_id='w' AND number=1", new)
            row = "step 1"
        elif where == "call int":
            (text,) = conn.execute("SELECT record FROM sma_journal WHERE run_id='w' AND step=0").fetchone()
            record = {**json.loads(text), field.draw(st.sampled_from(["step", "call"]), label="field"): value}
            _seal(conn, "sma_journal", "record", "run_id='w' AND step=0", json.dumps(record))
            row = "journal row 0/0"
        else:
            (text,) = conn.execute("SELECT record FROM sma_inbox WHERE run_id='w'").fetchone()
            _seal(conn, "sma_inbox", "record", "run_id='w'", json.dumps({**json.loads(text), "seq": value}))
            row = "inbox event 1"
    outcome = everything(path, "w")
    assert corrupted(outcome, "w"), (where, value, number, outcome)
    assert row in str(outcome) or row == "run 'w'", outcome


@pytest.mark.parametrize("version", ["0", "-1", "3" * 12, "", "1.0", " 2", "x", None, 2.0, b"2"])
def test_a_damaged_schema_version_is_corrupted(stores: Path, tmp_path: Path, version: Any) -> None:
    """schema_version 0, negative, not a number, of another type, or missing from a file that has the
    store's tables: StoreCorrupted (or, for a larger version, the newer-release StoreError), never
    KeyError or ValueError, and a store whose version row is gone is not taken for a new one."""
    path = copy(stores, tmp_path)
    with sql(path) as conn:
        if version is None:
            conn.execute("DELETE FROM sma_meta WHERE key='schema_version'")
        else:
            conn.execute("UPDATE sma_meta SET value=? WHERE key='schema_version'", (version,))
    for readonly in (True, False):
        with pytest.raises(StoreError, match="version") as info:
            SQLiteStore(path, readonly=readonly).close()
        assert isinstance(info.value, StoreCorrupted) or "newer" in str(info.value), info.value


KEY_VALUES = st.sampled_from([None, "0", 0.5, -1, 2**63 - 1, b"\x00", "\udcff", "é"])


@SETTINGS
@given(table=st.sampled_from(["sma_steps", "sma_journal", "sma_inbox", "sma_snapshots", "sma_runs"]),
       column=st.data(), value=st.one_of(KEY_VALUES, st.binary(max_size=12),
                                         st.sampled_from(["\xff\xfe", "{", "[]", "null"])),
       bad_utf8=st.booleans())
def test_every_loader_error_is_store_corrupted_naming_the_run(stores: Path, tmp_path_factory: pytest.TempPathFactory,
                                                              *, table: str, column: st.DataObject, value: Any,
                                                              bad_utf8: bool) -> None:
    """Any column of any row of run w set to a value of another type, bytes, or text that is not
    UTF-8: opening, listing, loading and claiming w give StoreCorrupted naming w (or, when the change
    made no difference, the same run), never another exception."""
    path = copy(stores, tmp_path_factory.mktemp("types"))
    with sql(path) as conn:
        names = [d[0] for d in conn.execute(f"SELECT * FROM {table} LIMIT 0").description]
        name = column.draw(st.sampled_from([n for n in names if n != "run_id"]), label="column")
        if value == "\udcff":  # a lone surrogate: sqlite3 cannot bind it, so its UTF-8 bytes
            value = value.encode("utf-8", "surrogatepass")
        cast = "CAST(? AS TEXT)" if bad_utf8 else "?"
        if bad_utf8:  # text that is not UTF-8
            value = b"\xff\xfe" + str(value).encode("utf-8", "surrogatepass")
        try:
            conn.execute(f"UPDATE {table} SET {name}={cast} WHERE rowid=(SELECT min(rowid) FROM {table} "
                         "WHERE run_id='w')", (value,))
        except sqlite3.IntegrityError:  # NULL in a NOT NULL column: SQLite itself keeps that out
            assume(False)
    outcome = everything(path, "w")
    if outcome is None:
        return  # e.g. a timestamp column only used for ordering, or the same value
    assert corrupted(outcome, "w"), (table, name, value, outcome)


@pytest.mark.parametrize("seq", [2**63 - 1, 2**53])
def test_a_delivery_after_a_damaged_event_number_is_corrupted(stores: Path, tmp_path: Path, seq: int) -> None:
    """An event number at the top of the range: the next delivery would number its event past it (SQLite
    turns 2**63 into a float); deliver raises StoreCorrupted naming the run and writes nothing."""
    path = copy(stores, tmp_path)
    with sql(path) as conn:
        conn.execute("UPDATE sma_inbox SET seq=? WHERE run_id='w'", (seq,))
    with SQLiteStore(path) as store, pytest.raises(StoreCorrupted, match="run 'w' inbox"):
        store.deliver("w", "poke", 2).result()
    with sql(path) as conn:
        assert conn.execute("SELECT count(*), max(inbox_rows) FROM sma_inbox JOIN sma_runs USING (run_id) "
                            "WHERE run_id='w'").fetchone() == (1, 1)


# --- 8. a locked database: a bounded wait, then a clear error ----------------------------------------
def test_a_locked_database_gives_a_bounded_wait_then_a_clear_error(stores: Path, tmp_path: Path) -> None:
    """Another connection holds the write lock: opening with busy_timeout=0.2 waits about that long and
    raises StoreError saying what to do; an open store's commit does the same; a read-only store still
    reads (WAL readers do not wait for writers)."""
    path = copy(stores, tmp_path)
    with SQLiteStore(path) as store:
        store.load("w").result()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE sma_meta SET value=value")
        t0 = time.monotonic()
        with pytest.raises(StoreError, match=r"locked.*busy_timeout") as info:
            SQLiteStore(path, busy_timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 10 and not isinstance(info.value, StoreCorrupted)
        with SQLiteStore(path, readonly=True, busy_timeout=0.2) as reader:
            assert reader.load("w").result().run.run_id == "w"
    finally:
        other.close()
    with SQLiteStore(path, busy_timeout=0.2) as store:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            t0 = time.monotonic()
            with pytest.raises(StoreError, match=r"locked.*busy_timeout"):
                store.deliver("w", "poke", 3).result()
            assert 0.15 < time.monotonic() - t0 < 10
        finally:
            other.close()
        assert len(store.load("w").result().inbox) == 1  # nothing of the refused delivery


def test_an_exclusive_lock_bounds_reads_too(stores: Path, tmp_path: Path) -> None:
    """A connection in exclusive locking mode that wrote keeps even readers out: a read-only open waits
    busy_timeout, then StoreError naming the lock."""
    path = copy(stores, tmp_path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("PRAGMA locking_mode=EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")
        other.execute("UPDATE sma_meta SET value=value")
        for readonly in (False, True):
            t0 = time.monotonic()
            with pytest.raises(StoreError, match=r"locked|busy") as info:
                SQLiteStore(path, readonly=readonly, busy_timeout=0.2).close()
            assert time.monotonic() - t0 < 10 and not isinstance(info.value, StoreCorrupted), info.value
    finally:
        other.close()
    assert isinstance(everything(path, "nope"), RunNotFound)
