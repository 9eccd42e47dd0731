"""A durable run's link to its store: step commits, the tool-call journal, and resuming.

The runner calls in here only when a run has a store, so runs without one pay nothing. What is
written (see ``stores/_records.py`` for the shapes):

* ``create``: the run's record and its starting context (snapshot 0), before the first step;
* one ``commit`` per step, after the step chose its move and before anything else sees it (events,
  the next step): the step row with the **delta** (only the fields it wrote), the run's new record
  (state, counters, written fields) fenced on ``(epoch, next_step)``, a snapshot when due (see
  ``Store.snapshot_every``), and the journal rows of ``read`` tool calls made in the step;
* ``record_call`` for ``idempotent`` and ``at_most_once`` calls, committed at once: an intent
  before an at_most_once call runs, and every such call's outcome as soon as it is known.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import os
import time
import types
import typing
import weakref
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypedDict, TypeVar

from pydantic import BaseModel, Secret, SecretBytes, SecretStr, ValidationError

from . import _ops
from ._compat import (
    JournalCall,
    QueuedEvent,
    ResumePoint,
    compatibility,
    ended_compatibility,
    fingerprint,
    fingerprint_of,
    fit,
    pydantic_errors,
)
from ._journal import Delta, RunState, ToolRunner
from ._program import Program
from ._tooldef import KEY_PARAMETER, Effect, Tool
from .clock import SystemClock, wall_time
from .context import first_non_finite, is_unset
from .errors import (
    EffectOutcomeUnknown,
    IncompatibleRun,
    NondeterminismError,
    Problem,
    RecordedError,
    ResumeCode,
    RunFenced,
    StateMachineAgentError,
    StoreError,
    ToolFailed,
    ToolResultError,
)
from .policies import safe_repr
from .result import RunResult, Step, StepKind, Steps
from .runner import ResumeOptions, Run, RunConfig, checked_clock
from .secrets import (
    Digests,
    SecretCodec,
    SecretUnreadable,
    check_storable,
    redigest,
    seal,
    secret_fields,
    unseal,
)
from .spec import Outcome
from .stores._base import Store
from .stores._records import (
    CallRecord,
    CallRow,
    CallStatus,
    InboxRecord,
    RunRow,
    RunStatus,
    Spent,
    StoredRun,
    WaitRow,
    call_row,
    commit_request,
    rebuild,
    run_row,
    step_row,
)
from .usage import ModelCall, Usage

__all__ = ["Durable", "ResumePoint", "check_runs", "fingerprint"]

_log = logging.getLogger("statemachine_agent")


_SNAPSHOT_MIN = 16
"""Items the steps since a snapshot store at least before the next one (a small context)."""
_SNAPSHOT_STEPS = 500
"""Steps between two snapshots at most, however little they store: what a load reads at most."""
_SHARED_STEPS = 96
_SHARED_SHARE = 24
"""For a store whose snapshots share items (``Store.snapshots_share_items``): a snapshot also after
``max(_SHARED_STEPS, items // _SHARED_SHARE)`` steps, ``items`` being what the last one held, while the
steps since it only appended to its lists in place (see :func:`reshaping`)."""


def reshaping(ops: dict[str, list[Any]]) -> bool:
    """Whether a step's in-place operations do more than append to lists (insert, set, delete, clear,
    or change a dict): those move or change items a snapshot's segments hold, so the next snapshot
    could not share them; the step rule then waits for the item rule (``Store.snapshots_share_items``)."""
    for field_ops in ops.values():
        for op in field_ops:
            if op[0] not in _APPENDS:
                return True
    return False


_APPENDS = frozenset({"a", "e"})


def _items(data: dict[str, Any]) -> int:
    """The size of stored fields in items: a list's or object's length, 1 for anything else."""
    n = 0
    for v in data.values():
        n += len(v) if isinstance(v, (list, dict)) else 1
    return n


def dump_fields(context: BaseModel, fields: Any, secrets: SecretCodec | None = None
                ) -> tuple[dict[str, Any], list[str]]:
    """The JSON of ``fields`` of ``context``, and those of them that are UNSET.

    ``TypeError`` naming the field when a value has no JSON form (then nothing may be committed).
    Secret fields are encrypted by ``secrets`` (``{"$secret": token}``); without it they are refused
    (``SecretsNotStorable``, a ``TypeError``), never stored as their mask.
    """
    d = context.__dict__
    unset = [f for f in fields if is_unset(d.get(f))]
    try:
        data = context.model_dump(mode="json", include=set(fields), warnings="error")
    except Exception as exc:
        bad = _first_unserializable(context, fields)
        raise TypeError(f"field {bad!r} of {type(context).__name__} holds a value that cannot be stored as JSON "
                        f"({type(exc).__name__}: {str(exc)[:200]}): give the field a pydantic-serializable type"
                        ) from None
    seal(context, data, secrets)
    return data, unset


_EXACT = (str, int, bool, bytes, type(None))


def _float_free(annotation: Any) -> bool:
    """Whether a value pydantic validated (and serialized with ``warnings="error"``) as ``annotation``
    can hold no float: made only of str, int, bool, bytes, None, literals of those, and lists, tuples,
    sets, dicts, unions and ``Annotated`` of them. Anything else (float, Any, a model...) may."""
    if annotation in _EXACT:
        return True
    origin = typing.get_origin(annotation)
    if origin is None:
        return False
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return all(type(a) in _EXACT for a in args)
    if origin is typing.Annotated:
        return _float_free(args[0])
    if origin in (list, tuple, set, frozenset, dict, typing.Union, types.UnionType):
        return all(a is Ellipsis or _float_free(a) for a in args)
    return False


_FLOATY: weakref.WeakKeyDictionary[type[BaseModel], frozenset[str]] = weakref.WeakKeyDictionary()


def _may_hold_floats(cls: type[BaseModel]) -> frozenset[str]:
    """The fields of ``cls`` whose type may hold a float (so a NaN or an infinity)."""
    got = _FLOATY.get(cls)
    if got is None:
        got = _FLOATY[cls] = frozenset(name for name, f in cls.model_fields.items() if not _float_free(f.annotation))
    return got


def non_finite(value: Any) -> str | None:
    """The path (``a.b[2]``) of the first NaN or infinity in ``value``, or ``None``."""
    found = first_non_finite(value)
    if found is None:
        return None
    text = ""
    for part in found[0]:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.isidentifier():
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text or "(the value)"


def _first_unserializable(context: BaseModel, fields: Any) -> str:
    for f in sorted(fields):
        try:
            context.model_dump(mode="json", include={f}, warnings="error")
        except Exception:
            return str(f)
    return "?"


T = TypeVar("T")


async def settled(future: Future[T]) -> T:
    """What a store's ``future`` resolves to. A store may have done the request already (a lone run's
    commit runs in the caller's thread): its result is then taken at once, after one pass of the event
    loop (other tasks still run between steps, and a cancellation lands here as at any await)."""
    if future.done():
        await asyncio.sleep(0)
        return future.result()
    return await asyncio.wrap_future(future)

def _trace_of(run: Run[Any]) -> dict[str, str] | None:
    """The run's trace context as stored: text to text only (a hook may have put anything there)."""
    found = run.trace
    if not found:
        return None
    return {k: v for k, v in found.items() if type(k) is str and type(v) is str and len(k) + len(v) <= 1024}


class Durable:
    """One run's link to its store, for as long as this process holds the run (one epoch)."""

    __slots__ = ("created_at", "epoch", "fingerprint", "initial_written", "parent", "parent_step", "pending",
                 "recorded", "reshaped", "run_id", "secrets", "since", "size", "snapshot_at", "spent", "store",
                 "unmarked")

    def __init__(self, store: Store, run_id: str, epoch: int, fingerprint: str, *, created_at: float,
                 initial_written: list[str], recorded: dict[tuple[int, int], CallRecord] | None = None,
                 parent: str | None = None, parent_step: int | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.epoch = epoch
        self.fingerprint = fingerprint
        self.created_at = created_at
        self.initial_written = initial_written
        self.recorded = recorded or {}
        """Journal rows of the steps not committed yet (after a resume), by (step, call)."""
        self.unmarked = False
        """Claimed and not yet started: ``mark_started`` is due before the first step runs."""
        self.pending: list[CallRow] = []
        """Outcomes of read calls, committed with their step."""
        self.parent = parent
        self.parent_step = parent_step
        self.secrets: SecretCodec | None = getattr(store, "secrets", None)
        """What encrypts the context's secret fields (the store's codec)."""
        self.spent = Spent()
        """What the run's committed steps spent on model calls (kept in its record)."""
        self.snapshot_at = 0
        """The step of the latest snapshot in the store (the store rebuilds the context from it)."""
        self.size = 0
        """The latest snapshot's size in items (:func:`_items`)."""
        self.since = 0
        """Items the steps since the latest snapshot stored: once they reach its size, the next
        commit stores a snapshot (so the steps replayed on a load never outgrow the context). ``-1``:
        the next commit stores one whatever the count (the context in memory differs from what the
        store rebuilds, as after a migration)."""
        self.reshaped = False
        """A step since the latest snapshot changed a field in place by more than appending (:func:`reshaping`)."""

    # --- the run's record ------------------------------------------------------------------------
    def record(self, run: Run[Any], *, status: RunStatus, state: str, next_step: int,
               terminal: str | None = None, outcome: Outcome | None = None, reason: str | None = None,
               wait: WaitRow | None = None) -> RunRow:
        names = run.workflow.edge_names
        return run_row(
            run_id=run.run_id, workflow=run.workflow.name, fingerprint=self.fingerprint, status=status, state=state,
            next_step=next_step, epoch=self.epoch,
            counters={"actions_run": run.actions_run, "visits": dict(run.visits),
                      "traversals": {names[i]: n for i, n in enumerate(run.traversals) if n}},
            written=sorted(run.written), initial_written=self.initial_written, max_steps=run.max_steps,
            max_steps_given=run.config.max_steps_given,
            created_at=self.created_at, updated_at=time.time(), terminal=terminal, outcome=outcome, reason=reason,
            parent=self.parent, parent_step=self.parent_step, wait=wait,
            spent={"tokens": self.spent.tokens, "cost": self.spent.cost}, trace=_trace_of(run))

    @classmethod
    async def create(cls, run: Run[Any], store: Store) -> Durable:
        """Insert ``run`` (not started yet) into ``store``: ``RunExists`` if its id is taken."""
        wf = run.workflow
        durable = cls(store, run.run_id, 1, fingerprint_of(wf), created_at=time.time(),
                      initial_written=sorted(run.written))
        check_storable(type(run.context), durable.secrets, run.run_id)  # SecretsNotStorable: nothing stored
        try:
            context, _ = dump_fields(run.context, run.context.__dict__.keys(), durable.secrets)
        except TypeError as exc:
            raise TypeError(f"run {run.run_id!r} cannot be stored: {exc}") from None
        # Only the fields whose type may hold a float (a 1,000-message history is not walked), in the
        # Python form: pydantic's JSON form turns an infinity in an untyped value into null.
        walk = _may_hold_floats(type(run.context)) & context.keys()
        try:
            bad = non_finite(run.context.model_dump(include=set(walk))) if walk else None
        except Exception:
            bad = non_finite({k: context[k] for k in walk})
        if bad is not None:
            raise ValueError(f"run {run.run_id!r} cannot be stored: field {bad!r} is not a finite number (NaN or "
                             "infinity), which JSON cannot hold: give a finite number or None")
        rec = durable.record(run, status=RunStatus.RUNNING, state=run.state, next_step=0)
        await settled(store.create(rec, context))
        durable.size = _items(context)
        return durable

    def delta(self, context: BaseModel, fields: Any, ops: dict[str, Any] | None = None) -> Delta:
        """``fields`` of ``context`` as stored: those changed in place only (``ops``, from the step's
        view) as their operations where that is exact (``_ops.encode``), the others whole as JSON
        (secret ones sealed); and those that are UNSET."""
        encoded: dict[str, list[Any]] = {}
        whole = fields
        if ops:
            whole = []
            for name in fields:
                done = ops.get(name)
                got = None if done is None else _ops.encode(context, name, done)
                if got is None:
                    whole.append(name)
                elif got:
                    encoded[name] = got
        data, unset = dump_fields(context, whole, self.secrets) if whole else ({}, [])
        return data, unset, encoded

    async def commit(self, run: Run[Any], step: Step, reason: str | None,
                     wait: tuple[str, str, float | None] | None = None, *,
                     delta: Delta = ({}, [], {}), consume: int | None = None
                     ) -> list[tuple[int, str, Any]]:
        """Commit ``step`` (already taken in memory, its writes in ``delta``); ``RunFenced`` if
        another worker owns the run (then nothing is written).

        ``wait`` (state, event, deadline): the step entered a wait state with nothing to take yet,
        so the run is committed as waiting in the same transaction, unless the store finds the event
        in the inbox meanwhile: then it stays running and those events are returned."""
        target = run.workflow.plans[step.target]
        terminal = target.terminal
        outcome = None
        if terminal:
            outcome = target.outcome or Outcome.FAILURE
        else:
            reason = None
        written, unset, ops = delta
        if step.model_calls:
            used = step.usage
            self.spent = Spent(tokens=self.spent.tokens + used.total_tokens,
                               cost=self.spent.cost + (used.cost or 0.0))
        status = RunStatus.DONE if terminal else RunStatus.WAITING if wait is not None else RunStatus.RUNNING
        rec = self.record(run, status=status, state=step.target, next_step=step.number + 1,
                          terminal=step.target if terminal else None, outcome=outcome, reason=reason,
                          wait=None if wait is None else WaitRow(state=wait[0], event=wait[1], deadline=wait[2]))
        snapshot = None
        every = self.store.snapshot_every
        number = step.number + 1
        forced = self.since < 0
        if every is None:  # when the steps since the last snapshot stored half as many items as it holds
            self.since += _items(written) + sum(_ops.size(o) for o in ops.values()) + len(unset)
            steps = _SNAPSHOT_STEPS
            if self.store.snapshots_share_items:
                if ops and not self.reshaped:
                    self.reshaped = reshaping(ops)
                if not self.reshaped:
                    steps = min(steps, max(_SHARED_STEPS, self.size // _SHARED_SHARE))
            due = forced or self.since >= max(self.size // 2, _SNAPSHOT_MIN) or number - self.snapshot_at >= steps
        else:
            due = forced or terminal or wait is not None or number % every == 0
        if due:
            try:
                snapshot, _ = dump_fields(run.context, run.context.__dict__.keys(), self.secrets)
            except TypeError:
                snapshot = None  # the deltas rebuild it; a snapshot only saves reading them
            else:
                self.snapshot_at, self.size, self.since, self.reshaped = number, _items(snapshot), 0, False
        error = step.error
        commit = commit_request(
            epoch=self.epoch, run=rec,
            step=step_row(number=step.number, state=step.state, target=step.target, transition=step.transition,
                          kind=step.kind, started_at=step.started_at, duration=step.duration,
                          error=None if error is None else _describe(error),
                          error_type=None if error is None else type(error).__name__,
                          rejected=list(step.rejected), ran=step.ran, writes=list(step.writes),
                          delta=written, unset=unset, model_calls=[c.to_dict() for c in step.model_calls],
                          ops=ops),
            snapshot=snapshot, calls=self.pending, consume=consume)
        self.pending = []
        if self.recorded:
            self.recorded = {k: v for k, v in self.recorded.items() if k[0] > step.number}
        found = await settled(self.store.commit(commit))
        return [(e.seq, e.event, e.payload) for e in found or ()]

    async def suspend(self, run: Run[Any], state: str, event: str, deadline: float | None
                      ) -> list[tuple[int, str, Any]]:
        """Commit the run as waiting in ``state`` for ``event``, with a snapshot; or, when the event
        is in its inbox already, write nothing and return the events."""
        rec = self.record(run, status=RunStatus.WAITING, state=state, next_step=len(run.path),
                          wait=WaitRow(state=state, event=event, deadline=deadline))
        # Every value in the context came from the start or a step's delta, both stored as JSON.
        snapshot, _ = dump_fields(run.context, run.context.__dict__.keys(), self.secrets)
        found = await settled(self.store.suspend(rec, self.epoch, snapshot))
        return [(e.seq, e.event, e.payload) for e in found or ()]

    async def mark_started(self) -> None:
        """The claimer starts its first step: from now on a claim counts it as a restart."""
        self.unmarked = False
        await settled(self.store.mark_started(self.run_id, self.epoch))

    # --- the journal -----------------------------------------------------------------------------
    async def call(self, tools: ToolRunner, tool: Tool, *, step: int, index: int, key: str,
                   arguments: dict[str, Any], run_id: str) -> Any:
        """Make a tool call through the journal: a completed call returns its recorded result."""
        rec = self.recorded.get((step, index))
        effect = tool.effect
        if rec is not None:
            if rec.tool != tool.name:
                raise NondeterminismError(
                    run_id, step, index, {"tool": rec.tool}, {"tool": tool.name},
                    f"run {run_id!r} step {step}: call {index} was to tool {rec.tool!r} before the crash, and is "
                    f"to {tool.name!r} now: the state's code is not deterministic in the order of its tool "
                    "calls, so the journal cannot be followed")
            if rec.status is CallStatus.DONE:
                try:
                    return tool.load_result(_open_result(tool.name, rec.result, self.secrets, run_id))
                except ValidationError as exc:
                    raise ToolResultError(tool.name, f"tool {tool.name!r}: the journaled result of call {key} "
                                          f"no longer fits its result type ({exc.errors()[0]['msg']})") from None
            if rec.effect == Effect.AT_MOST_ONCE:
                # As journaled: the resume check refused a tool whose effect class changed since,
                # unless migrate= set the row's effect (then the call may run again).
                return await self._reconcile(tool, key, arguments, step, index)
        row = call_row(step=step, call=index, tool=tool.name, effect=effect, key=key,
                       arguments=tool.dump_arguments({k: v for k, v in arguments.items() if k != KEY_PARAMETER}),
                       status=CallStatus.INTENT, at=time.time())
        if effect is Effect.AT_MOST_ONCE:
            await self._write(row)
        failures: list[BaseException] = []
        try:
            result = await tools._run_call(tool, arguments, key, failures)
        except Exception as exc:
            if effect is not Effect.READ:
                await self._write({**row, "status": CallStatus.FAILED, "error": _describe(exc), "at": time.time(),
                                   **_attempts(exc.errors if isinstance(exc, ToolFailed) else failures, failed=True)})
            raise
        try:
            data = _seal_result(tool, result, tool.dump_result(result), self.secrets)
        except TypeError as exc:
            raise ToolResultError(tool.name, str(exc)) from None
        done: CallRow = {**row, "status": CallStatus.DONE, "result": data, "at": time.time(),
                         **_attempts(failures, failed=False)}
        if effect is Effect.READ:
            self.pending.append(done)
        else:
            await self._write(done)
        return result

    async def memo(self, name: str, compute: Callable[[], Awaitable[Any]], *, step: int, index: int,
                   key: str) -> Any:
        """A journaled read that is not a tool (a model's answer): committed with its step."""
        rec = self.recorded.get((step, index))
        if rec is not None and rec.tool == name and rec.status is CallStatus.DONE:
            return rec.result
        result = await compute()
        self.pending.append(call_row(step=step, call=index, tool=name, effect=Effect.READ, key=key,
                                     status=CallStatus.DONE, result=result, at=time.time()))
        return result

    async def _reconcile(self, tool: Tool, key: str, arguments: dict[str, Any], step: int, index: int) -> Any:
        if tool.reconcile is None:
            raise EffectOutcomeUnknown(tool.name, key)
        plain = {k: v for k, v in arguments.items() if k != KEY_PARAMETER}
        out = tool.reconcile(plain, key)
        if inspect.isawaitable(out):
            out = await out
        result = tool.validate_result(out)
        await self._write(call_row(step=step, call=index, tool=tool.name, effect=tool.effect, key=key,
                                   arguments=tool.dump_arguments(plain), status=CallStatus.DONE,
                                   result=_seal_result(tool, result, tool.dump_result(result), self.secrets),
                                   at=time.time()))
        return result

    async def _write(self, row: CallRow) -> None:
        await settled(self.store.record_call(self.run_id, self.epoch, row))


_SECRET_RESULT = "$secret_result"
"""The key of a journaled tool result that is a secret: ``{"$secret_result": token, "kind": "str"}``."""


def _holds_secret(value: Any, depth: int = 0) -> bool:
    if isinstance(value, (SecretStr, SecretBytes, Secret)):
        return True
    if depth > 50:
        return False
    if isinstance(value, BaseModel):
        return any(_holds_secret(v, depth + 1) for v in value.__dict__.values())
    if isinstance(value, dict):
        return any(_holds_secret(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds_secret(v, depth + 1) for v in value)
    return False


def _seal_result(tool: Tool, result: Any, data: Any, codec: SecretCodec | None) -> Any:
    """A tool result's journal form: JSON shows a secret as its mask, and a run resumed or
    replayed from the mask would go on with it as the secret. So a result that is a ``SecretStr``
    or ``SecretBytes`` is journaled encrypted by the store's codec; without a codec, or with a
    secret inside a bigger result, it is refused (``TypeError``, as a ToolResultError)."""
    if isinstance(result, (SecretStr, SecretBytes)):
        if codec is None:
            raise TypeError(f"tool {tool.name!r} returned a {type(result).__name__}, which the journal keeps only "
                            "encrypted: give the store a codec (SQLiteStore(path, secrets=FernetSecrets.from_env("
                            "NAME))); the result was not journaled")
        raw = result.get_secret_value()
        token = codec.encrypt(raw.encode("utf-8") if isinstance(raw, str) else raw)
        return {_SECRET_RESULT: token, "kind": "str" if isinstance(result, SecretStr) else "bytes"}
    if _holds_secret(result):
        raise TypeError(f"tool {tool.name!r} returned a secret inside its result, which the journal would keep as "
                        "its mask: return the SecretStr or SecretBytes itself (journaled encrypted by the "
                        "store's codec); the result was not journaled")
    return data


def _open_result(name: str, data: Any, codec: SecretCodec | None, run_id: str) -> Any:
    """A journaled result back as the tool returned it (a sealed secret decrypted)."""
    if not (isinstance(data, dict) and _SECRET_RESULT in data):
        return data
    token, kind = data.get(_SECRET_RESULT), data.get("kind")
    if codec is None or not isinstance(token, str) or kind not in ("str", "bytes"):
        raise SecretUnreadable(run_id, f"result of tool {name!r}",
                               f"run {run_id!r}: the journaled result of tool {name!r} is a secret this store "
                               "cannot open (no codec, or a damaged entry): open the store with the codec it was "
                               "written with")
    try:
        raw = codec.decrypt(token)
        return SecretStr(raw.decode("utf-8")) if kind == "str" else SecretBytes(raw)
    except Exception:
        raise SecretUnreadable(run_id, f"result of tool {name!r}",
                               f"run {run_id!r}: the journaled result of tool {name!r} does not open with "
                               "this store's codec (another key, or a damaged token): open the store with the "
                               "key it was written with") from None


class _Attempts(TypedDict, total=False):
    attempts: int
    failures: list[str]


def _attempts(errors: Sequence[BaseException], *, failed: bool) -> _Attempts:
    """A journal row's attempts, when the call took more than one: how many, and what each failed one
    raised. A call that took one attempt writes neither key (its row reads as before)."""
    attempts = len(errors) + (0 if failed else 1)
    if attempts <= 1:
        return {}
    return {"attempts": attempts, "failures": [_describe(e)[:500] for e in errors[:_MAX_FAILURES]]}


_MAX_FAILURES = 20
"""At most this many failed attempts are described in a journal row (their count is always kept)."""


def _describe(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"[:2000]
    except Exception:
        return f"{type(error).__name__}: <unprintable>"


# --- resuming ------------------------------------------------------------------------------------
def recorded_step(s: Any) -> Step:
    """A stored step row back as a :class:`Step` (its error as a :class:`RecordedError`)."""
    name = s.error_type or "Exception"
    text = s.error
    if text is not None and text.startswith(f"{name}: "):
        text = text[len(name) + 2:]  # the record holds "Type: message"; the type is kept apart
    error = None if text is None else RecordedError(name, text)
    return Step(s.number, s.state, s.target, s.transition, StepKind(s.kind), s.started_at, s.duration, error,
                tuple(s.rejected), s.ran, tuple(s.writes), tuple(ModelCall.from_dict(c) for c in s.model_calls))


def point_of(stored: StoredRun, workflow: Program[Any] | None = None, store: Store | None = None) -> ResumePoint:
    """The stored run as ``migrate=`` sees it; with ``workflow``, its secret fields decrypted by the
    store's codec (as SecretStr/SecretBytes objects, never the stored mask)."""
    r = stored.run
    context = stored.context if workflow is None else _opened(workflow, stored.context, store, r.run_id)
    ended = r.status is RunStatus.DONE
    waiting = r.status is RunStatus.WAITING and r.wait is not None and r.wait.state == r.state
    n = r.next_step
    return ResumePoint(
        run_id=r.run_id, state=(r.terminal or r.state) if ended else r.state, context=context,
        written=list(r.written), visits=dict(r.counters.visits), traversals=dict(r.counters.traversals),
        actions_run=r.counters.actions_run, next_step=n,
        waiting_for=r.wait.event if waiting and r.wait is not None else None,
        calls=[] if ended else [JournalCall.model_validate(
            {"step": c.step, "call": c.call, "tool": c.tool, "effect": str(c.effect), "status": str(c.status),
             "key": c.key, "arguments": c.arguments, "result": c.result}) for c in stored.calls if c.step >= n],
        inbox=[] if ended else [QueuedEvent(seq=e.seq, event=e.event, payload=e.payload)
                                for e in stored.inbox if e.consumed_step is None])


def _recorded(stored: StoredRun, point: ResumePoint) -> dict[tuple[int, int], CallRecord]:
    """The journal rows the next step is answered from: the stored rows, as ``point`` (maybe
    migrated) has them (a row it dropped is not answered: that call is made again)."""
    rows = {(c.step, c.call): c for c in stored.calls if c.step >= stored.run.next_step}
    out: dict[tuple[int, int], CallRecord] = {}
    for c in point.calls:
        row = rows.get((c.step, c.call))
        update: dict[str, Any] = {"tool": c.tool, "effect": c.effect, "status": CallStatus(c.status),
                                  "key": c.key, "arguments": c.arguments, "result": c.result}
        out[(c.step, c.call)] = (row.model_copy(update=update) if row is not None
                                 else CallRecord.model_validate({"step": c.step, "call": c.call, **update}))
    return out


def stored_result(workflow: Program[Any], stored: StoredRun, store: Store | None = None,
                  migrate: Callable[[ResumePoint], Any] | None = None) -> RunResult[Any]:
    """The result of a run that ended, from the store (``store``'s codec decrypts its secrets):
    ``IncompatibleRun`` when its terminal or context no longer fit ``workflow`` (and ``migrate``
    does not fix them)."""
    r = stored.run
    point, context, _ = fit(workflow, point_of(stored, workflow, store), r.fingerprint, migrate, ended=True)
    path = tuple(recorded_step(s) for s in stored.steps)
    # Like a fresh result: only an error no transition routed is the run's error.
    last_error = path[-1].error if path and path[-1].kind is StepKind.FAIL else None
    return RunResult(r.workflow, r.run_id, point.state, Outcome(r.outcome or "failure"), context, path,
                     r.reason, last_error, workflow)


def _opened(workflow: Program[Any], context: dict[str, Any], store: Store | None, run_id: str,
            skip: Any = ()) -> dict[str, Any]:
    """A loaded context dict with its secret fields decrypted (``SecretUnreadable`` if one cannot be)."""
    return unseal(workflow.context_type, context, getattr(store, "secrets", None), run_id, skip=skip)


def _check_secret_results(stored: StoredRun, store: Store, *, since: int | None = None) -> None:
    """``SecretUnreadable`` now (before the run is claimed, or replayed) when a journaled secret
    result a step will be answered with does not open with this store's codec: inside the step it
    would be an error of the step, and end the run (or be reported as a divergence). ``since``:
    the first step that will be answered (default: the run's next step)."""
    codec = getattr(store, "secrets", None)
    first = stored.run.next_step if since is None else since
    for c in stored.calls:
        if c.step >= first and isinstance(c.result, dict) and _SECRET_RESULT in c.result:
            _open_result(c.tool, c.result, codec, stored.run.run_id)


def _check_options(workflow: Program[Any], run_id: str, store: Store, *, options: ResumeOptions[Any],
                   stored: StoredRun) -> None:
    """Bad run options (``wake_due(store, max_steps="many")``) raise here, before the run is
    claimed or an event committed: after the claim they would leave the run stored as running
    with no worker."""
    RunConfig.of(workflow, run_id=run_id, store=store, **_budgeted(options, stored, workflow)[0])


def _budgeted(options: ResumeOptions[Any], stored: StoredRun, workflow: Program[Any]
              ) -> tuple[ResumeOptions[Any], bool]:
    """``options`` with the run's step budget, and whether that budget is its caller's: the one its
    caller gave (kept across versions); or, for a run on the workflow's worst-case bound, the larger
    of the bound it was stored with and this version's (a state added on its path does not fail it;
    one that ran under a looser version keeps room for the steps it took, while the counters it
    carries still bound what is left)."""
    if "max_steps" in options:
        return options, True
    budgeted = options.copy()
    given = bool(stored.run.max_steps_given)
    budgeted["max_steps"] = stored.run.max_steps if given else max(stored.run.max_steps, workflow.max_steps)
    return budgeted, given


def _require_store(store: object) -> None:
    if not isinstance(store, Store):
        raise TypeError(f"store={store!r}: give a statemachine_agent.stores.Store such as SQLiteStore(path)")


def _same_workflow(workflow: Program[Any], run_id: str, stored_workflow: str) -> None:
    if stored_workflow != workflow.name:
        raise IncompatibleRun(run_id, [Problem(ResumeCode.OTHER_WORKFLOW, f"the run belongs to workflow "
                                               f"{stored_workflow!r}, not {workflow.name!r}")])


async def reopen(workflow: Program[Any], run_id: str, store: Store,
                 migrate: Callable[[ResumePoint], ResumePoint] | None, options: ResumeOptions[Any], *,
                 fresh: bool = False) -> Run[Any]:
    """Claim ``run_id`` in ``store`` and rebuild it as a Run of ``workflow`` (see ``resume``)."""
    run = await _reopen(workflow, run_id, store, migrate, options, fresh=fresh, waiting_only=False)
    assert run is not None
    return run


async def _reopen(workflow: Program[Any], run_id: str, store: Store,
                  migrate: Callable[[ResumePoint], ResumePoint] | None, options: ResumeOptions[Any], *,
                  fresh: bool = False, waiting_only: bool = False,
                  stored: StoredRun | None = None) -> Run[Any] | None:
    """Claim ``run_id`` in ``store`` and rebuild it as a Run of ``workflow`` (see ``resume``).

    Whatever the run's status, it is checked against ``workflow`` (``_compat.fit``) before anything
    is written: a refusal leaves the store as it was. ``fresh``: the run was just created by this
    process (a fork) and holds epoch 1: no claim. ``waiting_only``: claim the run only if it is
    waiting and ready (what a delivery and a wake-up do, so they never take a run from a live
    worker); ``None`` when it is not. ``stored``: the run as the caller just loaded it (then it is
    not loaded again before the claim).
    """
    _require_store(store)
    run_id = _plain(run_id)
    if migrate is not None and not callable(migrate):
        raise TypeError(f"migrate={migrate!r}: give a function taking and returning a ResumePoint")
    for option in ("run_id", "store"):
        if option in options:
            raise TypeError(f"resume() got {option}=: the run's id and store are the ones it was stored with")
    if stored is None:
        stored = await settled(store.load_tail(run_id))
    _same_workflow(workflow, run_id, stored.run.workflow)
    if waiting_only and stored.run.status is not RunStatus.WAITING:
        return None
    if stored.run.status is RunStatus.DONE:
        if stored.first_step:
            stored = await settled(store.load(run_id))
        result = stored_result(workflow, stored, store, migrate)
        return Run.restore(workflow, result.context, RunState(result.terminal), path=result.path, result=result,
                           run_id=run_id, **options)
    point, context, migrated = fit(workflow, point_of(stored, workflow, store), stored.run.fingerprint, migrate)
    changed = migrated or stored.run.fingerprint != fingerprint_of(workflow)
    if stored.run.status is RunStatus.WAITING and not _ready(workflow, point, stored, options):
        if waiting_only:
            return None
        if not migrated:  # nothing to do yet: the run stays as it is, unclaimed
            return _paused(workflow, stored, store, point, context, options=options)
        # Migrated: claimed and continued, so that it pauses again and commits what migrate made.
    _check_secret_results(stored, store)
    _check_options(workflow, run_id, store, options=options, stored=stored)
    # Claimed only once it is known to fit: a refused resume leaves the run as it was.
    # The claim reads only the claimed record, the next step's journal rows and the inbox (tail=True):
    # the context and history are the ones just loaded, unless another worker committed meanwhile.
    if waiting_only:
        taken = await settled(store.claim_waiting_tail(run_id))
        if taken is None:
            return None  # another deliverer or waker took it first, or it ended
        if taken.run.next_step != stored.run.next_step:
            stored = await _reloaded(store, taken)
            point, context, _ = fit(workflow, point_of(stored, workflow, store), stored.run.fingerprint, migrate)
        else:
            point = _caught_up(point, stored, taken)
            stored = _claimed_tail(stored, taken)
    elif not fresh:
        claimed = None
        if stored.run.status is RunStatus.WAITING:
            # Claimed as a delivery is, so it is stored as running: from now on this worker is live,
            # and a delivery or a waker (claim_waiting) cannot take the run from under it (G5).
            claimed = await settled(store.claim_waiting_tail(run_id))
        if claimed is None:
            claimed = await settled(store.claim_tail(run_id))
        if claimed.run.next_step != stored.run.next_step or claimed.run.status is RunStatus.DONE:
            # Another worker committed between the look and the claim: continue from what it left.
            if claimed.run.status is RunStatus.DONE:
                return await reopen(workflow, run_id, store, migrate, options)
            stored = await _reloaded(store, claimed)
            point, context, _ = fit(workflow, point_of(stored, workflow, store), stored.run.fingerprint, migrate)
        else:
            point = _caught_up(point, stored, claimed)
            stored = _claimed_tail(stored, claimed)
    if stored.run.status is RunStatus.DONE:  # another worker finished it meanwhile
        return await reopen(workflow, run_id, store, migrate, options)
    options, given = _budgeted(options, stored, workflow)
    path = _path_of(stored, store)
    spent = _spent(stored, store)  # the budgets count earlier steps' calls
    wait = stored.run.wait
    # A run that waited keeps its deadline in the wait it continues in (a migration into a renamed
    # wait too): a deploy never lengthens a person's window.
    waits_still = wait is not None and (wait.state == point.state or workflow.plans[point.state].wait is not None)
    queued = {e.seq for e in stored.inbox if e.consumed_step is None}
    state = RunState(point.state, point.actions_run, dict(point.visits), dict(point.traversals),
                     frozenset(point.written), [(e.seq, e.event, e.payload) for e in point.inbox],
                     wait.deadline if waits_still and wait is not None else None,
                     spent.tokens, spent.cost, stored.run.restarts,
                     frozenset(queued - {e.seq for e in point.inbox}), dict(stored.run.trace))
    journal = Durable(
        store, run_id, stored.run.epoch, fingerprint_of(workflow) or stored.run.fingerprint,
        created_at=stored.run.created_at, initial_written=list(stored.run.initial_written),
        recorded=_recorded(stored, point), parent=stored.run.parent, parent_step=stored.run.parent_step)
    journal.unmarked = not fresh
    journal.spent = spent
    journal.snapshot_at = stored.snapshot_at
    journal.size = _items(stored.context)
    # Under a changed workflow (or migrated) the context in memory may differ from what the store
    # rebuilds (a default filled in, a type converted): the first commit stores it whole.
    since_snapshot = stored.steps[stored.snapshot_at - stored.first_step:]
    journal.since = -1 if changed else sum(
        _items(s.delta) + sum(_ops.size(o) for o in s.ops.values()) + len(s.unset) for s in since_snapshot)
    journal.reshaped = any(reshaping(s.ops) for s in since_snapshot if s.ops)
    return Run.restore(workflow, context, state, journal=journal, path=path, owned=True, max_steps_given=given,
                       run_id=run_id, store=store, **options)


def _claimed_tail(looked: StoredRun, claimed: StoredRun) -> StoredRun:
    """The run as loaded before the claim, with what the claim read: the claimed record, the next
    step's journal rows and the events not consumed (the claim reads no history, no context)."""
    return looked.model_copy(update={"run": claimed.run, "calls": claimed.calls, "inbox": claimed.inbox})


async def _reloaded(store: Store, claimed: StoredRun) -> StoredRun:
    """The run loaded again after a claim that found it moved on since the look: as this worker
    claimed it (``RunFenced`` when another worker claimed or committed it since, as its commits would be)."""
    run_id = claimed.run.run_id
    stored = await settled(store.load_tail(run_id))
    if (stored.run.epoch, stored.run.next_step) != (claimed.run.epoch, claimed.run.next_step):
        raise RunFenced(run_id, claimed.run.next_step, f"run {run_id!r} was taken by another worker while this one "
                        "claimed it; this worker stops")
    return stored


def _path_of(stored: StoredRun, store: Store) -> list[Step] | Steps:
    """The run's path: the steps loaded, and before them (a tail load) the earlier steps, read from
    ``store`` when first needed."""
    first = stored.first_step
    records = stored.steps
    if not first:
        return [recorded_step(s) for s in records]
    run_id = stored.run.run_id

    def earlier() -> list[Step]:
        # The loaded steps too: made Steps only when the path is read (a resume needs none of them).
        return [recorded_step(s) for s in (*store.load_steps(run_id, 0, first).result(), *records)]

    return Steps(earlier=first + len(records), load=earlier)


def _spent(stored: StoredRun, store: Store) -> Spent:
    """What the run's committed steps spent on model calls: from its record (version 3), or summed
    over its steps (a record written before)."""
    if stored.run.spent is not None:
        return stored.run.spent
    steps = stored.steps if not stored.first_step else store.load(stored.run.run_id).result().steps
    usage = Usage.of(ModelCall.from_dict(c) for s in steps for c in s.model_calls)
    return Spent(tokens=usage.total_tokens, cost=usage.cost or 0.0)


def _caught_up(point: ResumePoint, looked: StoredRun, claimed: StoredRun) -> ResumePoint:
    """``point`` (made from ``looked``, maybe migrated) with what other workers wrote between that
    look and the claim, at the same next step: journal rows of that step (a worker that started it
    wrote an intent, or an outcome: answered from them, an at_most_once call is never made again)
    and events delivered meanwhile (an event in the inbox when the run continues is taken, even if
    its timeout passed meanwhile)."""
    before = {(c.step, c.call): c for c in looked.calls}
    rows = {(c.step, c.call): c for c in claimed.calls if c.step >= claimed.run.next_step}
    news = {k for k, c in rows.items() if before.get(k) != c}
    seen = {e.seq for e in looked.inbox}
    events = [QueuedEvent(seq=e.seq, event=e.event, payload=e.payload)
              for e in claimed.inbox if e.consumed_step is None and e.seq not in seen]
    if not news and not events:
        return point
    fresh = {(c.step, c.call): c for c in point_of(claimed).calls}
    calls = [c for c in point.calls if (c.step, c.call) not in news] + [fresh[k] for k in sorted(news)]
    calls.sort(key=lambda c: (c.step, c.call))
    return point.model_copy(update={"calls": calls, "inbox": [*point.inbox, *events]})


def _ready(workflow: Program[Any], point: ResumePoint, stored: StoredRun, options: ResumeOptions[Any]) -> bool:
    """Whether a waiting run (as ``point``, checked) can go on now: its state no longer waits, its
    event is in its inbox, or its timeout passed on the run's clock."""
    wait = workflow.plans[point.state].wait
    if wait is None:
        return True
    if any(e.event == wait.event for e in point.inbox):
        return True
    deadline = stored.run.wait.deadline if stored.run.wait is not None else None
    return deadline is not None and wall_time(checked_clock(options.get("clock"))) >= deadline


def _paused(workflow: Program[Any], stored: StoredRun, store: Store, point: ResumePoint, context: BaseModel, *,
            options: ResumeOptions[Any]) -> Run[Any]:
    """A waiting run that cannot go on yet, as a Run whose result says so (nothing is claimed)."""
    wait = workflow.plans[point.state].wait
    assert wait is not None
    run_id = point.run_id
    path = _path_of(stored, store)
    result = RunResult(workflow.name, run_id, point.state, Outcome.WAITING, context,
                       path if isinstance(path, Steps) else tuple(path),
                       f"waiting in {point.state!r} for event {wait.event!r}", None, workflow, wait.event)
    budgeted, given = _budgeted(options, stored, workflow)
    return Run.restore(workflow, context, RunState(point.state), path=path, result=result, run_id=run_id,
                       max_steps_given=given, **budgeted)


# --- delivering, forking, replaying -------------------------------------------------------------
def _plain(value: Any) -> Any:
    """A ``str`` subclass as the plain ``str`` it holds: run ids and event names are compared,
    hashed and shown, so their own ``__eq__``/``__hash__``/``__repr__`` must never run."""
    return str.__str__(value) if isinstance(value, str) else value


def _wait_for(workflow: Program[Any], event: object) -> Any:
    waits = {p.wait.event: p.wait for p in workflow.plans.values() if p.wait is not None}
    wait = waits.get(event) if isinstance(event, str) else None
    if wait is None:
        known = ", ".join(repr(e) for e in sorted(waits)) or "none"
        raise ValueError(f"workflow {workflow.name!r} waits for no event {event!r}; its events: {known}")
    return wait


async def deliver(workflow: Program[Any], run_id: str, event: str, payload: Any, *, store: Store,
                  options: ResumeOptions[Any]) -> RunResult[Any] | None:
    """Commit ``event`` to the run's inbox; continue the run if it waits for it (see ``compiled.deliver``)."""
    _require_store(store)
    run_id, event = _plain(run_id), _plain(event)
    wait = _wait_for(workflow, event)
    value = wait.payload.model_validate(payload)  # ValidationError: nothing written
    data = value.model_dump(mode="json")
    bad = non_finite(value.model_dump())  # the Python form: the JSON form turns some infinities into null
    if bad is not None:
        raise ValueError(f"event {event!r}: payload field {bad!r} is not a finite number (NaN or infinity), which "
                         "JSON cannot hold: give a finite number; nothing was delivered")
    stored = await settled(store.load_tail(run_id))
    _same_workflow(workflow, run_id, stored.run.workflow)
    check_storable(workflow.context_type, store.secrets, run_id)  # secrets it cannot keep or read: refused
    # Before the event is committed, not after: secrets it cannot read, and a workflow the run does
    # not fit (whatever its status: it will be continued under some workflow), raise with nothing
    # delivered. An ended run takes no events (the store says so, writing nothing).
    if stored.run.status is not RunStatus.DONE:
        fit(workflow, point_of(stored, workflow, store), stored.run.fingerprint, None,
            advice="nothing was delivered: deliver with the workflow that started the run (deliver takes "
            "no migrate=), or resume it with migrate= first")
        _check_options(workflow, run_id, store, options=options, stored=stored)
    else:
        _opened(workflow, stored.context, store, run_id)
    seq = await settled(store.deliver(run_id, event, data))
    # Continue the run only if it waits: a live worker is never preempted. A run still busy in an
    # earlier step re-reads its inbox in the very transaction that would store it as waiting, so
    # either it takes the event itself or it is waiting by the time this claim looks. A run seen
    # waiting above leaves that only through a claim, which claim_waiting sees, so that look (with
    # the event just committed) serves; a run seen running is looked at again, after the commit.
    seen = None
    if stored.run.status is RunStatus.WAITING:
        seen = stored.model_copy(update={"inbox": [*stored.inbox, InboxRecord(seq=seq, event=event, payload=data,
                                                                              at=time.time())]})
    run = await _reopen(workflow, run_id, store, None, options, waiting_only=True, stored=seen)
    if run is None:
        return None  # running elsewhere (or crashed): it takes the event when it reaches the wait
    return run.result if run.result is not None else await run.run_to_end()


async def wake_due(workflow: Program[Any], store: Store, options: ResumeOptions[Any]) -> list[RunResult[Any]]:
    """Continue every waiting run of ``workflow`` whose wait can go on now: its timeout passed on
    the run's clock (``clock=``'s wall time), or its event is in its inbox. Each is claimed only if
    it is still waiting, so wakers running at once (or a delivery) never take a run twice."""
    _require_store(store)
    now = wall_time(checked_clock(options.get("clock")))
    due = await settled(store.due_runs(workflow.name, now))
    # Up to _WAKE_AT_ONCE runs continue at once: their commits share transactions (group commit).
    gate = asyncio.Semaphore(_WAKE_AT_ONCE)

    async def wake(run_id: str) -> RunResult[Any] | None:
        async with gate:
            run = None
            try:
                run = await _reopen(workflow, run_id, store, None, options.copy(), waiting_only=True)
                if run is None:
                    return None  # a delivery or another waker took it first
                return run.result if run.result is not None else await run.run_to_end()
            except Exception as exc:  # one run that cannot go on does not stop the others
                if run is not None and run.result is not None:
                    # An error no transition routes: the run ended in its failure terminal, committed,
                    # and raised it (raise_errors). Its result, like any other.
                    return run.result
                if not isinstance(exc, StateMachineAgentError):
                    raise  # bad options (a TypeError naming the option): every run would fail the same way
                _log.warning("wake_due: run %r of workflow %r could not continue: %s", run_id, workflow.name,
                             _describe(exc)[:500], extra={"workflow": workflow.name, "run_id": run_id})
                return None

    woken = await asyncio.gather(*(wake(run_id) for run_id in due))
    return [r for r in woken if r is not None]


_WAKE_AT_ONCE = 64
"""How many due runs one ``wake_due`` continues concurrently."""


async def fork(workflow: Program[Any], run_id: str, *, at_step: int, patch: dict[str, Any] | None, store: Store,
               new_run_id: str | None, options: ResumeOptions[Any]) -> RunResult[Any]:
    """Start a new run from ``run_id`` before step ``at_step`` (see ``compiled.fork``)."""
    _require_store(store)
    run_id, new_run_id = _plain(run_id), _plain(new_run_id)
    if patch is not None and not isinstance(patch, dict):
        raise TypeError(f"patch={patch!r}: give a dict of context fields to change")
    if isinstance(at_step, bool) or not isinstance(at_step, int):
        raise TypeError(f"at_step={at_step!r}: give a step number")
    if new_run_id is not None and (type(new_run_id) is not str or not new_run_id or len(new_run_id) > 200):
        raise TypeError(f"new_run_id={safe_repr(new_run_id)}: give a non-empty string of at most 200 characters, "
                        "or None for a random one")
    stored = await settled(store.load(run_id, at_step=at_step))
    src = stored.run
    _same_workflow(workflow, run_id, src.workflow)
    steps = stored.steps[:at_step]
    state = stored.steps[at_step].state if at_step < len(stored.steps) else src.state
    context = dict(stored.context)
    unknown = sorted(set(patch or {}) - set(workflow.field_names))
    if unknown:
        raise ValueError(f"patch names fields {unknown} that {workflow.context_type.__name__} does not have")
    secrets = getattr(store, "secrets", None)
    check_storable(workflow.context_type, secrets, new_run_id or run_id)
    # A patched secret is not read: a fork can give again a secret that cannot be read back.
    opened = _opened(workflow, context, store, run_id, skip=patch or ())
    written = set(src.initial_written)
    visits: dict[str, int] = {}
    traversals: dict[str, int] = {}
    for s in steps:
        if s.ran:
            visits[s.state] = visits.get(s.state, 0) + 1
        if s.kind != "fail":
            traversals[s.transition] = traversals.get(s.transition, 0) + 1
        if s.kind == "transition":
            written.update(s.writes)
    if patch:
        model = workflow.context_type
        # The stored JSON and the patch, validated together (the model's __dict__ would hold UNSET values).
        try:
            validated = model.model_validate({**opened, **patch})  # ValidationError names the bad field
        except ValidationError as exc:
            stored_fields = [e for e in exc.errors() if not e["loc"] or e["loc"][0] not in patch]
            if not stored_fields:
                raise  # the patch's own fault: pydantic's error names the field
            # The stored context no longer fits a changed model: the run's fault, like a resume's.
            detail = pydantic_errors(stored_fields, "(context)")
            raise IncompatibleRun(run_id, [Problem(
                ResumeCode.BAD_CONTEXT, f"the stored context does not validate against {model.__name__}: {detail}")],
                "nothing was stored: patch= the fields named, or fork with the workflow that started it") from None
        patched, _ = dump_fields(validated, patch.keys(), secrets)
        context.update(patched)
        opened.update({k: validated.__dict__[k] for k in patch if k in patched})
        written.update(patch)
    point = ResumePoint(run_id=new_run_id or "", state=state, context=opened, written=sorted(written),
                        visits=visits, traversals=traversals, actions_run=sum(1 for s in steps if s.ran),
                        next_step=at_step)
    try:  # a full check: the patch may unset what is read
        fit(workflow, point, "", None)
    except IncompatibleRun as exc:
        raise IncompatibleRun(run_id, exc.problems, "nothing was stored: fork it with the workflow that "
                              "started it, or patch= what the problems name") from None
    new_id = new_run_id or f"{run_id}~{at_step}~{os.urandom(3).hex()}"
    rec = run_row(
        run_id=new_id, workflow=workflow.name, fingerprint=fingerprint_of(workflow) or src.fingerprint,
        status=RunStatus.RUNNING, state=state, next_step=at_step, epoch=1,
        counters={"actions_run": point.actions_run, "visits": visits, "traversals": traversals},
        written=sorted(written), initial_written=list(src.initial_written), max_steps=src.max_steps,
        max_steps_given=bool(src.max_steps_given),
        created_at=time.time(), updated_at=time.time(), parent=run_id, parent_step=at_step)
    await settled(store.fork(run_id, at_step, rec, context))
    run = await reopen(workflow, new_id, store, None, options, fresh=True)
    return run.result if run.result is not None else await run.run_to_end()


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayReport:
    """What ``compiled.replay`` found: the recorded run followed by the current code, step by step,
    with every policy answer and tool result taken from the record (no tool, model or person is
    called), up to the first step where the code now does something else."""

    run_id: str
    matched: int
    """Steps replayed that did what the record says."""
    recorded: int
    """Steps in the record."""
    diverged_at: int | None = None
    """The first step that differs, or ``None``."""
    expected: dict[str, Any] | None = None
    """That step as recorded."""
    got: dict[str, Any] | None = None
    """That step as the current code takes it."""
    reason: str = ""
    calls_replayed: int = 0
    """Tool calls answered from the journal."""
    call: int | None = None
    """The call of the diverging step the journal could not answer, if that is where it diverged."""

    @property
    def ok(self) -> bool:
        """The current code took every recorded step the same way."""
        return self.diverged_at is None

    @property
    def error(self) -> NondeterminismError | None:
        """The divergence as an exception (``None`` when the replay matched): what
        ``replay(..., raise_on_divergence=True)`` raises."""
        if self.diverged_at is None:
            return None
        return NondeterminismError(self.run_id, self.diverged_at, self.call, self.expected, self.got,
                                   f"run {self.run_id!r} diverges from its record at step {self.diverged_at}"
                                   f"{'' if self.call is None else f' call {self.call}'}: {self.reason} (recorded: "
                                   f"{self.expected}; now: {self.got})")

    def __str__(self) -> str:
        if self.ok:
            return (f"run {self.run_id!r}: {self.matched} of {self.recorded} recorded steps replayed the same "
                    f"({self.calls_replayed} tool calls from the journal)")
        return (f"run {self.run_id!r} diverges at step {self.diverged_at}: {self.reason} "
                f"(recorded: {self.expected}; now: {self.got})")


class _Stop(BaseException):
    """Ends a replay: never routed by the runner, never caught by user code that catches Exception."""

    def __init__(self, reason: str = "", expected: dict[str, Any] | None = None,
                 got: dict[str, Any] | None = None, step: int = 0, call: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.expected, self.got, self.step, self.call = reason, expected, got, step, call


class _Replay:
    """A journal that answers from a record and compares each step with it, writing nothing."""

    __slots__ = ("calls", "codec", "context", "replayed", "routes", "run_id", "secrets", "steps", "unmarked")

    def __init__(self, stored: StoredRun, routes: dict[str, type[BaseException]], digests: Digests,
                 codec: SecretCodec | None, context: dict[str, Any]) -> None:
        self.context = context
        """The record's context as JSON, rebuilt step by step as the replay goes: what a step that
        stored operations stored, whole."""
        self.run_id = stored.run.run_id
        self.routes = routes
        """Each error transition's error type, by transition name."""
        self.steps = stored.steps
        self.calls = {(c.step, c.call): c for c in stored.calls}
        self.replayed = 0
        self.secrets: SecretCodec | None = digests
        """What the replay's secret fields are compared as (digests: tokens differ every time)."""
        self.codec = codec
        """The store's codec, which opens journaled secret results."""
        self.unmarked = False

    def delta(self, context: BaseModel, fields: Any, ops: dict[str, Any] | None = None) -> Delta:
        # Compared whole: the record's fields are rebuilt whole as the replay goes (see commit).
        data, unset = dump_fields(context, fields, self.secrets)
        return data, unset, {}

    async def mark_started(self) -> None:
        return None

    async def call(self, tools: ToolRunner, tool: Tool, *, step: int, index: int, key: str,
                   arguments: dict[str, Any], run_id: str) -> Any:
        rec = self._answer(tool.name, step, index)
        self.replayed += 1
        return tool.load_result(_open_result(tool.name, rec.result, self.codec, run_id))

    async def memo(self, name: str, compute: Callable[[], Awaitable[Any]], *, step: int, index: int,
                   key: str) -> Any:
        rec = self._answer(name, step, index)
        self.replayed += 1
        return rec.result

    def _answer(self, name: str, step: int, index: int) -> CallRecord:
        """The journal's answer to call ``index`` of ``step``; when the record has none because the
        step failed there (a tool or model error, an outcome left unknown, a ``reconcile`` that
        raised), the step's recorded error is raised again, as the run saw it."""
        rec = self.calls.get((step, index))
        if rec is not None and rec.tool == name and rec.status is CallStatus.DONE:
            return rec
        if rec is None or rec.tool == name:
            recorded = self.steps[step] if step < len(self.steps) else None
            if recorded is not None and recorded.error_type is not None:
                raise self._recorded_error(recorded)
        raise _Stop(f"call {index} of step {step} is to {name!r}, which the journal does not answer",
                    None if rec is None else {"tool": rec.tool, "status": str(rec.status)}, {"tool": name}, step,
                    index)

    def _recorded_error(self, recorded: Any) -> BaseException:
        """The recorded step's error, as an exception its recorded route takes again: an instance of
        the route's error type (under the recorded type's name), made without running its ``__init__``."""
        name = recorded.error_type or "Exception"
        text = recorded.error or ""
        if text.startswith(f"{name}: "):
            text = text[len(name) + 2:]
        if name == "EffectOutcomeUnknown":
            return EffectOutcomeUnknown("?", "?", text)
        # Unrouted in the record: a plain Exception under the recorded name (nothing routes it now
        # either, or the record would show the route).
        route = self.routes.get(recorded.transition) if recorded.kind == "error" else None
        base: type[BaseException] = route if route is not None else Exception
        cls: type[BaseException] = base
        if base.__name__ != name:
            try:
                cls = type(name, (base,), {"__module__": base.__module__})
            except Exception:  # a type that cannot be subclassed: its own name is shown
                cls = base
        error: BaseException = BaseException.__new__(cls)
        error.args = (text,)
        return error

    async def commit(self, run: Run[Any], step: Step, reason: str | None,
                     wait: tuple[str, str, float | None] | None = None, *,
                     delta: Delta = ({}, [], {}), consume: int | None = None
                     ) -> list[tuple[int, str, Any]]:
        written = delta[0]
        rec = self.steps[step.number] if step.number < len(self.steps) else None
        got = {"state": step.state, "target": step.target, "transition": step.transition, "kind": str(step.kind),
               "writes": sorted(step.writes), "delta": written,
               "error_type": None if step.error is None else type(step.error).__name__}
        if rec is None:
            raise _Stop("the record ends before this step", None, got, step.number)
        rebuild(self.context, rec, self.run_id)
        whole = {**rec.delta, **{f: self.context[f] for f in rec.ops}} if rec.ops else rec.delta
        expected = {"state": rec.state, "target": rec.target, "transition": rec.transition, "kind": str(rec.kind),
                    "writes": sorted(rec.writes), "delta": whole, "error_type": rec.error_type}
        if got != expected:
            what = next(k for k in expected if expected[k] != got[k])
            raise _Stop(f"its {what} differs", expected, got, step.number)
        if step.number + 1 == len(self.steps):
            raise _Stop()  # every recorded step matched
        return []

    async def suspend(self, run: Run[Any], state: str, event: str, deadline: float | None
                      ) -> list[tuple[int, str, Any]]:
        return []


class _ReplayInbox(list[tuple[int, str, Any]]):
    """The recorded inbox as a replay's wait states see it: each event only from the step that
    consumed it in the record on, and an event the record never consumed never. Giving a replay
    the whole inbox at once would let a wait take an event that came only after it timed out in
    the record (so diverge where the code did not change)."""

    def __init__(self, events: Any, at: int, run: list[Any]) -> None:
        taken = sorted((e for e in events if e.consumed_step is not None and e.consumed_step >= at),
                       key=lambda e: e.consumed_step)
        super().__init__((e.seq, e.event, e.payload) for e in taken)
        self._step = {e.seq: e.consumed_step for e in taken}
        self._run = run

    def __iter__(self) -> Any:
        now = len(self._run[0].path) if self._run else 0
        for item in super().__iter__():
            # Not yet: a name no wait has (the index stays that of the list, for del).
            yield item if self._step[item[0]] <= now else (item[0], "", None)


class _ReplayClock(SystemClock):
    """Wall time for wait states only: past a wait's deadline exactly when the record timed out."""

    def __init__(self, steps: list[Any], run: list[Any]) -> None:
        self._steps, self._run = steps, run

    def wall(self) -> float:
        i = len(self._run[0].path) if self._run else 0
        timed_out = i < len(self._steps) and self._steps[i].error_type == "WaitTimedOut"
        return _AFTER_EVERY_DEADLINE if timed_out else 0.0


_AFTER_EVERY_DEADLINE = 1e300
"""A wall time past any deadline a store keeps (and finite, as every clock's wall time must be)."""


async def replay(workflow: Program[Any], run_id: str, store: Store, options: ResumeOptions[Any]) -> ReplayReport:
    """Follow a recorded run with the current code (see ``compiled.replay``)."""
    _require_store(store)
    run_id = _plain(run_id)
    stored = await settled(store.load(run_id))
    _same_workflow(workflow, run_id, stored.run.workflow)
    at = stored.run.parent_step or 0
    start = await settled(store.load(run_id, at_step=at))
    steps = stored.steps
    if at >= len(steps):
        return ReplayReport(run_id, 0, len(steps) - at)
    holder: list[Run[Any]] = []

    def policy(decision: Any) -> str:
        i = len(holder[0].path)
        return steps[i].transition if i < len(steps) else ""

    context = workflow.context_type.model_validate(_opened(workflow, start.context, store, run_id))
    _check_secret_results(stored, store, since=at)
    before = steps[:at]
    written = set(stored.run.initial_written)
    visits: dict[str, int] = {}
    traversals: dict[str, int] = {}
    for s in before:
        if s.ran:
            visits[s.state] = visits.get(s.state, 0) + 1
        if s.kind != "fail" and s.transition in workflow.edge_names:
            traversals[s.transition] = traversals.get(s.transition, 0) + 1
        if s.kind == "transition":
            written.update(s.writes)
    digests = Digests()  # the record's secrets and the replay's compare as digests: tokens differ every time
    if secret_fields(workflow.context_type).top:
        codec = getattr(store, "secrets", None)
        stored = stored.model_copy(update={"steps": [
            s.model_copy(update={"delta": redigest(workflow.context_type, s.delta, codec, digests, run_id)})
            for s in stored.steps]})
    routes = {e.spec.name: e.spec.error for p in workflow.plans.values() for e in p.errors}
    journal = _Replay(stored, routes, digests, getattr(store, "secrets", None), json.loads(json.dumps(start.context)))
    state = RunState(steps[at].state, sum(visits.values()), visits, traversals, frozenset(written),
                     _ReplayInbox(stored.inbox, at, holder))
    run: Run[Any] = Run.restore(workflow, context, state, journal=journal,
                                path=[recorded_step(s) for s in before], owned=bool(at), run_id=run_id,
                                policy=policy, raise_errors=False, clock=_ReplayClock(steps, holder),
                                max_steps=stored.run.max_steps, hooks=options.get("hooks", ()))
    holder.append(run)
    try:
        await run.run_to_end()
    except _Stop as stop:
        if not stop.reason:
            return ReplayReport(run_id, len(steps) - at, len(steps) - at, calls_replayed=journal.replayed)
        return ReplayReport(run_id, stop.step - at, len(steps) - at, stop.step, stop.expected, stop.got,
                            stop.reason, journal.replayed, stop.call)
    n = len(run.path)
    return ReplayReport(run_id, n - at, len(steps) - at, n, None, None,
                        "the run ended before the record does", journal.replayed)


def check_runs(workflow: Program[Any], store: Store) -> list[IncompatibleRun]:
    """Every stored run of ``workflow`` that it would refuse to continue, as the IncompatibleRun it
    would raise (see ``compiled.check_runs``). Reads only."""
    _require_store(store)
    refused: list[IncompatibleRun] = []
    for record in store.list_runs(workflow.name).result():
        problems = problems_of(workflow, record.run_id, store)
        if problems:
            refused.append(IncompatibleRun(record.run_id, problems))
    return refused


def problems_of(workflow: Program[Any], run_id: str, store: Store) -> list[Problem]:
    """Every reason stored run ``run_id`` cannot continue under ``workflow`` (empty: it fits);
    a run that cannot be read at all (damaged, or its secrets do not open) is one problem."""
    try:
        stored = store.load(run_id).result()
        _same_workflow(workflow, run_id, stored.run.workflow)
        ended = stored.run.status is RunStatus.DONE
        point = point_of(stored, workflow, store)
        if ended:
            _, problems = ended_compatibility(workflow, point)
        else:
            _, problems = compatibility(workflow, point, stored.run.fingerprint)
            _check_secret_results(stored, store)
    except IncompatibleRun as exc:
        return list(exc.problems)
    except (StoreError, SecretUnreadable) as exc:
        return [Problem(ResumeCode.UNREADABLE, f"the stored run cannot be read: {_describe(exc)[:500]}")]
    return problems
