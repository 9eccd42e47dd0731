"""What a store holds: the rows written (TypedDicts, each made by one builder) and the pydantic
models that validate everything loaded back.

JSON only: no pickle, no class paths, nothing a database row can use to run code. The writer builds
the rows as plain dicts (:class:`RunRow`, :class:`StepRow`, :class:`CallRow`, and the
:class:`CommitRequest` of a step), cheaper than building models on every step, always through
:func:`run_row`, :func:`step_row`, :func:`call_row` and :func:`commit_request`; the conformance suite
checks that they round-trip through the models (:class:`RunRecord`, :class:`StepRecord`,
:class:`CallRecord`, :class:`InboxRecord`). Kinds are the library's enums (``StepKind``, ``Effect``,
``Outcome``, ``RunStatus``, ``CallStatus``), stored as their string values.
"""

from __future__ import annotations

import copy
import enum
import json
from typing import Annotated, Any, NotRequired, TypedDict

import msgspec
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator
from pydantic_core import from_json

from .. import _ops
from .._tooldef import Effect
from ..errors import StoreCorrupted
from ..result import StepKind
from ..spec import Outcome

__all__ = [
    "SCHEMA_VERSION",
    "CallRecord",
    "CallRow",
    "CallStatus",
    "CommitRequest",
    "Counters",
    "CountersRow",
    "InboxRecord",
    "RunRecord",
    "RunRow",
    "RunStatus",
    "StepRecord",
    "StepRow",
    "StoredRun",
    "WaitRecord",
    "WaitRow",
    "call_row",
    "commit_request",
    "fast_step",
    "rebuild",
    "run_row",
    "step_row",
]

SCHEMA_VERSION = 4
"""The version of the stored layout; a store migrates older files on open and refuses newer ones.
(2: every row's checksum covers its key, and a run's row counts its journal and inbox rows.
3: a step may store a field's changes in place as operations, ``ops``, instead of the field whole.
4: a snapshot may keep its big lists and dicts as segments shared with earlier snapshots, ``._segments``.)"""

_MAX_INT = 2**53
"""The largest whole number a record may hold (a step, epoch, count or sequence number): exact in JSON
everywhere, and far from SQLite's 64-bit limit, so ``epoch + 1`` can never overflow."""

Whole = Annotated[int, Field(ge=0, le=_MAX_INT, strict=True)]
"""A count, step or epoch as loaded: an int (not a string, bool or float that pydantic would convert)."""
Time = Annotated[float, Field(allow_inf_nan=False, strict=True)]
"""Seconds (since the epoch, or a duration): a finite number, not a string or bool."""

# A kind, effect or outcome loads as its enum; a value this release does not know (written by a newer
# one, or by hand) loads as the string it is, as it always did: what reads it decides (a resume refuses it).
KnownStepKind = Annotated[StepKind | str, Field(union_mode="left_to_right")]
KnownEffect = Annotated[Effect | str, Field(union_mode="left_to_right")]
KnownOutcome = Annotated[Outcome | str, Field(union_mode="left_to_right")]

_MODEL_CALL_COUNTS = ("input_tokens", "output_tokens", "attempt", "http_attempts")
_MODEL_CALL_SECONDS = ("latency", "cost")



MAX_DEPTH = 200
"""Deepest nesting a record may have: what pydantic-core's JSON reader takes (it refuses deeper), so
everything a store writes reads back with either reader. Refused on write."""


def depth_ok(value: Any) -> bool:
    """Whether ``value`` nests at most :data:`MAX_DEPTH` levels (a cycle does not)."""
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list, tuple)):
            if d >= MAX_DEPTH:
                return False
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


def record_json(value: Any) -> str:
    """``value`` as the JSON text a store keeps; ``ValueError`` for what no store could keep or read
    back (NaN or infinity, nesting deeper than :data:`MAX_DEPTH` (a cycle too), text that is not
    UTF-8), ``TypeError`` for what is not JSON data.

    No Python walk over the record (a step of a chat agent with a long history spent a fifth of its
    time walking it): Python's C encoder writes it and refuses what is not JSON data (bytes, sets,
    objects: pydantic-core's ``to_json``, 4x faster, would write them as text or lists), NaN and
    cycles; a text with fewer brackets than :data:`MAX_DEPTH` cannot nest deeper, and a longer one is
    read by pydantic-core's reader (Rust), which refuses nesting deeper than it."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise ValueError(f"a value nests deeper than {MAX_DEPTH} levels, which the store cannot read back: "
                         "flatten it") from None
    if text.count("[") + text.count("{") > MAX_DEPTH:
        try:
            from_json(text)
        except ValueError as exc:
            if "recursion" in str(exc):
                raise ValueError(f"a value nests deeper than {MAX_DEPTH} levels, which the store cannot read "
                                 "back: flatten it") from None
    return text


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


class Spent(_Record):
    """Tokens and cost of a run's model calls, summed over its committed steps."""

    tokens: Whole = 0
    cost: Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)] = 0.0


class SpentRow(TypedDict):
    """:class:`Spent` as written."""

    tokens: int
    cost: float


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
    max_steps_given: bool | None = Field(default=None, exclude_if=lambda v: v is None)
    """``True``: ``max_steps`` was given by the caller and stays when the run is resumed under another
    version; otherwise it is the workflow's worst-case bound, which a resume takes from the version
    it resumes under. (Written only when ``True``: a record without it reads the same as before.)"""
    restarts: Whole = 0
    """How many times the run was resumed at ``next_step`` after its holder had started that step."""
    started: bool = True
    """Whether the run's holder started its next step: false from a claim until the claimer's
    ``mark_started``, so a claim superseded before it did anything counts no restart."""
    created_at: Time
    updated_at: Time
    terminal: str | None = None
    outcome: KnownOutcome | None = None
    """The terminal's :class:`~statemachine_agent.spec.Outcome` once the run ended."""
    reason: str | None = None
    parent: str | None = None
    """The run this one was forked from."""
    parent_step: Whole | None = None
    wait: WaitRecord | None = None
    spent: Spent | None = None
    """What the run's model calls spent over all its committed steps (so a resume need not read them);
    ``None`` in a record written before version 3 (then the steps say it)."""
    trace: dict[str, str] = Field(default_factory=dict, exclude_if=lambda v: not v)
    """The run's trace context (``RunStarted.trace``: W3C headers a tracing hook put there), so the
    run's next attempt links to its earlier trace. Written only when not empty."""


class StepRecord(_Record):
    """One committed step, with the delta of the context it wrote."""

    number: Whole
    state: str
    target: str
    transition: str
    kind: KnownStepKind
    """A :class:`~statemachine_agent.result.StepKind`."""
    started_at: Time
    duration: Time
    error: str | None = None
    """``Type: message`` of the exception the step raised, if any."""
    error_type: str | None = None
    rejected: list[str] = []
    ran: bool = True
    writes: list[str] = []
    delta: dict[str, Any] = {}
    """The JSON of each field the step wrote whole (a subset of its declared writes). Loaded from
    JSON text, so JSON as it is: not checked value by value."""
    unset: list[str] = []
    """Fields the step set back to UNSET."""
    ops: dict[str, list[Any]] = {}
    """Fields the step changed in place, each as its operations (``_ops.apply``), applied to the
    field's stored JSON in order; a field is in ``delta`` or here, never both."""
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


class _StepRow(msgspec.Struct, forbid_unknown_fields=True):
    """A step row as :func:`step_row` writes it, for msgspec's reader (:func:`fast_step`): the fields of
    :class:`StepRecord` in its order, each of the type it is written with (msgspec converts nothing but
    an int to a float, which :func:`fast_step` refuses)."""

    number: Annotated[int, msgspec.Meta(ge=0, le=_MAX_INT)]
    state: str
    target: str
    transition: str
    kind: StepKind
    started_at: float
    duration: float
    error: str | None
    error_type: str | None
    rejected: list[str]
    ran: bool
    writes: list[str]
    delta: dict[str, Any]
    unset: list[str]
    ops: dict[str, list[Any]] | msgspec.UnsetType = msgspec.UNSET
    model_calls: list[Any] | msgspec.UnsetType = msgspec.UNSET


_read_step_row = msgspec.json.Decoder(_StepRow).decode
_as_dict = msgspec.structs.asdict
_STEP_FIELDS = frozenset(StepRecord.model_fields)
_STEP_FIELDS_WITHOUT_OPS = _STEP_FIELDS - {"ops"}
_new_object = object.__new__
_set = object.__setattr__


def fast_step(text: str) -> StepRecord | None:
    """A step row's JSON text as a :class:`StepRecord`, read by msgspec's C reader instead of being
    validated by pydantic; ``None`` when the row is not of the plain shape this library writes (the
    caller then validates it as before, which accepts or refuses it and says why).

    A resume reads every step row since its snapshot: this costs under half of pydantic-core's reader
    plus the walk that refuses NaN (``benchmarks/bench_store_read.py``). msgspec checks each field's type, refuses
    unknown fields, NaN, infinity and numbers a float cannot hold, in one pass. What it accepts here is
    a subset of what :class:`StepRecord` accepts, as the same record: every field present (``ops`` only
    when there are some, as written), no model calls (their numbers are checked by the model), and the
    two times written as floats (tests/test_store_fast_step.py checks both readers on the same rows)."""
    try:
        row = _read_step_row(text)
    except (msgspec.DecodeError, RecursionError):
        return None
    if (row.model_calls is msgspec.UNSET or row.model_calls or type(row.started_at) is not float
            or type(row.duration) is not float):
        return None
    values = _as_dict(row)
    given = _STEP_FIELDS
    if row.ops is msgspec.UNSET:
        values["ops"], given = {}, _STEP_FIELDS_WITHOUT_OPS
    record = _new_object(StepRecord)  # what pydantic's own model_construct sets, without its Python loop
    _set(record, "__dict__", values)
    _set(record, "__pydantic_fields_set__", set(given))
    _set(record, "__pydantic_extra__", None)
    _set(record, "__pydantic_private__", None)
    return record


class CallRecord(_Record):
    """One tool call in the journal, keyed by (run, step, call index)."""

    step: Whole
    call: Whole
    tool: str
    effect: KnownEffect
    """The :class:`~statemachine_agent.Effect` the call was made under."""
    status: CallStatus
    key: str
    arguments: JsonValue = None
    result: JsonValue = None
    error: str | None = None
    at: Time = 0.0
    attempts: Annotated[int, Field(ge=1, le=_MAX_INT, strict=True)] = 1
    """How many attempts the call took (retries included; a fallback counts as one more)."""
    failures: list[str] = Field(default_factory=list)
    """What its failed attempts raised (``Type: message``), when it took more than one; at most 20."""


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
    snapshot_at: Whole = 0
    """The step of the snapshot ``context`` was rebuilt from (the steps after it rebuilt the rest)."""
    first_step: Whole = 0
    """The number of the first step in ``steps``: 0 for a whole load; a tail load
    (:meth:`~statemachine_agent.stores.Store.load_tail`) holds the steps from its snapshot on, and a
    claim's answer none (its steps, journal rows and inbox are only what continuing the run needs)."""


def rebuild(context: dict[str, Any], step: StepRecord, run_id: str) -> None:
    """Move ``context`` (a context's JSON, before ``step``) past ``step``: its whole fields, its fields
    set back to UNSET and its operations. ``StoreCorrupted`` when an operation does not fit."""
    # Copies of the step's lists and objects: a later step's operations change the context's values
    # in place, which must not change this step's record (its ``delta`` as loaded, or as replay reads it).
    delta, unset = step.delta, step.unset
    for k, v in delta.items():
        context[k] = copy.deepcopy(v) if isinstance(v, (list, dict)) else v
    for f in unset:
        context.pop(f, None)
    for name, ops in step.ops.items():
        if name in delta or name in unset:
            raise StoreCorrupted(f"run {run_id!r} step {step.number}: field {name!r} is stored both whole (or "
                                 "unset) and as operations: the file is damaged")
        if name not in context:
            raise StoreCorrupted(f"run {run_id!r} step {step.number}: it changed field {name!r} in place, which "
                                 "the context before it does not hold: the file is damaged")
        try:
            _ops.apply(context[name], ops)
        except (TypeError, ValueError) as exc:
            raise StoreCorrupted(f"run {run_id!r} step {step.number}: field {name!r}: {exc}: the file is "
                                 "damaged") from None


# --- the rows a store is given ---------------------------------------------------------------------
# Plain dicts (JSON as they are: the enums are str), typed; each is made by its one builder below, so
# the key order, and with it the stored bytes, is the same wherever a row is written.
class CountersRow(TypedDict):
    """:class:`Counters` as written."""

    actions_run: int
    visits: dict[str, int]
    traversals: dict[str, int]


class WaitRow(TypedDict):
    """:class:`WaitRecord` as written."""

    state: str
    event: str
    deadline: float | None


class RunRow(TypedDict):
    """:class:`RunRecord` as written (by :func:`run_row`)."""

    run_id: str
    workflow: str
    fingerprint: str
    status: RunStatus
    state: str
    next_step: int
    epoch: int
    counters: CountersRow
    written: list[str]
    initial_written: list[str]
    max_steps: int
    max_steps_given: NotRequired[bool]
    restarts: int
    started: bool
    created_at: float
    updated_at: float
    terminal: str | None
    outcome: Outcome | None
    reason: str | None
    parent: str | None
    parent_step: int | None
    wait: WaitRow | None
    spent: NotRequired[SpentRow]
    trace: NotRequired[dict[str, str]]


class StepRow(TypedDict):
    """:class:`StepRecord` as written (by :func:`step_row`)."""

    number: int
    state: str
    target: str
    transition: str
    kind: StepKind
    started_at: float
    duration: float
    error: str | None
    error_type: str | None
    rejected: list[str]
    ran: bool
    writes: list[str]
    delta: dict[str, Any]
    unset: list[str]
    model_calls: list[dict[str, Any]]
    ops: NotRequired[dict[str, list[Any]]]


class CallRow(TypedDict):
    """:class:`CallRecord` as written (by :func:`call_row`): one journal row."""

    step: int
    call: int
    tool: str
    effect: Effect
    key: str
    arguments: Any
    result: Any
    error: str | None
    at: float
    status: CallStatus
    attempts: NotRequired[int]
    failures: NotRequired[list[str]]


class CommitRequest(TypedDict):
    """One step's commit (by :func:`commit_request`): see :meth:`.Store.commit`."""

    epoch: int
    """The committer's epoch: the commit is fenced on it and on ``run["next_step"] - 1``."""
    run: RunRow
    """The run's record after the step."""
    step: StepRow
    snapshot: dict[str, Any] | None
    """The whole context after the step (its JSON), or ``None``: the step's delta rebuilds it."""
    calls: list[CallRow]
    """Journal rows riding along (the step's ``read`` calls)."""
    consume: int | None
    """The inbox event the step consumed (its sequence number), if any."""


def run_row(*, run_id: str, workflow: str, fingerprint: str, status: RunStatus, state: str, next_step: int,
            epoch: int, counters: CountersRow, written: list[str], initial_written: list[str], max_steps: int,
            created_at: float, updated_at: float, terminal: str | None = None, outcome: Outcome | None = None,
            reason: str | None = None, parent: str | None = None, parent_step: int | None = None,
            wait: WaitRow | None = None, restarts: int = 0, started: bool = True,
            max_steps_given: bool = False, spent: SpentRow | None = None,
            trace: dict[str, str] | None = None) -> RunRow:
    """A run's record, as every writer of one builds it."""
    row: RunRow = {
        "run_id": run_id, "workflow": workflow, "fingerprint": fingerprint, "status": status, "state": state,
        "next_step": next_step, "epoch": epoch, "counters": counters, "written": written,
        "initial_written": initial_written, "max_steps": max_steps, "restarts": restarts, "started": started,
        "created_at": created_at, "updated_at": updated_at, "terminal": terminal, "outcome": outcome,
        "reason": reason, "parent": parent, "parent_step": parent_step, "wait": wait,
    }
    if max_steps_given:
        row["max_steps_given"] = True
    if spent is not None:
        row["spent"] = spent
    if trace:
        row["trace"] = trace
    return row


def step_row(*, number: int, state: str, target: str, transition: str, kind: StepKind, started_at: float,
             duration: float, error: str | None = None, error_type: str | None = None,
             rejected: list[str] | None = None, ran: bool = True, writes: list[str] | None = None,
             delta: dict[str, Any] | None = None, unset: list[str] | None = None,
             model_calls: list[dict[str, Any]] | None = None, ops: dict[str, list[Any]] | None = None) -> StepRow:
    """A step's row: where it went and the delta of the context it wrote (``ops`` only when some
    field was changed in place, so a row without them reads as before)."""
    row: StepRow = {"number": number, "state": state, "target": target, "transition": transition, "kind": kind,
                    "started_at": started_at, "duration": duration, "error": error, "error_type": error_type,
                    "rejected": [] if rejected is None else rejected, "ran": ran,
                    "writes": [] if writes is None else writes, "delta": {} if delta is None else delta,
                    "unset": [] if unset is None else unset, "model_calls": [] if model_calls is None else model_calls}
    if ops:
        row["ops"] = ops
    return row


def call_row(*, step: int, call: int, tool: str, effect: Effect, key: str, status: CallStatus, at: float,
             arguments: Any = None, result: Any = None, error: str | None = None) -> CallRow:
    """A journal row: call ``call`` of step ``step``, to ``tool`` (or a journaled read such as a model's
    answer), with its arguments and, once known, its result or error."""
    return {"step": step, "call": call, "tool": tool, "effect": effect, "key": key, "arguments": arguments,
            "result": result, "error": error, "at": at, "status": status}


def commit_request(*, epoch: int, run: RunRow, step: StepRow, snapshot: dict[str, Any] | None = None,
                   calls: list[CallRow] | None = None, consume: int | None = None) -> CommitRequest:
    """What :meth:`.Store.commit` is given for one step."""
    return {"epoch": epoch, "run": run, "step": step, "snapshot": snapshot, "calls": [] if calls is None else calls,
            "consume": consume}
