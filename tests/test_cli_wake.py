"""`statemachine-agent runs wake`: waiting runs past their deadline continue without a resume."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from statemachine_agent import FakeClock, Outcome
from statemachine_agent.cli import main
from statemachine_agent.stores import SQLiteStore

FLOW = textwrap.dedent('''
    from pydantic import BaseModel
    from statemachine_agent import Context, Workflow

    class Approval(BaseModel):
        ok: bool

    class Job(Context):
        approval: Approval | None = None

    wf = Workflow("wakeflow", Job)

    @wf.state(initial=True, reads=[], writes=[])
    def work(ctx: Job) -> None:
        return None

    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], timeout=60.0,
            on_timeout="expired")
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.terminal("expired", outcome="failure")
    wf.transition("work", "approve")
    wf.transition("approve", "done")
    flow = wf.compile()
''')


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "wakeflow.py").write_text(FLOW)
    monkeypatch.syspath_prepend(str(tmp_path))
    import wakeflow  # type: ignore[import-not-found]

    path = tmp_path / "runs.db"
    with SQLiteStore(path) as store:
        # A FakeClock's wall time is near the epoch: these deadlines passed long ago.
        for run_id in ("a", "b"):
            result = wakeflow.flow.run_sync(wakeflow.Job(), store=store, run_id=run_id, clock=FakeClock())
            assert result.outcome is Outcome.WAITING
        # A deadline an hour from now has not passed.
        late = FakeClock()
        late.advance(__import__("time").time() + 3600)
        assert wakeflow.flow.run_sync(wakeflow.Job(), store=store, run_id="c", clock=late).outcome is Outcome.WAITING
    return path


def test_wake_continues_the_runs_past_their_deadline_once(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "wake", "wakeflow:flow", "--store", str(db), "--json"]) == 0
    woken = json.loads(capsys.readouterr().out)
    assert sorted((w["run_id"], w["terminal"]) for w in woken) == [("a", "expired"), ("b", "expired")]
    assert main(["runs", "wake", "wakeflow:flow", "--store", str(db)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "0 run(s) continued"
    with SQLiteStore(db) as store:
        status = {r.run_id: str(r.status) for r in store.list_runs().result()}
    assert status == {"a": "done", "b": "done", "c": "waiting"}


def test_wake_without_a_workflow_says_which_runs_are_due(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "wake", "--store", str(db)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "2 waiting run(s) are past their deadline" in err
    assert "runs wake MODULE:OBJECT" in err
