"""The writer thread of an SQL store: one connection, owned by one thread, runs every request in the
order it was submitted, and resolves each request's future.

Requests that arrive while a transaction is being committed wait, and then go together in the next
transaction: one fsync commits the steps of many runs (group commit), and each run still waits for its
own step's commit before starting the next. Each request runs under its own savepoint, so one
fenced-out commit does not undo the others of its group. What a request asks to do once its
transaction committed (``after_commit``) runs before its future resolves.

A request of the same run as the one before it, submitted while the writer has nothing queued or
running (one run alone on the store, stepping), runs in the submitting thread instead (``key=``): two
thread switches and a wake-up of the caller's event loop cost more than the commit itself. A request of
another run, or one submitted while anything is queued, goes to the thread, so concurrent runs still
share their commits.

Nothing here knows a table: a request is a function of the connection, and the only SQL is the
dialect's transaction statements (:class:`~._sqldialect.Dialect`), so the same writer serves any
database with a DB-API connection.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from ..errors import StoreError
from ._sqldialect import Dialect

__all__ = ["BATCH", "Writer"]

T = TypeVar("T")
Op = Callable[[Any], Any]
"""A request: a function of the connection, run inside the writer's transaction."""

BATCH = 512
"""Requests per transaction at most."""


class Writer:
    """Runs requests on ``conn`` in one thread, in submission order, in group commits."""

    def __init__(self, conn: Any, sql: Dialect, *, name: str, readonly: bool,
                 translate: Callable[[BaseException], BaseException],
                 after_commit: list[Callable[[], None]], on_close: Callable[[], None],
                 relax: tuple[str, str] | None = None) -> None:
        self.conn = conn
        self.sql = sql
        self.readonly = readonly
        self.translate = translate
        """The database's errors as the store's (StoreError and its kinds)."""
        self.after_commit = after_commit
        """The list a request appends to what must run once its transaction committed."""
        self.on_close = on_close
        """Runs in the thread after the connection closed."""
        self.relax = relax
        """Statements run before and after a transaction whose requests all need no fsync of their own
        (``submit(durable=False)``): the next durable commit syncs what they wrote too."""
        self.closed = False
        self._pending = 0
        """Requests queued or running in the thread (under ``_lock``)."""
        self._last: object = None
        """The key of the request submitted last."""
        self._conn_lock = threading.Lock()
        """Held while a batch runs on the connection, in the thread or inline."""
        self._queue: queue.SimpleQueue[tuple[Op, Future[Any], bool] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        """Started by the first request that is queued (a lone run's store may never need it)."""

    def submit(self, op: Callable[[Any], T], closed: str, *, durable: bool = True,
               key: object = None) -> Future[T]:
        """Queue ``op``; StoreError(``closed``) once the writer is closed. ``durable=False``: its commit
        need not reach the disk by itself (it survives a crash of the process, and the next durable
        commit syncs it; only a power cut before that loses it). ``key`` (a run's id): a request with
        the key of the request before it runs at once in this thread when nothing is queued or running;
        its future is then done when this returns."""
        future: Future[T] = Future()
        with self._lock:
            if self.closed:
                raise StoreError(closed)
            inline = (key is not None and self._last in (key, None) and self._pending == 0
                      and self._conn_lock.acquire(blocking=False))
            self._last = key
            if not inline:
                self._pending += 1
                self._queue.put((op, future, durable))
                if self.thread.ident is None:
                    self.thread.start()
                return future
        try:
            self._run_inline(op, future, durable)
        finally:
            self._conn_lock.release()
        return future

    def _run_inline(self, op: Op, future: Future[Any], durable: bool) -> None:
        try:
            self._run_batch(self.conn, [(op, future, durable)])
        except BaseException as exc:  # KeyboardInterrupt in the caller's thread: nothing half-done stays
            with contextlib.suppress(Exception):
                if self.conn.in_transaction:
                    self.conn.execute(self.sql.rollback)
            if not future.done():
                future.set_exception(StoreError(f"interrupted before its commit ({type(exc).__name__}); "
                                                "nothing of it was written"))
            raise

    def close(self) -> None:
        """Finish what was submitted, then close the connection (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            started = self.thread.ident is not None
            if started:
                self._queue.put(None)
        if not started:  # nothing was ever queued: close here (after an inline request still running)
            with self._conn_lock:
                self.conn.close()
            self.on_close()
        elif threading.current_thread() is not self.thread:
            self.thread.join()

    def _serve(self) -> None:
        q = self._queue
        conn = self.conn
        stop = False
        while not stop:
            first = q.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < BATCH:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            with self._conn_lock:
                try:
                    self._run_batch(conn, batch)
                finally:
                    with self._lock:
                        self._pending -= len(batch)
        with self._conn_lock:
            conn.close()
        self.on_close()

    def _run_batch(self, conn: Any, batch: list[tuple[Op, Future[Any], bool]]) -> None:
        running = [(op, f, durable) for op, f, durable in batch if f.set_running_or_notify_cancel()]
        if not running:
            return
        live = [(op, f) for op, f, _ in running]
        sql = self.sql
        outcomes: list[tuple[bool, Any]] = []
        after: list[list[Callable[[], None]]] = []
        pending = self.after_commit
        relax = None if any(durable for _, _, durable in running) else self.relax
        try:
            if relax is not None:
                conn.execute(relax[0])
            conn.execute(sql.begin_read if self.readonly else sql.begin_write)
            for op, _ in live:
                conn.execute(sql.savepoint)
                pending.clear()
                try:
                    value = op(conn)
                except Exception as exc:
                    conn.execute(sql.rollback_savepoint)
                    conn.execute(sql.release_savepoint)
                    outcomes.append((False, exc))
                    after.append([])
                else:
                    conn.execute(sql.release_savepoint)
                    outcomes.append((True, value))
                    after.append(list(pending))
            pending.clear()
            conn.execute(sql.commit)
        except Exception as exc:  # the transaction failed as a whole: nothing of it is committed
            with contextlib.suppress(Exception):
                conn.execute(sql.rollback)
            error = self.translate(exc)
            for _, f in live:
                f.set_exception(error)
            return
        finally:
            if relax is not None:
                with contextlib.suppress(Exception):
                    conn.execute(relax[1])
        for (_, f), (done, result), then in zip(live, outcomes, after, strict=True):
            ok, value = done, result
            try:
                for action in then:
                    action()
            except StoreError as exc:
                ok, value = False, exc
            if ok:
                f.set_result(value)
            else:
                f.set_exception(self.translate(value))
