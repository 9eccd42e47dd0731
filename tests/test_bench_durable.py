"""benchmarks/bench_durable.py's own side of the appending chat agent still runs: in memory, on a
SQLiteStore, and crashed then resumed the way section 9 times it (so the benchmark never rots).
The peers (LangGraph, Burr) live in .venv-bench only and are not exercised here."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _peers
import bench_durable as bench

from statemachine_agent.stores import RunStatus, SQLiteStore


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=0, max_value=6), st.integers(min_value=1, max_value=6))
def test_the_chat_agent_appends_one_message_per_step_in_memory(start: int, steps: int) -> None:
    """Each step appends the next message to the history it was given, in place; nothing else changes."""
    history = bench.make_history(start)
    result = bench.ours_workflow(steps, workload=_peers.Workload.APPEND).run_sync(bench.Ctx(history=history))
    assert result.terminal == "done"
    assert result.context.counter == steps
    assert result.context.history == history + [_peers.message(i) for i in range(1, steps + 1)]
    assert len(history) == start  # the caller's list is not the one appended to


@given(st.integers(min_value=0, max_value=10_000))
def test_an_appended_message_is_a_chat_message_of_100_to_300_characters(i: int) -> None:
    m = _peers.message(i)
    assert set(m) == {"role", "content"} and m["role"] in ("user", "assistant")
    assert 100 <= len(m["content"]) <= 300


def test_the_chat_agent_commits_every_step_to_a_store(tmp_path: Path) -> None:
    """A run on a SQLiteStore ends with every message; section 8's measured run sees bytes written and kept."""
    ours = bench.Ours(str(tmp_path / "a.db"), 4, workload=_peers.Workload.APPEND)
    try:
        run_id = "chat-1"
        ours.compiled.run_sync(bench.Ctx(history=bench.make_history(2)), store=ours.store, run_id=run_id)
        stored = ours.store.load(run_id).result()
    finally:
        ours.close()
    assert stored.run.next_step == 4
    written, kept = bench.measured_run("ours", str(tmp_path / "b.db"), 3, bench.make_history(5))
    assert written > 0 and kept >= 0


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([0, 3]), st.integers(min_value=1, max_value=5))
def test_a_crashed_run_resumes_for_its_last_step_as_section_9_times_it(tmp_path: Path, history: int,
                                                                      after: int) -> None:
    """The prepared run holds exactly ``after`` committed steps; resuming a copy runs the one left and
    ends with every message (resume_once raises otherwise)."""
    dirs = bench.Dirs(tempfile.mkdtemp(dir=tmp_path))
    cell = bench.prepare_resume("ours", dirs.db("template"), bench.make_history(history), after)
    with SQLiteStore(cell.template) as store:
        (run,) = store.list_runs().result()
    assert (run.status, run.next_step) == (RunStatus.RUNNING, after)
    bench.resume_once(cell, dirs, sync=False)
    bench.resume_once(cell, dirs, sync=False)  # the template is untouched: it resumes again
    assert len(cell.seconds) == 2
