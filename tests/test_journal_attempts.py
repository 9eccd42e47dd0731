"""A journaled tool call keeps how many attempts it took and what each failed one raised, so a
stored run shows its retries (the run explorer's tool calls, `runs show`). A call that took one
attempt is written as before: its row has neither key, so a store reads the same to an older release."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine_agent import Context, Workflow
from statemachine_agent.errors import EffectOutcomeUnknown, ToolFailed
from statemachine_agent.stores import SQLiteStore
from statemachine_agent.tools import Retry, Tools


class Job(Context):
    failures: int = 0
    result: str | None = None


def flaky_flow(effect: str, attempts: int) -> Workflow[Job]:
    wf = Workflow("flaky", Job)
    seen: dict[str, int] = {}

    @wf.tool(effect=effect, retry=Retry(attempts=attempts, backoff=0.0))
    def fetch(failures: int, run: str, idempotency_key: str = "") -> str:
        seen[run] = seen.get(run, 0) + 1
        if seen[run] <= failures:
            raise ConnectionError(f"dropped request {seen[run]}")
        return "data"

    @wf.state(initial=True, reads=["failures"], writes=["result"], tools=["fetch"])
    async def call(ctx: Job, tools: Tools) -> None:
        ctx.result = await tools.call("fetch", failures=ctx.failures, run=str(id(ctx)))

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition(call, "done")
    wf.on_error(call, ToolFailed, "failed")
    if effect == "at_most_once":
        wf.on_error(call, EffectOutcomeUnknown, "failed")
    return wf


def _rows(path: Path) -> list[dict[str, object]]:
    with sqlite3.connect(path) as db:
        return [json.loads(r[0]) for r in db.execute("SELECT record FROM sma_journal ORDER BY step, call")]


@settings(max_examples=12, deadline=None)
@given(failures=st.integers(0, 4), effect=st.sampled_from(["read", "idempotent", "at_most_once"]))
def test_a_call_keeps_its_attempts_and_failures(tmp_path_factory: object, failures: int, effect: str) -> None:
    path = tmp_path_factory.mktemp("j") / "runs.db"  # type: ignore[attr-defined]
    compiled = flaky_flow(effect, attempts=3).compile()
    with SQLiteStore(path) as store:
        result = compiled.run_sync(Job(failures=failures), store=store, run_id="r")
        calls = store.load("r").result().calls
    assert result.terminal == ("done" if failures < 3 else "failed")
    if effect == "read" and failures >= 3:
        assert calls == []  # a read that failed is not journaled: a resume reads again
        return
    (call,) = calls
    made = min(failures + 1, 3)
    assert call.attempts == made
    assert call.failures == [f"ConnectionError: dropped request {n}" for n in range(1, min(failures, 3) + 1)]
    assert call.status == ("done" if failures < 3 else "failed")
    (row,) = [r for r in _rows(path) if r["status"] == call.status]
    assert ("attempts" in row) == (made > 1)  # one attempt: the row is written as before


def test_failed_attempts_are_described_briefly_and_at_most_twenty(tmp_path: Path) -> None:
    compiled = flaky_flow("idempotent", attempts=30).compile()
    with SQLiteStore(tmp_path / "runs.db") as store:
        compiled.run_sync(Job(failures=25), store=store, run_id="r")
        (call,) = store.load("r").result().calls
    assert call.attempts == 26
    assert len(call.failures) == 20
    assert call.failures[0] == "ConnectionError: dropped request 1"


def test_runs_show_prints_a_calls_attempts(tmp_path: Path, capsys: object) -> None:
    from statemachine_agent.cli import main

    path = tmp_path / "runs.db"
    with SQLiteStore(path) as store:
        flaky_flow("idempotent", attempts=3).compile().run_sync(Job(failures=2), store=store, run_id="r")
    assert main(["runs", "show", "r", "--store", str(path)]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    (line,) = [x for x in out.splitlines() if " fetch " in x]
    assert "after 3 attempts (ConnectionError: dropped request 1; ConnectionError: dropped request 2)" in line
