"""SQLiteStore: the embedded default store (WAL, ``synchronous=FULL``, one writer thread).

One connection, owned by one thread, does every read and write in the order they were submitted.
Requests that arrive while a transaction is being committed wait, and then go together in the next
transaction: one fsync commits the steps of many runs (group commit), and each run still waits for
its own step's commit before starting the next. Each request runs under its own SAVEPOINT, so one
fenced-out commit does not undo the others of its group.

Every record is stored as JSON with a CRC-32 beside it; a row that fails its checksum, its JSON or
its model raises :class:`~.errors.StoreCorrupted` naming the run and row, and so does a run whose
steps are not exactly ``0 .. next_step-1``: a damaged record never loads as a shorter run. (Damage to
the -wal file is the exception: SQLite's recovery stops at the damaged frame, so the store opens at an
earlier commit, exact and consistent; tests/test_store_damage.py pins it.)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import RunExists, RunFenced, RunNotFound, StoreCorrupted, StoreError
from ..secrets import SecretCodec
from ._base import Store
from ._records import (
    SCHEMA_VERSION,
    CallRecord,
    InboxRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    StoredRun,
)

__all__ = ["MemoryStore", "SQLiteStore"]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

_APPLICATION_ID = 0x534D4131  # "SMA1": marks the file as ours, so another program's database is refused
_BATCH = 512  # requests per transaction at most

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sma_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sma_runs (
    run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, epoch INTEGER NOT NULL, next_step INTEGER NOT NULL,
    status TEXT NOT NULL, updated_at REAL NOT NULL, record TEXT NOT NULL, crc INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS sma_runs_by_workflow ON sma_runs (workflow, updated_at);
CREATE TABLE IF NOT EXISTS sma_steps (
    run_id TEXT NOT NULL, number INTEGER NOT NULL, record TEXT NOT NULL, crc INTEGER NOT NULL,
    PRIMARY KEY (run_id, number));
CREATE TABLE IF NOT EXISTS sma_snapshots (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, context TEXT NOT NULL, crc INTEGER NOT NULL,
    PRIMARY KEY (run_id, step));
CREATE TABLE IF NOT EXISTS sma_journal (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, call INTEGER NOT NULL, record TEXT NOT NULL,
    crc INTEGER NOT NULL, PRIMARY KEY (run_id, step, call));
CREATE TABLE IF NOT EXISTS sma_inbox (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, record TEXT NOT NULL, crc INTEGER NOT NULL,
    consumed_step INTEGER, PRIMARY KEY (run_id, seq));
"""

# Migrations from each older schema version to the next, run in one transaction on open.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


_MAX_DEPTH = 128
"""Deepest nesting a record may have: pydantic's JSON reader stops near 200 levels, so anything deeper
would be written and then never load again. Refused on write instead."""


def _depth_ok(value: Any) -> bool:
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list, tuple)):
            if d >= _MAX_DEPTH:
                return False
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


def _dumps(value: Any) -> str:
    # allow_nan=False: NaN/inf are not JSON, and another store (PostgreSQL's jsonb) would refuse them.
    if not _depth_ok(value):
        raise ValueError(f"a value nests deeper than {_MAX_DEPTH} levels, which the store cannot read back: "
                         "flatten it")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class SQLiteStore(Store):
    """Durable runs in one SQLite file: ``SQLiteStore("runs.db")``.

    ``synchronous="FULL"`` (the default) makes every commit reach the disk before the step that
    follows it starts: a committed step survives a power cut, not just a crash. ``"NORMAL"`` is
    faster and survives a process crash (kill -9) but may lose the last commits on a power cut.
    ``snapshot_every`` steps, a full copy of the context is stored; between them each step stores
    only the fields it wrote. ``busy_timeout`` is how long to wait for another process's write.
    Several processes may share one file: fencing makes sure only one commits each step.
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL", snapshot_every: int = 50,
                 busy_timeout: float = 30.0, secrets: SecretCodec | None = None) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"SQLiteStore(path={path!r}): give a file path (str or pathlib.Path)")
        if synchronous not in ("FULL", "EXTRA", "NORMAL"):
            raise ValueError(f"synchronous={synchronous!r}: use 'FULL' (default), 'EXTRA' or 'NORMAL'")
        if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise ValueError(f"snapshot_every={snapshot_every!r}: give a whole number of steps, at least 1")
        if (isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float))
                or not 0 <= busy_timeout < math.inf):
            raise ValueError(f"busy_timeout={busy_timeout!r}: give a number of seconds >= 0")
        if secrets is not None and not isinstance(secrets, SecretCodec):
            raise TypeError(f"secrets={type(secrets).__name__}(...): give a codec with encrypt(bytes) -> str and "
                            "decrypt(str) -> bytes, such as statemachine_agent.secrets.FernetSecrets")
        self.path = str(path)
        self.snapshot_every = snapshot_every
        self.secrets = secrets
        memory = self.path == ":memory:"
        if not memory:
            parent = Path(self.path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreError(f"cannot open the store {self.path!r}: folder {str(parent)!r} does not exist")
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=busy_timeout)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {self.path!r}: {exc}") from None
        try:
            self._prepare(conn, synchronous, memory)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._queue: queue.SimpleQueue[tuple[Callable[[sqlite3.Connection], Any], Future[Any]] | None] = \
            queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name=f"statemachine-agent store {self.path}",
                                        daemon=True)
        self._thread.start()

    # --- opening --------------------------------------------------------------------------------
    def _prepare(self, conn: sqlite3.Connection, synchronous: str, memory: bool) -> None:
        where = f"the store {self.path!r}"
        try:
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if app not in (0, _APPLICATION_ID) or (tables and "sma_meta" not in tables):
                raise StoreError(f"{where} is an SQLite database of another program (it has no "
                                 "statemachine-agent tables): give a new file or one made by SQLiteStore")
            if not memory:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"{where}: could not switch to WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            conn.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
            row = conn.execute("SELECT value FROM sma_meta WHERE key='schema_version'").fetchone()
            version = SCHEMA_VERSION if row is None else _version(row[0], where)
            if version > SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                raise StoreError(f"{where} has schema version {version}, written by a newer "
                                 f"statemachine-agent (this one reads up to {SCHEMA_VERSION}): upgrade it")
            while version < SCHEMA_VERSION:
                _MIGRATIONS[version](conn)
                version += 1
            conn.execute("INSERT OR REPLACE INTO sma_meta VALUES ('schema_version', ?)", (str(version),))
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise _translate(exc, where) from None

    # --- the writer thread ----------------------------------------------------------------------
    def _submit(self, op: Callable[[sqlite3.Connection], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise StoreError(f"the store {self.path!r} is closed")
            self._queue.put((op, future))
        return future

    def _serve(self) -> None:
        q = self._queue
        conn = self._conn
        stop = False
        while not stop:
            first = q.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < _BATCH:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._run_batch(conn, batch)
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection,
                   batch: list[tuple[Callable[[sqlite3.Connection], Any], Future[Any]]]) -> None:
        live = [(op, f) for op, f in batch if f.set_running_or_notify_cancel()]
        if not live:
            return
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, _ in live:
                conn.execute("SAVEPOINT sma_op")
                try:
                    value = op(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO sma_op")
                    conn.execute("RELEASE sma_op")
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE sma_op")
                    outcomes.append((True, value))
            conn.execute("COMMIT")
        except Exception as exc:  # the transaction failed as a whole: nothing of it is committed
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = _translate(exc, f"the store {self.path!r}") if isinstance(exc, sqlite3.Error) else exc
            for _, f in live:
                f.set_exception(error)
            return
        for (_, f), (ok, value) in zip(live, outcomes, strict=True):
            if ok:
                f.set_result(value)
            else:
                f.set_exception(_translate(value, f"the store {self.path!r}")
                                if isinstance(value, sqlite3.Error) else value)

    def close(self) -> None:
        """Finish what was submitted, then close the connection (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __del__(self) -> None:
        try:  # noqa: SIM105  (not contextlib: at interpreter exit module globals may already be None)
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r}>"

    # --- the operations -------------------------------------------------------------------------
    def create(self, run: dict[str, Any], context: dict[str, Any]) -> Future[None]:
        run_text, ctx_text = _dumps(run), _dumps(context)
        run_id = run["run_id"]

        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute("INSERT INTO sma_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (run_id, run["workflow"], run["epoch"], run["next_step"], run["status"],
                              run["updated_at"], run_text, _crc(run_text)))
            except sqlite3.IntegrityError:
                raise RunExists(run_id) from None
            conn.execute("INSERT INTO sma_snapshots VALUES (?, 0, ?, ?)", (run_id, ctx_text, _crc(ctx_text)))

        return self._submit(op)

    def claim(self, run_id: str) -> Future[StoredRun]:
        def op(conn: sqlite3.Connection) -> StoredRun:
            run = _read_run(conn, run_id)
            if run.status is not RunStatus.DONE:
                # A restart only when the holder before started the step: a claim superseded before
                # it did anything (or a run claimed from a wait) spends none of max_step_restarts.
                restarts = run.restarts + 1 if run.status is RunStatus.RUNNING and run.started else run.restarts
                run = _claimed(conn, run, restarts=restarts, status=run.status)
            return _load(conn, run, None)

        return self._submit(op)

    def claim_waiting(self, run_id: str) -> Future[StoredRun | None]:
        def op(conn: sqlite3.Connection) -> StoredRun | None:
            run = _read_run(conn, run_id)
            if run.status is not RunStatus.WAITING:
                return None  # running (a live worker takes its events at its wait), or ended
            return _load(conn, _claimed(conn, run, restarts=run.restarts, status=RunStatus.RUNNING), None)

        return self._submit(op)

    def mark_started(self, run_id: str, epoch: int) -> Future[None]:
        def op(conn: sqlite3.Connection) -> None:
            run = _read_run(conn, run_id)
            if run.epoch != epoch:
                raise RunFenced(run_id, run.next_step)
            if not run.started:
                run = run.model_copy(update={"started": True})
                text = run.model_dump_json()
                conn.execute("UPDATE sma_runs SET record=?, crc=? WHERE run_id=?", (text, _crc(text), run_id))

        return self._submit(op)

    def commit(self, commit: dict[str, Any]) -> Future[list[InboxRecord]]:
        run = commit["run"]
        step = commit["step"]
        run_text, step_text = _dumps(run), _dumps(step)
        snapshot = commit.get("snapshot")
        snap_text = None if snapshot is None else _dumps(snapshot)
        calls = [(c, _dumps(c)) for c in commit.get("calls", ())]
        consume = commit.get("consume")
        run_id, epoch, number = run["run_id"], commit["epoch"], step["number"]

        def op(conn: sqlite3.Connection) -> list[InboxRecord]:
            status, text = run["status"], run_text
            found = _waited(conn, run, consume)
            if found:  # the event came while the step ran: the run goes on instead of waiting
                status = str(RunStatus.RUNNING)
                text = _dumps({**run, "status": status})
            cur = conn.execute(
                "UPDATE sma_runs SET next_step=?, status=?, updated_at=?, record=?, crc=? "
                "WHERE run_id=? AND epoch=? AND next_step=?",
                (number + 1, status, run["updated_at"], text, _crc(text), run_id, epoch, number))
            if cur.rowcount != 1:
                raise RunFenced(run_id, number)
            conn.execute("INSERT INTO sma_steps VALUES (?, ?, ?, ?)", (run_id, number, step_text, _crc(step_text)))
            if snap_text is not None:
                conn.execute("INSERT OR REPLACE INTO sma_snapshots VALUES (?, ?, ?, ?)",
                             (run_id, number + 1, snap_text, _crc(snap_text)))
            for c, text in calls:
                conn.execute("INSERT OR REPLACE INTO sma_journal VALUES (?, ?, ?, ?, ?)",
                             (run_id, c["step"], c["call"], text, _crc(text)))
            if consume is not None:
                cur = conn.execute("UPDATE sma_inbox SET consumed_step=? WHERE run_id=? AND seq=? AND "
                                   "consumed_step IS NULL", (number, run_id, consume))
                if cur.rowcount != 1:
                    raise RunFenced(run_id, number, f"run {run_id!r}: event {consume} was consumed by "
                                    "another worker; this worker stops")
            return found

        return self._submit(op)

    def suspend(self, run: dict[str, Any], epoch: int, snapshot: dict[str, Any]) -> Future[list[InboxRecord]]:
        run_text, snap_text = _dumps(run), _dumps(snapshot)
        run_id, number = run["run_id"], run["next_step"]

        def op(conn: sqlite3.Connection) -> list[InboxRecord]:
            found = _waited(conn, run, None)
            if found:  # delivered meanwhile: the run does not wait (nothing is written)
                row = conn.execute("SELECT epoch, next_step FROM sma_runs WHERE run_id=?", (run_id,)).fetchone()
                if row is None or row[0] != epoch or row[1] != number:
                    raise RunFenced(run_id, number)
                return found
            cur = conn.execute(
                "UPDATE sma_runs SET status=?, updated_at=?, record=?, crc=? "
                "WHERE run_id=? AND epoch=? AND next_step=?",
                (run["status"], run["updated_at"], run_text, _crc(run_text), run_id, epoch, number))
            if cur.rowcount != 1:
                raise RunFenced(run_id, number)
            conn.execute("INSERT OR REPLACE INTO sma_snapshots VALUES (?, ?, ?, ?)",
                         (run_id, number, snap_text, _crc(snap_text)))
            return []

        return self._submit(op)

    def record_call(self, run_id: str, epoch: int, call: dict[str, Any]) -> Future[None]:
        if not isinstance(run_id, str) or not run_id:
            raise TypeError(f"run_id={run_id!r}: give the run's id, a non-empty string")
        text = _dumps(call)

        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT epoch FROM sma_runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(run_id)
            if row[0] != epoch:
                raise RunFenced(run_id, call["step"])
            conn.execute("INSERT OR REPLACE INTO sma_journal VALUES (?, ?, ?, ?, ?)",
                         (run_id, call["step"], call["call"], text, _crc(text)))

        return self._submit(op)

    def load(self, run_id: str, *, at_step: int | None = None) -> Future[StoredRun]:
        return self._submit(lambda conn: _load(conn, _read_run(conn, run_id), at_step))

    def list_runs(self, workflow: str | None = None) -> Future[list[RunRecord]]:
        def op(conn: sqlite3.Connection) -> list[RunRecord]:
            if workflow is None:
                rows = conn.execute("SELECT run_id, record, crc FROM sma_runs ORDER BY updated_at DESC")
            else:
                rows = conn.execute("SELECT run_id, record, crc FROM sma_runs WHERE workflow=? "
                                    "ORDER BY updated_at DESC", (workflow,))
            return [_parse(RunRecord, text, crc, f"run {rid!r}") for rid, text, crc in rows]

        return self._submit(op)

    def deliver(self, run_id: str, event: str, payload: Any) -> Future[int]:
        if not isinstance(event, str) or not event:
            raise TypeError(f"event={event!r}: give the event's name, a non-empty string")
        payload_text = _dumps(payload)  # refuses what is not JSON before anything is written

        def op(conn: sqlite3.Connection) -> int:
            run = _read_run(conn, run_id)
            if run.status is RunStatus.DONE:
                raise StoreError(f"run {run_id!r} has ended in {run.terminal!r}: it takes no more events")
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM sma_inbox WHERE run_id=?",
                               (run_id,)).fetchone()[0]
            text = _dumps({"seq": seq, "event": event, "payload": json.loads(payload_text), "at": time.time(),
                           "consumed_step": None})
            conn.execute("INSERT INTO sma_inbox VALUES (?, ?, ?, ?, NULL)", (run_id, seq, text, _crc(text)))
            return int(seq)

        return self._submit(op)

    def fork(self, source: str, at_step: int, run: dict[str, Any], context: dict[str, Any]) -> Future[None]:
        run_text, ctx_text = _dumps(run), _dumps(context)
        new = run["run_id"]

        def op(conn: sqlite3.Connection) -> None:
            src = _read_run(conn, source)
            if isinstance(at_step, bool) or not isinstance(at_step, int) or not 0 <= at_step <= src.next_step:
                raise ValueError(f"at_step={at_step!r}: run {source!r} has committed steps 0..{src.next_step - 1}; "
                                 f"fork before one of them, or at {src.next_step}")
            try:
                conn.execute("INSERT INTO sma_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (new, run["workflow"], run["epoch"], run["next_step"], run["status"],
                              run["updated_at"], run_text, _crc(run_text)))
            except sqlite3.IntegrityError:
                raise RunExists(new) from None
            conn.execute("INSERT INTO sma_steps SELECT ?, number, record, crc FROM sma_steps "
                         "WHERE run_id=? AND number<?", (new, source, at_step))
            conn.execute("INSERT INTO sma_journal SELECT ?, step, call, record, crc FROM sma_journal "
                         "WHERE run_id=? AND step<?", (new, source, at_step))
            # Earlier snapshots too: the fork loads (and forks again) before any step it holds.
            conn.execute("INSERT INTO sma_snapshots SELECT ?, step, context, crc FROM sma_snapshots "
                         "WHERE run_id=? AND step<?", (new, source, at_step))
            conn.execute("INSERT INTO sma_snapshots VALUES (?, ?, ?, ?)", (new, at_step, ctx_text, _crc(ctx_text)))

        return self._submit(op)


class MemoryStore(SQLiteStore):
    """A store in memory (an SQLite ``:memory:`` database): the same code and guarantees as
    :class:`SQLiteStore` within one process, gone when it ends. For tests and notebooks."""

    def __init__(self, *, snapshot_every: int = 50, secrets: SecretCodec | None = None) -> None:
        super().__init__(":memory:", snapshot_every=snapshot_every, secrets=secrets)

    def __repr__(self) -> str:
        return "<MemoryStore>"


# --- reading -------------------------------------------------------------------------------------
def _version(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise StoreCorrupted(f"{where}: its schema version {text!r} is not a number: the file is damaged") \
            from None


def _parse(model: type[M], text: object, crc: object, what: str) -> M:
    if not isinstance(text, str) or not isinstance(crc, int) or _crc(text) != crc:
        raise StoreCorrupted(f"{what}: the stored record fails its checksum: the file was damaged or "
                             "changed outside statemachine-agent; nothing of it was loaded")
    try:
        return model.model_validate(json.loads(text, parse_constant=_no_constant))
    except ValueError as exc:
        if not isinstance(exc, ValidationError):
            raise StoreCorrupted(f"{what}: the stored record is not JSON ({exc}); nothing of it was loaded") from None
        raise StoreCorrupted(f"{what}: the stored record does not validate ({exc.error_count()} "
                             f"error(s), first: {exc.errors()[0]['msg']}); nothing of it was loaded") from None
    except RecursionError:
        raise StoreCorrupted(f"{what}: the stored record nests too deeply; nothing of it was loaded") from None
    except ValidationError as exc:
        raise StoreCorrupted(f"{what}: the stored record does not validate ({exc.error_count()} "
                             f"error(s), first: {exc.errors()[0]['msg']}); nothing of it was loaded") from None


def _parse_json(text: object, crc: object, what: str) -> Any:
    if not isinstance(text, str) or not isinstance(crc, int) or _crc(text) != crc:
        raise StoreCorrupted(f"{what}: the stored record fails its checksum: the file was damaged or "
                             "changed outside statemachine-agent; nothing of it was loaded")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise StoreCorrupted(f"{what}: the stored record is not JSON; nothing of it was loaded") from None


def _read_run(conn: sqlite3.Connection, run_id: str) -> RunRecord:
    if not isinstance(run_id, str) or not run_id:
        raise TypeError(f"run_id={run_id!r}: give the run's id, a non-empty string")
    row = conn.execute("SELECT record, crc, epoch, next_step FROM sma_runs WHERE run_id=?", (run_id,)).fetchone()
    if row is None:
        raise RunNotFound(run_id)
    run = _parse(RunRecord, row[0], row[1], f"run {run_id!r}")
    if run.run_id != run_id or run.epoch != row[2] or run.next_step != row[3]:
        raise StoreCorrupted(f"run {run_id!r}: its record disagrees with its row (epoch/next step): the file "
                             "was changed outside statemachine-agent; nothing of it was loaded")
    return run


def _load(conn: sqlite3.Connection, run: RunRecord, at_step: int | None) -> StoredRun:
    run_id = run.run_id
    n = run.next_step
    at = n if at_step is None else at_step
    if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at <= n:
        raise ValueError(f"at_step={at_step!r}: run {run_id!r} has committed steps 0..{n - 1}; give a step "
                         f"number from 0 to {n}")
    steps = [_parse(StepRecord, text, crc, f"run {run_id!r} step {num}")
             for num, text, crc in conn.execute(
                 "SELECT number, record, crc FROM sma_steps WHERE run_id=? ORDER BY number", (run_id,))]
    if [s.number for s in steps] != list(range(n)):
        have = [s.number for s in steps]
        raise StoreCorrupted(f"run {run_id!r} records {n} committed steps but the store holds steps "
                             f"{_ranges(have)}: the file is damaged; nothing of it was loaded")
    calls = [_parse(CallRecord, text, crc, f"run {run_id!r} journal row {s}/{c}")
             for s, c, text, crc in conn.execute(
                 "SELECT step, call, record, crc FROM sma_journal WHERE run_id=? ORDER BY step, call", (run_id,))]
    # The record is written once, at delivery; the consuming step is the column, set in its commit.
    inbox = [_parse(InboxRecord, text, crc, f"run {run_id!r} inbox event {seq}").model_copy(
                 update={"consumed_step": consumed})
             for seq, text, crc, consumed in conn.execute(
                 "SELECT seq, record, crc, consumed_step FROM sma_inbox WHERE run_id=? ORDER BY seq", (run_id,))]
    snap = conn.execute("SELECT step, context, crc FROM sma_snapshots WHERE run_id=? AND step<=? "
                        "ORDER BY step DESC LIMIT 1", (run_id, at)).fetchone()
    if snap is None:
        raise StoreCorrupted(f"run {run_id!r} has no snapshot at or before step {at}: the file is damaged; "
                             "nothing of it was loaded")
    context = _parse_json(snap[1], snap[2], f"run {run_id!r} snapshot at step {snap[0]}")
    if not isinstance(context, dict):
        raise StoreCorrupted(f"run {run_id!r}: its snapshot at step {snap[0]} is not a JSON object")
    for s in steps[snap[0]:at]:
        context.update(s.delta)
        for f in s.unset:
            context.pop(f, None)
    return StoredRun(run=run, steps=steps, calls=calls, inbox=inbox, context=context, at_step=at)


def _claimed(conn: sqlite3.Connection, run: RunRecord, *, restarts: int, status: RunStatus) -> RunRecord:
    """``run`` taken over: its epoch raised (older holders are fenced out), not started yet."""
    run = run.model_copy(update={"epoch": run.epoch + 1, "restarts": restarts, "status": status, "started": False,
                                 "updated_at": time.time()})
    text = run.model_dump_json()
    conn.execute("UPDATE sma_runs SET epoch=?, status=?, updated_at=?, record=?, crc=? WHERE run_id=?",
                 (run.epoch, str(run.status), run.updated_at, text, _crc(text), run.run_id))
    return run


def _waited(conn: sqlite3.Connection, run: dict[str, Any], consumed: int | None) -> list[InboxRecord]:
    """For a run about to be stored as waiting: the unconsumed events of its inbox it waits for
    (read in the transaction that would suspend it, so a delivery is never missed); else none."""
    wait = run.get("wait")
    if run.get("status") != RunStatus.WAITING or not isinstance(wait, dict):
        return []
    run_id = run["run_id"]
    found = []
    for seq, text, crc in conn.execute("SELECT seq, record, crc FROM sma_inbox WHERE run_id=? AND "
                                       "consumed_step IS NULL ORDER BY seq", (run_id,)):
        if seq == consumed:
            continue
        event = _parse(InboxRecord, text, crc, f"run {run_id!r} inbox event {seq}")
        if event.event == wait.get("event"):
            found.append(event)
    return found


def _ranges(numbers: list[int]) -> str:
    if not numbers:
        return "none"
    out, start, prev = [], numbers[0], numbers[0]
    for x in [*numbers[1:], None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(str(start) if start == prev else f"{start}..{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(out)


def _translate(exc: BaseException, where: str) -> BaseException:
    """sqlite3's errors as ours, saying what to do."""
    if not isinstance(exc, sqlite3.Error) or isinstance(exc, StoreError):
        return exc
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return StoreError(f"{where} is locked by another process's write longer than busy_timeout: retry, or "
                          "raise SQLiteStore(..., busy_timeout=)")
    damaged = ("malformed" in text or "not a database" in text
               or type(exc) is sqlite3.DatabaseError)  # sqlite3 raises the bare class for a bad file
    if damaged:
        return StoreCorrupted(f"{where} is damaged ({text}): restore it from a backup; nothing was loaded")
    return StoreError(f"{where}: {text}")
