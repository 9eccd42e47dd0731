"""The writer thread of an SQL store: one connection, owned by one thread, runs every request in the
order it was submitted, and resolves each request's future.

Requests that arrive while a transaction is being committed wait, and then go together in the next
transaction: one fsync commits the steps of many runs (group commit), and each run still waits for its
own step's commit before starting the next. Each request runs under its own savepoint, so one
fenced-out commit does not undo the others of its group. What a request asks to do once its
transaction committed (``after_commit``) runs before its future resolves.

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
        self._queue: queue.SimpleQueue[tuple[Op, Future[Any], bool] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def submit(self, op: Callable[[Any], T], closed: str, *, durable: bool = True) -> Future[T]:
        """Queue ``op``; StoreError(``closed``) once the writer is closed. ``durable=False``: its commit
        need not reach the disk by itself (it survives a crash of the process, and the next durable
        commit syncs it; only a power cut before that loses it)."""
        future: Future[T] = Future()
        with self._lock:
            if self.closed:
                raise StoreError(closed)
            self._queue.put((op, future, durable))
        return future

    def close(self) -> None:
        """Finish what was submitted, then close the connection (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._queue.put(None)
        if threading.current_thread() is not self.thread:
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
            self._run_batch(conn, batch)
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
