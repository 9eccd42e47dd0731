"""The SQL store's writer thread (``stores._sqlwriter``): requests run in order, one at a time on the
connection; concurrent runs share commits; a lone run's requests run in the caller's thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field

from statemachine_agent import Context, Workflow
from statemachine_agent.errors import StoreError
from statemachine_agent.stores import SQLiteStore, _sqlwriter
from statemachine_agent.stores._sqldialect import SQLITE


class Chat(Context):
    n: int = 0
    history: list[str] = Field(default_factory=list)


def _chat(steps: int) -> Any:
    wf = Workflow("writer_chat", Chat)

    @wf.state(initial=True, optional_reads=["n"], writes=["n", "history"])
    async def talk(ctx: Chat) -> None:
        await asyncio.sleep(0)
        ctx.n += 1
        ctx.history.append(f"message {ctx.n}")

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("talk", "talk", guard=lambda c: c.n < steps, max_traversals=steps)
    wf.transition("talk", "done", default=True)
    return wf.compile()


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Every batch the writers run: (its size, the thread that ran it)."""
    seen: list[tuple[int, str]] = []
    run_batch = _sqlwriter.Writer._run_batch

    def spy(self: _sqlwriter.Writer, conn: Any, batch: list[Any]) -> None:
        seen.append((len(batch), "writer" if threading.current_thread() is self.thread else "caller"))
        run_batch(self, conn, batch)

    monkeypatch.setattr(_sqlwriter.Writer, "_run_batch", spy)
    return seen


def test_a_lone_runs_commits_run_in_its_own_thread(tmp_path: Path, batches: list[tuple[int, str]]) -> None:
    compiled = _chat(12)
    with SQLiteStore(tmp_path / "lone.db") as store:
        batches.clear()
        result = compiled.run_sync(Chat(), store=store, run_id="lone")
        ran, started = list(batches), store._writer.thread.ident is not None
        stored = store.load("lone").result()  # not a run's request: the thread's
    assert result.terminal == "done" and [s.number for s in stored.steps] == list(range(12))
    assert stored.context["history"] == [f"message {i}" for i in range(1, 13)]
    # Alone on its store, the run never needs the writer thread: it is not even started.
    assert len(ran) >= 12 and all(where == "caller" for _, where in ran)
    assert not started
    assert batches[-1][1] == "writer"


def test_inline_false_sends_every_commit_to_the_writer_thread(tmp_path: Path,
                                                              batches: list[tuple[int, str]]) -> None:
    compiled = _chat(6)
    with SQLiteStore(tmp_path / "threaded.db", inline=False) as store:
        batches.clear()
        result = compiled.run_sync(Chat(), store=store, run_id="lone")
    assert result.terminal == "done"
    assert len(batches) >= 6 and all(where == "writer" for _, where in batches)
    with pytest.raises(TypeError, match="inline="):
        SQLiteStore(tmp_path / "bad.db", inline="yes")  # type: ignore[arg-type]
    assert not (tmp_path / "bad.db").exists()


def test_concurrent_runs_still_share_their_commits(tmp_path: Path, batches: list[tuple[int, str]]) -> None:
    compiled = _chat(8)

    async def many() -> list[Any]:
        return await asyncio.gather(*(compiled.run(Chat(), store=store, run_id=f"r{i}") for i in range(20)))

    with SQLiteStore(tmp_path / "many.db") as store:
        batches.clear()
        results = asyncio.run(many())
        stored = [store.load(f"r{i}").result() for i in range(20)]
    assert all(r.terminal == "done" for r in results)
    assert all(s.context["history"] == [f"message {i}" for i in range(1, 9)] for s in stored)
    assert all([step.number for step in s.steps] == list(range(8)) for s in stored)
    # Group commit is kept: the writer thread ran batches of several runs' commits.
    assert max(size for size, where in batches if where == "writer") > 1
    assert sum(size for size, where in batches if where == "caller") < sum(size for size, _ in batches) / 2


def _writer(path: Path) -> tuple[_sqlwriter.Writer, sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS log (key TEXT, seq INTEGER)")
    writer = _sqlwriter.Writer(conn, SQLITE, name="test writer", readonly=False, translate=lambda e: e,
                               after_commit=[], on_close=lambda: None)
    return writer, conn


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scripts=st.lists(st.lists(st.sampled_from(["a", "b", "c"]), max_size=30), min_size=1, max_size=3))
def test_requests_from_several_threads_run_one_at_a_time_each_threads_in_its_order(
        tmp_path: Path, scripts: list[list[str]]) -> None:
    """Threads submit requests keyed by a run (inline when the key repeats and nothing is queued):
    every request runs exactly once, never while another runs, and each thread's in the order it
    submitted them."""
    path = tmp_path / "threads.db"
    path.unlink(missing_ok=True)
    writer, _ = _writer(path)
    running = [0]
    overlaps: list[int] = []
    start = threading.Barrier(len(scripts))

    def request(key: str, seq: int) -> Any:
        def op(conn: Any) -> int:
            running[0] += 1
            if running[0] != 1:
                overlaps.append(running[0])
            conn.execute("INSERT INTO log VALUES (?, ?)", (key, seq))
            running[0] -= 1
            return seq
        return op

    def thread_main(t: int, script: list[str]) -> None:
        start.wait()
        futures = [writer.submit(request(f"{t}/{key}", i), "closed", key=f"{t}/{key}")
                   for i, key in enumerate(script)]
        assert [f.result(timeout=30) for f in futures] == list(range(len(script)))

    threads = [threading.Thread(target=thread_main, args=(t, s)) for t, s in enumerate(scripts)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    writer.close()
    check = sqlite3.connect(path)
    rows = check.execute("SELECT key, seq FROM log ORDER BY rowid").fetchall()
    check.close()
    assert overlaps == []
    for t, script in enumerate(scripts):
        mine = [seq for key, seq in rows if key.startswith(f"{t}/")]
        assert mine == list(range(len(script)))


def test_an_interrupt_inside_an_inline_request_writes_nothing_and_the_writer_goes_on(tmp_path: Path) -> None:
    writer, _ = _writer(tmp_path / "interrupt.db")

    def insert(conn: Any) -> None:
        conn.execute("INSERT INTO log VALUES ('k', 1)")

    def interrupted(conn: Any) -> None:
        conn.execute("INSERT INTO log VALUES ('k', 2)")
        raise KeyboardInterrupt

    writer.submit(insert, "closed", key="k").result(timeout=10)  # the thread's (a new key)
    first = writer.submit(insert, "closed", key="k")  # the same key, nothing queued: inline
    assert first.done()
    with pytest.raises(KeyboardInterrupt):
        writer.submit(interrupted, "closed", key="k")
    after = writer.submit(lambda conn: conn.execute("SELECT seq FROM log ORDER BY rowid").fetchall(),
                          "closed", key="k").result(timeout=10)
    writer.close()
    assert after == [(1,), (1,)]
    with pytest.raises(StoreError, match="closed"):
        writer.submit(insert, "closed", key="k")
