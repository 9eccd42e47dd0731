"""What a store holds, as pydantic models: everything loaded from a store is validated by them.

JSON only: no pickle, no class paths, nothing a database row can use to run code. The writer builds
plain dicts of the same shape (cheaper than building models on every step); the conformance suite
checks that they round-trip through these models.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

__all__ = ["SCHEMA_VERSION", "CallRecord", "CallStatus", "Counters", "InboxRecord", "RunRecord", "RunStatus",
           "StepRecord", "StoredRun", "WaitRecord"]

SCHEMA_VERSION = 2
"""The version of the stored layout; a store migrates older files on open and refuses newer ones.
(2: every row's checksum covers its key, and a run's row counts its journal and inbox rows.)"""

_MAX_INT = 2**53
"""The largest whole number a record may hold (a step, epoch, count or sequence number): exact in JSON
everywhere, and far from SQLite's 64-bit limit, so ``epoch + 1`` can never overflow."""

Whole = Annotated[int, Field(ge=0, le=_MAX_INT, strict=True)]
"""A count, step or epoch as loaded: an int (not a string, bool or float that pydantic would convert)."""
Time = Annotated[float, Field(allow_inf_nan=False, strict=True)]
"""Seconds (since the epoch, or a duration): a finite number, not a string or bool."""

_MODEL_CALL_COUNTS = ("input_tokens", "output_tokens", "attempt", "http_attempts")
_MODEL_CALL_SECONDS = ("latency", "cost")


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
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Counters(_Record):
    """The run's budgets, persisted so a resumed run stays within the checker's bound."""

    actions_run: Whole = 0
    visits: dict[str, Whole] = {}
    """Visits per state name."""
    traversals: dict[str, Whole] = {}
    """Traversals per transition name (only those taken)."""


class WaitRecord(_Record):
    """A run committed in a wait state."""

    state: str
    event: str
    deadline: Time | None = None
    """Wall-clock time (seconds since the epoch) when the timeout transition is taken."""


class RunRecord(_Record):
    """One run: where it is, its budgets and how it ended."""

    run_id: str = Field(min_length=1)
    workflow: str
    fingerprint: str
    """A hash of the workflow's declaration; resuming under another one is checked."""
    status: RunStatus
    state: str
    next_step: Whole
    """The number of committed steps, which is the number of the next step."""
    epoch: Annotated[int, Field(ge=1, le=_MAX_INT, strict=True)]
    """Raised by every claim; a commit carrying an older epoch is refused (fencing)."""
    counters: Counters
    written: list[str]
    """Fields known written (the checker's unset-read analysis resumes from them)."""
    initial_written: list[str] = []
    max_steps: Annotated[int, Field(ge=1, le=_MAX_INT, strict=True)]
    restarts: Whole = 0
    """How many times the run was resumed at ``next_step`` after its holder had started that step."""
    started: bool = True
    """Whether the run's holder started its next step: false from a claim until the claimer's
    ``mark_started``, so a claim superseded before it did anything counts no restart."""
    created_at: Time
    updated_at: Time
    terminal: str | None = None
    outcome: str | None = None
    reason: str | None = None
    parent: str | None = None
    """The run this one was forked from."""
    parent_step: Whole | None = None
    wait: WaitRecord | None = None


class StepRecord(_Record):
    """One committed step, with the delta of the context it wrote."""

    number: Whole
    state: str
    target: str
    transition: str
    kind: str
    started_at: Time
    duration: Time
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

    @field_validator("model_calls")
    @classmethod
    def _spent(cls, calls: list[dict[str, JsonValue]]) -> list[dict[str, JsonValue]]:
        """The numbers the run's budgets add up: whole token counts and finite seconds/costs, >= 0."""
        for i, call in enumerate(calls):
            for name in _MODEL_CALL_COUNTS:
                v = call.get(name, 0)
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _MAX_INT:
                    raise ValueError(f"model call {i}: {name}={v!r} is not a whole number from 0 to 2**53")
            for name in _MODEL_CALL_SECONDS:
                v = call.get(name, 0)
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1e300):
                    raise ValueError(f"model call {i}: {name}={v!r} is not a finite number >= 0")
        return calls


class CallRecord(_Record):
    """One tool call in the journal, keyed by (run, step, call index)."""

    step: Whole
    call: Whole
    tool: str
    effect: str
    status: CallStatus
    key: str
    arguments: JsonValue = None
    result: JsonValue = None
    error: str | None = None
    at: Time = 0.0


class InboxRecord(_Record):
    """An event delivered to a run; consumed exactly once, by the step that reads it."""

    seq: Annotated[int, Field(ge=1, le=_MAX_INT, strict=True)]
    event: str
    payload: JsonValue = None
    at: Time
    consumed_step: Whole | None = None


class StoredRun(_Record):
    """A run as loaded from a store: its record, path, journal and inbox, and the context
    rebuilt at ``run.next_step`` (or at the step asked for)."""

    run: RunRecord
    steps: list[StepRecord]
    calls: list[CallRecord]
    inbox: list[InboxRecord]
    context: dict[str, Any]
    """The context's JSON, before step ``at_step`` (default: the next step)."""
    at_step: Whole
