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
    assert "2 waiting run(s) can go on now" in err
    assert "runs wake MODULE:OBJECT" in err


SECRET_FLOW = textwrap.dedent('''
    from pydantic import BaseModel, SecretStr
    from statemachine_agent import UNSET, Context, Workflow

    class Go(BaseModel):
        ok: bool

    class Deploy(Context):
        token: SecretStr
        go: Go = UNSET
        length: int = 0

    wf = Workflow("secretflow", Deploy)
    wf.wait("confirm", event="go", payload=Go, writes=["go"], initial=True)

    @wf.state(reads=["token"], writes=["length"])
    def push(ctx: Deploy) -> None:
        ctx.length = len(ctx.token.get_secret_value())

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("confirm", "push")
    wf.transition("push", "done")
    flow = wf.compile()
''')

CANARY = "tok-CANARY-5f1e"


def test_runs_holding_secrets_continue_from_the_command_line_with_secrets_env(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from pydantic import SecretStr

    from statemachine_agent.secrets import FernetSecrets

    (tmp_path / "secretflow.py").write_text(SECRET_FLOW)
    monkeypatch.syspath_prepend(str(tmp_path))
    import secretflow  # type: ignore[import-not-found]

    monkeypatch.setenv("DEPLOY_KEY", FernetSecrets.generate_key())
    db = tmp_path / "runs.db"
    with SQLiteStore(db, secrets=FernetSecrets.from_env("DEPLOY_KEY")) as store:
        paused = secretflow.flow.run_sync(secretflow.Deploy(token=SecretStr(CANARY)), store=store, run_id="d")
        assert paused.outcome is Outcome.WAITING
    argv = ["runs", "deliver", "secretflow:flow", "d", "go", "--payload", '{"ok": true}', "--store", str(db)]
    assert main(argv) == 2  # no key given: refused before the event is committed, saying what to pass
    err = capsys.readouterr().err
    assert "--secrets-env NAME" in err
    assert len(err.strip().splitlines()) == 1
    assert main([*argv, "--secrets-env", "NO_SUCH_VARIABLE"]) == 2
    assert "NO_SUCH_VARIABLE" in capsys.readouterr().err
    assert main([*argv, "--secrets-env", "DEPLOY_KEY", "--json"]) == 0
    out = capsys.readouterr().out
    assert CANARY not in out
    with SQLiteStore(db, secrets=FernetSecrets.from_env("DEPLOY_KEY")) as store:
        stored = store.load("d").result()
        assert stored.run.terminal == "done"
        assert stored.context["length"] == len(CANARY)
        assert sum(e.consumed_step is not None for e in stored.inbox) == 1
    for suffix in ("", "-wal"):
        f = Path(f"{db}{suffix}")
        assert not f.exists() or CANARY.encode() not in f.read_bytes()
