"""The paths into a stored run after the compatibility check: what the claim finds is what the run
continues with."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

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
