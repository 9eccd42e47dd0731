"""Resume costs the tail, not the history (issue 17): a resume reads the last snapshot and the steps
after it once, its claim reads no history, and the steps before it are read only when the result's path
is asked for. (What the run's model calls spent comes from its record: tests/test_llm_durable.py's
budget tests resume through it.)"""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from statemachine_agent import Context, Workflow
from statemachine_agent.result import Step, Steps
from statemachine_agent.stores import SQLiteStore


class Chat(Context):
    history: list[dict[str, str]] = Field(default_factory=list)
    n: int = 0
    limit: int = 10


class Crash(BaseException):
    """Stands for the process dying inside a step."""


def chat(crash_at: list[int], *, model_calls: bool = False) -> Any:
    """One looping state that appends a message per step (and, with ``model_calls``, records a model
    call of 10 tokens per step through the public record hook), ``crash_at[0]``: the step that dies."""
    wf = Workflow("tail-chat", Chat)

    @wf.state(initial=True, reads=["history", "n", "limit"], writes=["history", "n"])
    def talk(ctx: Any) -> None:
        if ctx.n == crash_at[0]:
            raise Crash
        ctx.history.append({"role": "user", "content": f"message {ctx.n}"})
        ctx.n += 1

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("talk", "talk", guard=lambda c: c.n < c.limit, name="again", max_traversals=100_000)
    wf.transition("talk", "done", default=True, name="finish")
    return wf.compile()


def crashed(path: Path, steps: int, *, h: int = 3) -> Any:
    """A run of the chat agent that took ``steps`` steps, then died inside the next."""
    crash = [steps]
    compiled = chat(crash)
    with SQLiteStore(path) as store, pytest.raises(Crash):
        compiled.run_sync(Chat(history=[{"role": "system", "content": "x"}] * h, limit=steps + 3), store=store,
                          run_id="r", max_steps=100_000)
    crash[0] = -1
    return compiled


def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every range of step rows the SQLite store reads, as (start, stop), from now on."""
    from statemachine_agent.stores import _sqlite
    seen: list[tuple[int, int]] = []
    real = _sqlite._steps

    def counted(sql: Any, conn: Any, run_id: str, start: int, stop: int, **kw: Any) -> Any:
        seen.append((start, stop))
        return real(sql, conn, run_id, start, stop, **kw)

    monkeypatch.setattr(_sqlite, "_steps", counted)
    return seen


def test_a_resume_reads_the_tail_once_and_the_earlier_steps_only_when_asked(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = crashed(tmp_path / "runs.db", 120)
    with SQLiteStore(tmp_path / "runs.db") as store:
        tail = store.load_tail("r").result()
        assert 0 < tail.first_step == tail.snapshot_at <= 120, "the run snapshots as it goes: the tail is short"
        assert [s.number for s in tail.steps] == list(range(tail.first_step, 120))
        assert tail.context == store.load("r").result().context
        seen = reads(monkeypatch)
        result = compiled.resume_sync("r", store=store)
        assert seen == [(tail.first_step, 120)], "the resume read the tail once; its claim read no steps"
        assert isinstance(result.path, Steps) and len(result.path) == 123
        assert result.path[-1].number == 122, "the steps run after the resume are there without a read"
        assert len(seen) == 1
        assert [s.number for s in result.path] == list(range(123))
        assert seen[1:] == [(0, tail.first_step)], "the earlier steps were read when the path was"
        full = store.load("r").result()
    assert result.context.history == [dict(m) for m in Chat.model_validate(full.context).history]
    assert len(result.context.history) == 3 + 123


def test_a_resumed_runs_path_equals_the_tuple_of_its_steps_and_outlives_its_store(tmp_path: Path) -> None:
    compiled = crashed(tmp_path / "runs.db", 60)
    with SQLiteStore(tmp_path / "runs.db") as store:
        result = compiled.resume_sync("r", store=store)
    # Read after the store was closed: from the file.
    steps = tuple(result.path)
    assert len(steps) == 63 and [s.number for s in steps] == list(range(63))
    assert result.path == steps and steps == result.path and hash(result.path) == hash(steps)
    assert result.path[:3] == steps[:3] and result.path[-2] == steps[-2]
    assert result.path + () == steps and () + result.path == steps  # noqa: RUF005 (tuple arithmetic)
    assert repr(result.path) == repr(steps)
    assert pickle.loads(pickle.dumps(result.path)) == steps
    assert result.states == [s.state for s in steps] + ["done"]
    assert result.to_dict()["path"] == [s.to_dict() for s in steps]
    with SQLiteStore(tmp_path / "runs.db") as store:
        assert compiled.resume_sync("r", store=store).path == steps, "an ended run's path is read whole"


def test_a_path_whose_earlier_steps_cannot_be_read_raises_when_read(tmp_path: Path) -> None:
    compiled = crashed(tmp_path / "runs.db", 60)
    with SQLiteStore(tmp_path / "runs.db") as store:
        result = compiled.resume_sync("r", store=store)
    conn = sqlite3.connect(tmp_path / "runs.db")
    conn.execute("UPDATE sma_steps SET record = record || ' ' WHERE run_id='r' AND number=0")
    conn.commit()
    conn.close()
    assert len(result.path) == 63 and result.path[-1].number == 62  # known without reading
    with pytest.raises(Exception, match="step 0"):
        list(result.path)


@settings(max_examples=15, deadline=None)
@given(earlier=st.integers(0, 6), later=st.integers(0, 4), index=st.integers(-12, 12))
def test_steps_behave_as_the_tuple_of_their_steps(earlier: int, later: int, index: int) -> None:
    made = [Step(i, "s", "t", "x", "transition", 0.0, 0.0) for i in range(earlier + later)]  # type: ignore[arg-type]
    loads: list[int] = []

    def load() -> list[Step]:
        loads.append(1)
        return made[:earlier]

    lazy = Steps(made[earlier:], earlier=earlier, load=load)
    whole = tuple(made)
    assert len(lazy) == len(whole)
    if -len(whole) <= index < len(whole):
        assert lazy[index] == whole[index]
    else:
        with pytest.raises(IndexError):
            lazy[index]
    assert lazy[index:] == whole[index:]
    assert lazy == whole and list(lazy) == list(whole) and lazy.count(whole[0] if whole else None) == whole.count(
        whole[0] if whole else None)
    frozen = lazy.frozen()
    lazy.append(Step(99, "s", "t", "x", "transition", 0.0, 0.0))  # type: ignore[arg-type]
    assert frozen == whole, "a frozen copy does not see the run's next steps"
    assert len(loads) <= 1, "the earlier steps are read once, shared by the copies"


def test_opening_a_store_writes_nothing_when_it_is_current(tmp_path: Path) -> None:
    """Opening an existing, current store commits no write (so no fsync: a resume opens one)."""
    crashed(tmp_path / "runs.db", 5)
    before = (tmp_path / "runs.db").read_bytes()
    for _ in range(2):
        with SQLiteStore(tmp_path / "runs.db"):
            pass
    assert (tmp_path / "runs.db").read_bytes() == before


@pytest.mark.skipif(__import__("sys").platform != "linux", reason="the -shm lock query is Linux's")
def test_another_process_holding_the_database_open_is_seen(tmp_path: Path) -> None:
    """The -wal check trusts a lost-commit verdict only when no other process has the database open
    (then the -shm is a recovery's index, not a live one that a killed worker's unindexed frames
    follow): a real second process holding a connection is seen, and no longer once it exits."""
    import subprocess
    import sys

    from statemachine_agent.stores import _sqlite

    path = tmp_path / "runs.db"
    crashed(path, 3)
    child = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
         "c.execute('SELECT count(*) FROM sma_runs').fetchone(); print('ready', flush=True); sys.stdin.read()",
         str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with SQLiteStore(path):
            assert _sqlite._others_attached(str(path))
    finally:
        child.communicate("", timeout=30)
    with SQLiteStore(path):
        assert not _sqlite._others_attached(str(path)), "only this process has it open now"


def test_a_claim_commits_without_its_own_fsync_and_a_step_with_one(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume's claim and mark-started commit under synchronous=NORMAL (a process crash keeps them;
    the step's own FULL commit, the next thing anyone can observe, syncs them too); the step's commit
    stays FULL. Both resume the run as before."""
    from statemachine_agent.stores import _sqlite

    compiled = crashed(tmp_path / "runs.db", 4)
    seen: list[str] = []
    real = _sqlite._Connection.execute

    def traced(self: Any, sql: str, *args: Any) -> Any:
        if sql.startswith(("PRAGMA synchronous", "COMMIT", "UPDATE sma_runs SET epoch", "INSERT INTO sma_steps")):
            seen.append(sql[:40])
        return real(self, sql, *args)

    monkeypatch.setattr(_sqlite._Connection, "execute", traced)
    with SQLiteStore(tmp_path / "runs.db") as store:
        seen.clear()
        result = compiled.resume_sync("r", store=store)
    assert result.terminal == "done" and len(result.path) == 7, seen
    claim = seen.index("UPDATE sma_runs SET epoch=?, status=?, u")
    assert seen[claim - 1] == "PRAGMA synchronous=NORMAL", seen
    assert seen[claim + 1:claim + 3] == ["COMMIT", "PRAGMA synchronous=FULL"], seen
    step = next(i for i, x in enumerate(seen) if x.startswith("INSERT INTO sma_steps"))
    modes = [x for x in seen[:step] if x.startswith("PRAGMA synchronous")]
    assert modes == ["PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL"] * 2, seen  # claim, mark-started
    assert "PRAGMA synchronous=NORMAL" not in seen[step:], "the steps commit under FULL"


def test_two_threads_reading_a_resumed_path_first_read_its_earlier_steps_once(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The earlier steps are read on first use: two threads asking at once get them once, in order
    (without a lock both spliced them in, and the path held them twice)."""
    import threading
    import time

    from statemachine_agent.stores import _sqlite

    compiled = crashed(tmp_path / "runs.db", 40)
    real = _sqlite.SQLiteStore.load_steps
    gate = threading.Barrier(2)

    def slow(self: Any, run_id: str, start: int, stop: int) -> Any:
        time.sleep(0.05)  # both threads are inside the first read
        return real(self, run_id, start, stop)

    with SQLiteStore(tmp_path / "runs.db") as store:
        result = compiled.resume_sync("r", store=store)
        monkeypatch.setattr(_sqlite.SQLiteStore, "load_steps", slow)
        seen: list[list[int]] = []

        def read() -> None:
            gate.wait()
            seen.append([s.number for s in result.path])

        threads = [threading.Thread(target=read) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert seen == [list(range(43))] * 2
    assert len(result.path) == 43


@pytest.mark.parametrize("where", ["ops", "delta"])
@pytest.mark.parametrize("number", ["NaN", "Infinity", "-1e999", "1e400"])
def test_a_resealed_tail_row_holding_a_number_no_float_can_hold_is_refused(tmp_path: Path, where: str,
                                                                          number: str) -> None:
    """A step row after the snapshot, re-sealed (its checksum valid) with NaN or an out-of-range number
    in its untyped delta or operations: the resume refuses the file naming the row, as a full load does
    (pydantic-core's fast reader would take them as NaN or infinity)."""
    import json

    from statemachine_agent.errors import StoreCorrupted
    from statemachine_agent.stores._sqlite import _row_crc

    path = tmp_path / "runs.db"
    compiled = crashed(path, 30)
    conn = sqlite3.connect(path)
    try:
        number_row = conn.execute("SELECT MAX(number) FROM sma_steps WHERE run_id='r'").fetchone()[0]
        (text,) = conn.execute("SELECT record FROM sma_steps WHERE run_id='r' AND number=?", (number_row,)).fetchone()
        record = json.loads(text)
        assert record["ops"], "the last step appended: its history is stored as operations"
        if where == "ops":
            record["ops"]["history"][0][1]["content"] = "TOKEN"
        else:
            record["delta"]["n"] = "TOKEN"
        new = json.dumps(record).replace('"TOKEN"', number)
        conn.execute("UPDATE sma_steps SET record=?, crc=? WHERE run_id='r' AND number=?",
                     (new, _row_crc("step", "r", number_row, new), number_row))
        conn.commit()
    finally:
        conn.close()
    with SQLiteStore(path) as store, pytest.raises(StoreCorrupted, match=f"step {number_row}"):
        compiled.resume_sync("r", store=store)
