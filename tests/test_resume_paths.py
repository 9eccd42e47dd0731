"""The paths into a stored run after the compatibility check: what the claim finds is what the run
continues with."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import resume_examples as ex

from statemachine_agent import FakeClock, Outcome
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
