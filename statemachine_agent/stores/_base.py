"""The store interface: what a durable run needs of a database.

Every method returns a ``concurrent.futures.Future``: the runner awaits it
(``asyncio.wrap_future``) without blocking its event loop, and synchronous code (the CLI,
``compiled.runs``) calls ``.result()``. A store does its writes in program order on one
connection; :class:`~.SQLiteStore` is the reference, and
:mod:`statemachine_agent.stores.conformance` is the suite any store must pass.
"""

from __future__ import annotations

import abc
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ._records import CallRow, CommitRequest, InboxRecord, RunRecord, RunRow, RunStatus, StepRecord, StoredRun

if TYPE_CHECKING:
    from ..secrets import SecretCodec

__all__ = ["Store"]


class Store(abc.ABC):
    """Where durable runs are committed. Records are JSON; the writer passes the rows of
    :mod:`~._records` (typed plain dicts: :class:`~._records.RunRow`, :class:`~._records.CommitRequest`,
    :class:`~._records.CallRow`, each made by its builder), and everything read back is validated by
    that module's models."""

    snapshot_every: int | None = None
    """``None`` (the default): a full snapshot of the context once the steps since the last one
    stored half as many items as it holds (a list's or dict's length, 1 per other field), or after
    500 steps, so a step stores what it changed plus, on average, at most three times as much again
    (two when steps overwrite, three when the context only grows), whatever the context holds, and a
    load replays at most about half a context's worth of steps. A number:
    a snapshot every this many steps exactly, and at waits and at the end.
    Between snapshots a step stores only what it wrote (what it changed in place as operations)."""

    snapshots_share_items: bool = False
    """Whether a snapshot stores only the parts of the context it does not share with the run's earlier
    snapshots (:class:`~.SQLiteStore`: lists and dicts of 32 items or more, in segments). Then, with
    ``snapshot_every=None``, a snapshot is also taken after ``max(96, items // 24)`` steps (at most 500),
    ``items`` being what the last one held, so a load reads the snapshot's segments in bulk and few step
    rows after them, while a step of an agent that appends to its history still stores about what it
    appended."""

    secrets: SecretCodec | None = None
    """What encrypts the context's secret fields (``SecretStr``, ``SecretBytes``) for this store, and
    decrypts them back; without one, a run whose context holds a secret is refused at its start."""

    @abc.abstractmethod
    def create(self, run: RunRow, context: dict[str, Any]) -> Future[None]:
        """Insert a new run (``RunExists`` if its id is taken) with its starting context."""

    @abc.abstractmethod
    def claim(self, run_id: str) -> Future[StoredRun]:
        """Take the run over: raise its epoch (older epochs can no longer commit) and load it.

        A run still running counts one more restart of its next step; a finished run is loaded
        without a claim. ``RunNotFound`` if there is no such run.
        """

    @abc.abstractmethod
    def claim_waiting(self, run_id: str) -> Future[StoredRun | None]:
        """Claim the run only if it is waiting (status ``waiting``), setting it running: what a
        delivery or a wake-up does, so it never takes a run from a live worker. ``None`` when the
        run is not waiting (it runs elsewhere, crashed, or ended)."""

    def claim_tail(self, run_id: str) -> Future[StoredRun]:
        """:meth:`claim`, for a caller that loaded the run already (:meth:`load_tail`): only the
        claimed record, the journal rows of the next step and the events not consumed are needed
        (``StoredRun.first_step`` says which steps it holds; a store may load more, never less).
        This default is :meth:`claim`."""
        return self.claim(run_id)

    def claim_waiting_tail(self, run_id: str) -> Future[StoredRun | None]:
        """:meth:`claim_waiting`, needing only what :meth:`claim_tail` needs. This default is
        :meth:`claim_waiting`."""
        return self.claim_waiting(run_id)

    @abc.abstractmethod
    def mark_started(self, run_id: str, epoch: int) -> Future[None]:
        """Record that the holder of ``epoch`` started the run's next step: from then on a claim
        counts a restart of it. ``RunFenced`` if another worker claimed the run since."""

    @abc.abstractmethod
    def commit(self, commit: CommitRequest) -> Future[list[InboxRecord]]:
        """Commit one step, atomically: its row, the run's new record, an optional snapshot, the
        journal rows riding along and an inbox event consumed. ``RunFenced`` when the run's epoch
        or next step is no longer the one given (then nothing is written).

        A step that enters a wait commits the run as waiting (status ``waiting``, ``wait`` set, a
        snapshot): in the same transaction the store reads the inbox, and if an unconsumed event
        the wait takes is there, stores the run as running instead and returns those events (the
        worker goes on with them). Otherwise it returns ``[]``."""

    @abc.abstractmethod
    def suspend(self, run: RunRow, epoch: int, snapshot: dict[str, Any]) -> Future[list[InboxRecord]]:
        """Commit the run as waiting (its record, with ``wait`` set, and a snapshot at its next
        step); fenced like :meth:`commit`. Like it, reads the inbox in the same transaction: when
        the event waited for is there, nothing is written and the events are returned."""

    @abc.abstractmethod
    def record_call(self, run_id: str, epoch: int, call: CallRow) -> Future[None]:
        """Commit one journal row (an intent, or an outcome) now; fenced like :meth:`commit`."""

    @abc.abstractmethod
    def load(self, run_id: str, *, at_step: int | None = None) -> Future[StoredRun]:
        """The run as stored, its context rebuilt before step ``at_step`` (default: the next)."""

    def load_tail(self, run_id: str) -> Future[StoredRun]:
        """What continuing the run needs: its record, its context, the steps from the snapshot the
        context was rebuilt from on (``first_step``), the journal rows of its next step and the events
        not consumed. Its cost grows with what changed since the last snapshot, not with the run's
        length. This default loads the whole run (a store should read only the tail)."""
        return self.load(run_id)

    def load_steps(self, run_id: str, start: int, stop: int) -> Future[list[StepRecord]]:
        """The run's committed steps ``start`` to ``stop - 1``. This default loads the whole run."""
        future: Future[list[StepRecord]] = Future()
        try:
            future.set_result(self.load(run_id).result().steps[start:stop])
        except BaseException as exc:
            future.set_exception(exc)
        return future

    @abc.abstractmethod
    def list_runs(self, workflow: str | None = None) -> Future[list[RunRecord]]:
        """Every run (of ``workflow``), newest first."""

    def due_runs(self, workflow: str, now: float) -> Future[list[str]]:
        """The ids of ``workflow``'s waiting runs that can go on at ``now`` (seconds since the epoch):
        their wait's deadline passed, or the event they wait for is in their inbox. Oldest first.

        This default loads every waiting run; a store should answer it with one query."""
        future: Future[list[str]] = Future()
        try:
            due = []
            for rec in self.list_runs(workflow).result():
                wait = rec.wait
                if rec.status is not RunStatus.WAITING or wait is None:
                    continue
                timed_out = wait.deadline is not None and now >= wait.deadline
                if timed_out or any(e.event == wait.event and e.consumed_step is None
                                    for e in self.load(rec.run_id).result().inbox):
                    due.append((rec.updated_at, rec.run_id))
            future.set_result([run_id for _, run_id in sorted(due)])
        except BaseException as exc:
            future.set_exception(exc)
        return future

    @abc.abstractmethod
    def deliver(self, run_id: str, event: str, payload: Any) -> Future[int]:
        """Put an event in the run's inbox (committed); its sequence number."""

    @abc.abstractmethod
    def fork(self, source: str, at_step: int, run: RunRow, context: dict[str, Any]) -> Future[None]:
        """Create ``run`` from ``source`` before step ``at_step``: the steps and journal rows before
        that point are copied to it, and ``context`` is its snapshot there."""

    @abc.abstractmethod
    def close(self) -> None:
        """Finish what was submitted and release the database."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
