"""The paths into a stored run after the compatibility check: what the claim finds is what the run
continues with."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import resume_examples as ex
from pydantic import ValidationError

from statemachine_agent import FakeClock, Outcome, ResumeCode
from statemachine_agent.errors import IncompatibleRun
from statemachine_agent.stores import SQLiteStore
from statemachine_agent.stores._records import StoredRun


class DeliverBeforeClaim(SQLiteStore):
    """A store where a delivery commits between a waker's look at a run and its claim (the race a
    real delivery in another process can win)."""

    def claim_waiting(self, run_id: str) -> Future[StoredRun | None]:
        self.deliver(run_id, "approval", {"ok": True}).result()
        return super().claim_waiting(run_id)


def test_an_event_delivered_between_the_look_and_the_claim_is_taken(tmp_path: Path) -> None:
    """wake_due looks at a run past its deadline with an empty inbox; the approval commits before
    its claim: the run takes the approval (documented: an event in the inbox when the run continues
    is taken even if the timeout passed), it does not time out."""
    clock = FakeClock()
    flow = ex.flow(timeout=60.0)
    with DeliverBeforeClaim(tmp_path / "runs.db") as store:
        paused = flow.run_sync(ex.Ticket(), store=store, run_id="t-1", clock=clock)
        assert paused.outcome is Outcome.WAITING
        clock.advance(120.0)
        [result] = flow.wake_due_sync(store, clock=clock)
    assert result.terminal == "done"
    assert result.context.approval is not None


def test_a_fork_under_a_changed_model_is_refused_not_a_raw_validation_error(tmp_path: Path) -> None:
    """A patch validated with a stored context the new model refuses: IncompatibleRun naming the
    stored field (and a patch= of that field fixes it); a bad patch is still pydantic's own error."""
    new = ex.flow(context=ex.Ticket2)
    with SQLiteStore(tmp_path / "runs.db") as store:
        ex.stored("waiting", store)
        before = ex.dump(tmp_path / "runs.db")
        with pytest.raises(IncompatibleRun) as refused:
            new.fork_sync("t-1", at_step=1, patch={"tries": 1}, store=store)
        assert [p.code for p in refused.value.problems] == [ResumeCode.BAD_CONTEXT]
        assert "customer" in str(refused.value)
        with pytest.raises(ValidationError):
            new.fork_sync("t-1", at_step=1, patch={"tries": "many", "customer": "ann"}, store=store)
        assert ex.dump(tmp_path / "runs.db") == before
        result = new.fork_sync("t-1", at_step=1, patch={"customer": "ann"}, store=store, new_run_id="t-2")
    assert result.outcome is Outcome.WAITING and result.context.customer == "ann"  # type: ignore[attr-defined]


class ClaimAfter(SQLiteStore):
    """A store that runs ``before_claim`` (once) just before it claims: another worker's writes
    land between a resume's first look and its claim, deterministically."""

    before_claim: Any = None

    def claim(self, run_id: str) -> Future[StoredRun]:
        hook, self.before_claim = self.before_claim, None
        if hook is not None:
            hook()
        return super().claim(run_id)


def test_a_resume_sees_the_intent_another_worker_wrote_before_its_claim(tmp_path: Path) -> None:
    """Worker B looks at a crashed run (no journal row yet); worker A claims it, writes the
    at_most_once intent, pays and dies; then B claims: B must answer the call from A's intent (the
    unknown-outcome route), never pay again (G4; it paid twice when B kept the rows of its look)."""
    ex.PAID.clear()
    flow = ex.flow()
    db = tmp_path / "runs.db"
    with SQLiteStore(db) as store:
        ex.stored("waiting", store)
        ex.CRASH.add("charge")
        with pytest.raises(ex.Crash):
            flow.deliver_sync("t-1", "approval", {"ok": True}, store=store)
    assert ex.PAID == []

    def a_pays_and_dies() -> None:
        def work() -> None:
            with SQLiteStore(db) as store_a:
                ex.CRASH.add("pay")
                with pytest.raises(ex.Crash):
                    flow.resume_sync("t-1", store=store_a)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()

    with ClaimAfter(db) as store_b:
        store_b.before_claim = a_pays_and_dies
        result = flow.resume_sync("t-1", store=store_b)
    assert ex.PAID == ["pay 3"]
    assert result.terminal == "unknown"


@pytest.mark.parametrize("given", [None, 40])
def test_a_resumed_run_keeps_a_budget_its_caller_gave_and_follows_a_grown_bound_otherwise(
        tmp_path: Path, given: int | None) -> None:
    """A caller's max_steps= is the run's for good, whatever version resumes it; a run on the
    workflow's worst-case bound gets the larger of the bound it was stored with and the new one
    (a state added on its path must not fail it on the old bound)."""
    v1, v2 = ex.flow(), ex.flow(retries=9)
    assert v2.max_steps > v1.max_steps
    with SQLiteStore(tmp_path / "runs.db") as store:
        options = {} if given is None else {"max_steps": given}
        v1.run_sync(ex.Ticket(), store=store, run_id="t-1", **options)  # waits in approve
        record = store.load("t-1").result().run
        assert record.max_steps == (given or v1.max_steps) and record.max_steps_given == (given is not None or None)
        run = asyncio.run(v2.reopen("t-1", store=store))
        assert run.max_steps == (given if given is not None else v2.max_steps)
        assert run.config.max_steps_given is (given is not None)
