"""What a store holds, as pydantic models: everything loaded from a store is validated by them.

JSON only: no pickle, no class paths, nothing a database row can use to run code. The writer builds
plain dicts of the same shape (cheaper than building models on every step); the conformance suite
checks that they round-trip through these models.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = ["SCHEMA_VERSION", "CallRecord", "CallStatus", "Counters", "InboxRecord", "RunRecord", "RunStatus",
           "StepRecord", "StoredRun", "WaitRecord"]

SCHEMA_VERSION = 1
"""The version of the stored layout; a store migrates older files on open and refuses newer ones."""


class RunStatus(enum.StrEnum):
    """Where a stored run is."""

    RUNNING = "running"
    """Started and not ended: a worker runs it, or it crashed and waits to be resumed."""
    WAITING = "waiting"
    """In a wait state, committed: continues when its event is delivered or its timeout passes."""
    DONE = "done"
    """Ended in a terminal state."""


class CallStatus(enum.StrEnum):
    """Where a journaled tool call is."""

    INTENT = "intent"
    """About to run (``at_most_once`` tools only): committed before the tool runs."""
    DONE = "done"
    """Completed: its result is recorded and returned instead of running it again."""
    FAILED = "failed"
    """Failed for good; an ``at_most_once`` call that failed is never run again."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Counters(_Record):
    """The run's budgets, persisted so a resumed run stays within the checker's bound."""

    actions_run: int = Field(0, ge=0)
    visits: dict[str, int] = {}
    """Visits per state name."""
    traversals: dict[str, int] = {}
    """Traversals per transition name (only those taken)."""


class WaitRecord(_Record):
    """A run committed in a wait state."""

    state: str
    event: str
    deadline: float | None = None
    """Wall-clock time (seconds since the epoch) when the timeout transition is taken."""


class RunRecord(_Record):
    """One run: where it is, its budgets and how it ended."""

    run_id: str = Field(min_length=1)
    workflow: str
    fingerprint: str
    """A hash of the workflow's declaration; resuming under another one is checked."""
    status: RunStatus
    state: str
    next_step: int = Field(ge=0)
    """The number of committed steps, which is the number of the next step."""
    epoch: int = Field(ge=1)
    """Raised by every claim; a commit carrying an older epoch is refused (fencing)."""
    counters: Counters
    written: list[str]
    """Fields known written (the checker's unset-read analysis resumes from them)."""
    initial_written: list[str] = []
    max_steps: int = Field(ge=1)
    restarts: int = Field(0, ge=0)
    """How many times the run was resumed at ``next_step`` after its holder had started that step."""
    started: bool = True
    """Whether the run's holder started its next step: false from a claim until the claimer's
    ``mark_started``, so a claim superseded before it did anything counts no restart."""
    created_at: float
    updated_at: float
    terminal: str | None = None
    outcome: str | None = None
    reason: str | None = None
    parent: str | None = None
    """The run this one was forked from."""
    parent_step: int | None = None
    wait: WaitRecord | None = None


class StepRecord(_Record):
    """One committed step, with the delta of the context it wrote."""

    number: int = Field(ge=0)
    state: str
    target: str
    transition: str
    kind: str
    started_at: float
    duration: float
    error: str | None = None
    """``Type: message`` of the exception the step raised, if any."""
    error_type: str | None = None
    rejected: list[str] = []
    ran: bool = True
    writes: list[str] = []
    delta: dict[str, JsonValue] = {}
    """The JSON of each field the step wrote (a subset of its declared writes)."""
    unset: list[str] = []
    """Fields the step set back to UNSET."""
    model_calls: list[dict[str, JsonValue]] = []
    """The step's model calls (``ModelCall.to_dict()``): what it spent, kept for the run's budgets."""


class CallRecord(_Record):
    """One tool call in the journal, keyed by (run, step, call index)."""

    step: int = Field(ge=0)
    call: int = Field(ge=0)
    tool: str
    effect: str
    status: CallStatus
    key: str
    arguments: JsonValue = None
    result: JsonValue = None
    error: str | None = None
    at: float = 0.0


class InboxRecord(_Record):
    """An event delivered to a run; consumed exactly once, by the step that reads it."""

    seq: int = Field(ge=1)
    event: str
    payload: JsonValue = None
    at: float
    consumed_step: int | None = None


class StoredRun(_Record):
    """A run as loaded from a store: its record, path, journal and inbox, and the context
    rebuilt at ``run.next_step`` (or at the step asked for)."""

    run: RunRecord
    steps: list[StepRecord]
    calls: list[CallRecord]
    inbox: list[InboxRecord]
    context: dict[str, Any]
    """The context's JSON, before step ``at_step`` (default: the next step)."""
    at_step: int
