"""JSONL traces (statemachine_agent.traces): written by a hook, read back as RunResult.to_dict()'s
shape, drawn by `diagram --run FILE.jsonl` and replayed by the testing kit."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_otel import Order, Pick, Research, decider, research, waiting

from statemachine_agent import FakeClock
from statemachine_agent.cli import main
from statemachine_agent.stores import MemoryStore
from statemachine_agent.testing import replay
from statemachine_agent.traces import SCHEMA, VERSION, TraceError, TraceWriter, read_trace, runs_of


def traced(compiled: Any, context: Any, path: Path, **options: Any) -> Any:
    with TraceWriter(path) as writer:
        return compiled.run_sync(context, hooks=[writer], **options)


def plain(data: Any) -> Any:
    """``data`` as JSON gives it back."""
    return json.loads(json.dumps(data))


def test_a_finished_runs_trace_reads_back_as_its_result_to_dict(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    result = traced(research(fail_times=1), Research(question="loops"), path, clock=FakeClock())
    records = read_trace(path)
    assert {r["schema"] for r in records} == {SCHEMA} and {r["version"] for r in records} == {VERSION}
    assert [r["type"] for r in records] == [
        "RunStarted", "StepStarted", "ToolCallStarted", "ToolAttemptFailed", "ToolCallFinished", "TransitionTaken",
        "StepStarted", "ModelCalled", "TransitionTaken", "RunFinished"]
    run = runs_of(records)[result.run_id]
    assert {k: v for k, v in run.items() if k not in ("start", "decisions")} == plain(result.to_dict())
    assert run["start"] == {"question": "loops"}


def test_a_waiting_run_is_built_from_its_steps_and_joins_its_next_attempt(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    compiled = waiting()
    with MemoryStore() as store, TraceWriter(path) as writer:
        paused = compiled.run_sync(Order(), store=store, run_id="o-1", hooks=[writer])
        writer.close()  # the with block closes it again: a no-op
        run = runs_of(read_trace(path))["o-1"]
        expected = plain(paused.to_dict())
        assert {k: run[k] for k in ("workflow", "run_id", "terminal", "outcome", "steps", "reason", "waiting")} == {
            k: expected[k] for k in ("workflow", "run_id", "terminal", "outcome", "steps", "reason", "waiting")}
        assert [(s["state"], s["target"], s["transition"], s["kind"]) for s in run["path"]] == [
            (s["state"], s["target"], s["transition"], s["kind"]) for s in expected["path"]]
        with TraceWriter(path) as more:  # appended: the run's next attempt
            done = compiled.deliver_sync("o-1", "approval", {"ok": True}, store=store, hooks=[more])
    assert done is not None
    run = runs_of(read_trace(path))["o-1"]
    assert {k: v for k, v in run.items() if k not in ("start", "decisions")} == plain(done.to_dict())


@settings(max_examples=30, deadline=None)
@given(answers=st.lists(st.one_of(st.sampled_from(["go_left", "go_right", "nope"]), st.integers(), st.none()),
                        min_size=0, max_size=2))
def test_a_decisions_answers_are_traced_in_order_and_replay_follows_them(answers: list[Any]) -> None:
    given_answers = [*answers, "go_right"]
    feed = iter(given_answers)
    out = io.StringIO()
    writer = TraceWriter(out)
    result = decider().run_sync(Pick(), policy=lambda d: next(feed), hooks=[writer])
    run = runs_of(read_trace(out.getvalue().splitlines()))[result.run_id]
    taken = next(i for i, a in enumerate(given_answers) if a in ("go_left", "go_right"))
    assert run["decisions"] == given_answers[:taken + 1]
    assert {k: v for k, v in run.items() if k not in ("start", "decisions")} == plain(result.to_dict())


def test_replay_runs_a_trace_again_and_refuses_a_path_that_leaves_it(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    answers = iter(["sideways", "go_left"])
    result = traced(decider(), Pick(n=3), path, policy=lambda d: next(answers))
    again = replay(decider(), path)
    assert [(s.state, s.transition) for s in again.path] == [(s.state, s.transition) for s in result.path]
    assert again.context.out == "left"
    # The same trace, its answer changed: the replay goes right, and says so.
    lines = path.read_text(encoding="utf-8").splitlines()
    changed = [line.replace('"go_left"', '"go_right"') if '"DecisionOffered"' not in line and
               '"TransitionTaken"' not in line else line for line in lines]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(changed) + "\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="where the trace took"):
        replay(decider(), bad)


@pytest.mark.parametrize(("line", "message"), [
    ("{", "line 2 is not JSON"),
    ('{"schema": "other"}', "not a trace record"),
    (json.dumps({"schema": SCHEMA, "version": VERSION + 1, "type": "RunStarted"}), "knows versions 1 to"),
    (json.dumps({"schema": SCHEMA, "version": 1, "type": "Boom", "run_id": "r", "workflow": "w"}),
     "unknown event type 'Boom'"),
    (json.dumps({"schema": SCHEMA, "version": 1, "type": "RunWaiting", "run_id": "r", "workflow": "w"}),
     "RunWaiting lacks"),
])
def test_a_bad_line_is_named_with_what_is_wrong(line: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        read_trace(["", line])


def test_diagram_draws_a_traced_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tracedflow.py").write_text(textwrap.dedent("""
        from test_otel import decider
        workflow = decider()
    """), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    path = tmp_path / "run.jsonl"
    answers = iter(["go_right"])
    traced(decider(), Pick(), path, policy=lambda d: next(answers))
    out = tmp_path / "run.dot"
    assert main(["diagram", "tracedflow:workflow", "-o", str(out), "--run", str(path)]) == 0
    dot = out.read_text(encoding="utf-8")
    from_json = tmp_path / "result.json"
    result = runs_of(read_trace(path))
    from_json.write_text(json.dumps(next(iter(result.values()))), encoding="utf-8")
    out2 = tmp_path / "run2.dot"
    # The trace draws as the same run written as RunResult.to_dict() JSON does.
    assert main(["diagram", "tracedflow:workflow", "-o", str(out2), "--run", str(from_json)]) == 0
    assert dot == out2.read_text(encoding="utf-8")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    capsys.readouterr()
    assert main(["diagram", "tracedflow:workflow", "-o", str(out), "--run", str(empty)]) == 2
    assert "holds 0 runs of workflow 'pick'" in capsys.readouterr().err
