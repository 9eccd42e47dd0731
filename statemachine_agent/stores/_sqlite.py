"""SQLiteStore: the embedded default store (WAL, ``synchronous=FULL``, one writer thread).

Three parts: the store's operations here (fencing, row checksums, the checks on load), written against
a SQL dialect (:mod:`._sqldialect`, which holds every statement they run: a PostgreSQL store replaces
that dialect, and how a connection is opened); and the writer thread (:mod:`._sqlwriter`), which runs
every request on one connection in the order it was submitted, in group commits. What only an SQLite
file has (its WAL check, its intent log, its schema migrations) is marked so below.

Every record is stored as JSON with a CRC-32 beside it that covers the row's key too; a row that fails
its checksum, its JSON, its model or a range check raises :class:`~.errors.StoreCorrupted` naming the
run and row, and so does a run whose steps are not exactly ``0 .. next_step-1`` or whose journal and
inbox rows are fewer than its row counts: a damaged record never loads as a shorter run. Damage to the
-wal with intact commits after it is detected on open; an at_most_once intent lost with the -wal's last
commit is kept by the intent log beside the file (``<db>-intents``). See docs/durability.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sqlite3
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import quote

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock of the intent log, and it is never emptied
    fcntl = None  # type: ignore[assignment]

import msgspec
from pydantic import BaseModel, ValidationError

from ..context import all_finite
from ..errors import RunExists, RunFenced, RunNotFound, StoreCorrupted, StoreError
from ..secrets import SecretCodec
from . import _segments
from ._base import Store
from ._records import (
    _MAX_INT,
    MAX_DEPTH,
    SCHEMA_VERSION,
    CallRecord,
    CallRow,
    CallStatus,
    CommitRequest,
    InboxRecord,
    RunRecord,
    RunRow,
    RunStatus,
    StepRecord,
    StoredRun,
    fast_step,
    rebuild,
    record_json,
)
from ._sqldialect import ADD_COUNTS as _ADD_COUNTS
from ._sqldialect import SCHEMA as _SCHEMA
from ._sqldialect import SCHEMA_V1 as _SCHEMA_V1
from ._sqldialect import SQLITE, Dialect
from ._sqlwriter import Writer

__all__ = ["MemoryStore", "SQLiteStore"]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

_APPLICATION_ID = 0x534D4131  # "SMA1": marks the file as ours, so another program's database is refused
# The tables: _SCHEMA (and the version-1 _SCHEMA_V1, and _ADD_COUNTS that migrates it) live in the dialect.

_KEYED: tuple[tuple[str, str, str, str], ...] = (
    # table, kind, key columns (as SQL giving the key text), record column
    ("sma_steps", "step", "number", "record"),
    ("sma_snapshots", "snapshot", "step", "context"),
    ("sma_journal", "call", "step || '/' || call", "record"),
    ("sma_inbox", "inbox", "seq || '/' || COALESCE(consumed_step, '')", "record"),
)


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Version 1 -> 2: add the row counts and seal every row's checksum with its key. A row that fails
    its version-1 checksum gets checksum -1 (never a CRC-32), so it stays damaged: nothing is laundered.
    Counts come from scanning the tables (NOT INDEXED), not from their indexes. (SQLite only: only SQLite
    files of version 1 exist, so its SQL is here, not in the dialect.)"""
    for stmt in _ADD_COUNTS:
        conn.execute(stmt)
    runs = conn.execute("SELECT rowid, run_id, record, crc FROM sma_runs NOT INDEXED").fetchall()
    for rowid, run_id, text, crc in runs:
        ok = isinstance(text, str) and isinstance(run_id, str) and _crc(text) == crc
        conn.execute("UPDATE sma_runs SET crc=? WHERE rowid=?", (_run_crc(run_id, text) if ok else -1, rowid))
    for table, kind, key, column in _KEYED:
        rows = conn.execute(f"SELECT rowid, run_id, {key}, {column}, crc FROM {table} NOT INDEXED").fetchall()
        for rowid, run_id, k, text, crc in rows:
            ok = isinstance(text, str) and isinstance(run_id, str) and _crc(text) == crc
            conn.execute(f"UPDATE {table} SET crc=? WHERE rowid=?",
                         (_row_crc(kind, run_id, k, text) if ok else -1, rowid))
    for column, table in (("journal_rows", "sma_journal"), ("inbox_rows", "sma_inbox")):
        for run_id, n in conn.execute(f"SELECT run_id, COUNT(*) FROM {table} NOT INDEXED GROUP BY run_id").fetchall():
            conn.execute(f"UPDATE sma_runs SET {column}=? WHERE run_id=?", (n, run_id))


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    """Version 2 -> 3: steps may hold ``ops``. Nothing stored changes; the version says that a release
    that cannot apply ops must not read the file."""


def _migrate_3_to_4(conn: sqlite3.Connection) -> None:
    """Version 3 -> 4: a snapshot may keep its big lists and dicts as segments (``._segments``), in the
    table ``sma_segments`` the schema makes. Nothing stored changes; the version says that a release that
    cannot join segments must not read the file."""


# Migrations from each older schema version to the next, run in one transaction on open.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_1_to_2, 2: _migrate_2_to_3,
                                                                3: _migrate_3_to_4}


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


def _row_crc(kind: str, run_id: str, key: object, text: str) -> int:
    """A row's CRC-32, over its kind and key as well as its record: a row read under another key (a
    damaged index entry pointing at another row) fails it. ``key``: the step, ``"step/call"``, or
    ``"seq/consumed_step"`` (``""`` for a run's row, and for an event not consumed yet)."""
    return zlib.crc32(text.encode(), zlib.crc32(f"{kind}\x1f{run_id}\x1f{key}\x1f".encode()))


def _run_crc(run_id: str, text: str) -> int:
    return _row_crc("run", run_id, "", text)


def _inbox_key(seq: int, consumed: int | None) -> str:
    return f"{seq}/{'' if consumed is None else consumed}"


def _put_calls(sql: Dialect, conn: sqlite3.Connection, run_id: str, calls: list[tuple[CallRow, str]]) -> None:
    """Write journal rows (each new or replacing the row of its step and call), counting the new ones
    in the run's row."""
    new = 0
    for c, text in calls:
        step, n = c["step"], c["call"]
        crc = _row_crc("call", run_id, f"{step}/{n}", text)
        if conn.execute(sql.insert_call_if_new, (run_id, step, n, text, crc)).rowcount == 1:
            new += 1
        elif conn.execute(sql.update_call, (text, crc, run_id, step, n)).rowcount != 1:
            raise ValueError(f"run {run_id!r}: journal row {step}/{n} could not be written (step and call "
                             "must be whole numbers)")
    if new:
        conn.execute(sql.count_call_rows, (new, run_id))


_FORKED: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("sma_steps", "step", ("number",), "record"),
    ("sma_journal", "call", ("step", "call"), "record"),  # second: fork() counts these rows
    ("sma_snapshots", "snapshot", ("step",), "context"),  # earlier ones too: the fork loads (and forks
)                                                           # again) before any step it holds


def _copy_rows(sql: Dialect, conn: sqlite3.Connection, source: str, spec: tuple[str, str, tuple[str, ...], str],
               before: int) -> list[tuple[tuple[int, ...], str, str]]:
    """The rows of run ``source`` in ``spec``'s table before step ``before``, each checked: (key, its label,
    record)."""
    table, kind, keys, column = spec
    out = []
    rows = conn.execute(sql.copied_rows(table, keys, column), (source, before)).fetchall()
    for *key, text, crc in rows:
        label = "/".join(str(k) for k in key)
        if not all(_whole(k) for k in key) or not isinstance(text, str) or crc != _row_crc(kind, source, label, text):
            raise StoreCorrupted(f"run {source!r} {_ROW_NAMES[kind]} {label}: the stored record fails its checksum: "
                                 "the file was damaged or changed outside statemachine-agent; nothing was forked")
        out.append((tuple(key), label, text))
    return out


_ROW_NAMES = {"step": "step", "call": "journal row", "snapshot": "snapshot at step", "inbox": "inbox event"}

SegmentRow = tuple[str, str, str, int]
"""(run_id, key, items, crc): a snapshot's segment as inserted."""


def _snapshot_rows(run_id: str, snapshot: dict[str, Any]) -> tuple[str, list[SegmentRow]]:
    """A snapshot's row text and its segments' rows (``._segments``), checksummed under ``run_id``:
    made before the transaction, so the write lock is held only to insert them."""
    text, segments = _segments.split(snapshot)
    return text, [(run_id, key, items, _row_crc("segment", run_id, key, items)) for key, items in segments]


def _put_segments(sql: Dialect, conn: sqlite3.Connection, rows: list[SegmentRow]) -> None:
    """Insert a snapshot's segments; those the run holds already (unchanged since an earlier snapshot)
    are left as they are."""
    if rows:
        conn.executemany(sql.insert_segment, rows)


def _segment_texts(sql: Dialect, conn: sqlite3.Connection, run_id: str, keys: list[str], what: str) -> dict[str, str]:
    """The texts of a run's segments ``keys`` the store holds, each checked under its key (a missing one
    is absent: the caller names it)."""
    texts: dict[str, str] = {}
    unique = list(dict.fromkeys(keys))
    for i in range(0, len(unique), 500):
        chunk = unique[i:i + 500]
        for key, items, crc in conn.execute(sql.select_segments(len(chunk)), (run_id, *chunk)):
            texts[key] = _checked(items, crc, f"{what}: segment {key!r}", kind="segment", run_id=run_id, key=key)
    return texts


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_INT


def _put_event(sql: Dialect, conn: sqlite3.Connection, run_id: str, seq: int, text: str) -> None:
    """Write an inbox row, counting it in the run's row."""
    if not _whole(seq) or seq < 1:  # the next number after a damaged one (text, a float, 2**63-1 + 1)
        raise StoreCorrupted(f"run {run_id!r} inbox: the next event number would be {seq!r}: the file is damaged "
                             "(an event number is not a whole number in range); nothing was delivered")
    conn.execute(sql.insert_event, (run_id, seq, text, _row_crc("inbox", run_id, _inbox_key(seq, None), text)))
    conn.execute(sql.count_inbox_row, (run_id,))


def _seal_consumed(sql: Dialect, conn: sqlite3.Connection, run_id: str, seq: int, step: int) -> None:
    """Re-seal event ``seq``'s checksum once step ``step`` consumed it (the CRC covers the consuming
    step): its record is checked first, so damage is never sealed in."""
    row = conn.execute(sql.select_event, (run_id, seq)).fetchone()
    what = f"run {run_id!r} inbox event {seq}"
    if row is None or not isinstance(row[0], str) or row[1] != _row_crc("inbox", run_id, _inbox_key(seq, None), row[0]):
        raise StoreCorrupted(f"{what}: the stored record fails its checksum: the file was damaged or changed "
                             "outside statemachine-agent; nothing was committed")
    conn.execute(sql.seal_event, (_row_crc("inbox", run_id, _inbox_key(seq, step), row[0]), run_id, seq))


_MAX_DEPTH = MAX_DEPTH
_dumps = record_json


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Connection(sqlite3.Connection):
    """The store's connection, carrying the store's intent log (None for a store in memory)."""

    intents: _IntentLog | None = None
    after_commit: list[Callable[[], None]]
    """What the op being run asks to do once its transaction committed (and before its future resolves):
    the writer's (:class:`~._sqlwriter.Writer`) ``after_commit``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after_commit = []


def _text(data: bytes) -> str:
    """SQLite's text as str: bytes that are not UTF-8 (a damaged row) become U+FFFD, so the row fails its
    checksum and is reported as damaged, instead of sqlite3 raising a bare error that names no row."""
    return data.decode("utf-8", "replace")


@functools.cache
def _known_objects() -> frozenset[tuple[str, str, str, str | None]]:
    """Every schema object (type, name, table, SQL) a store of some version, or one migrated to the
    current version, holds: built on in-memory databases, so the SQL is exactly SQLite's own text."""
    known: set[tuple[str, str, str, str | None]] = set()
    for schema, migrate in ((_SCHEMA_V1, False), (_SCHEMA_V1, True), (_SCHEMA, False)):
        conn = sqlite3.connect(":memory:", isolation_level=None)
        try:
            for stmt in schema.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            if migrate:
                for stmt in _ADD_COUNTS:
                    conn.execute(stmt)
            known.update(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall())
        finally:
            conn.close()
    return frozenset(known)


# --- the -wal: a commit SQLite's recovery dropped ---------------------------------------------------
def _wal_sum(data: bytes, seed: bytes, big: bool) -> bytes:
    """SQLite's WAL checksum of ``data`` (whole 8-byte blocks), continuing from ``seed``."""
    s0, s1 = struct.unpack(">II", seed)
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words) - 1, 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return struct.pack(">II", s0, s1)


_SHM_FDS: dict[tuple[int, int], int] = {}
_SHM_LOCK = threading.Lock()


def _read_shm(path: str) -> bytes:
    """The first 48 bytes of a -shm file, read through a descriptor this process never closes (see
    :func:`_wal_lost_commit`): one per -shm file (by device and inode) for the life of the process."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino)
    with _SHM_LOCK:
        fd = _SHM_FDS.get(key)
        if fd is None:
            fd = _SHM_FDS[key] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    return os.pread(fd, 48, 0)


_DMS = 128
"""The byte of a -shm file every SQLite connection to the database holds a shared lock on (its
"dead man switch": SQLite's UNIX_SHM_DMS)."""


def _others_attached(path: str) -> bool:
    """Whether another process has the database open: it holds SQLite's lock on the -shm's DMS byte
    (asked with F_GETLK, which takes no lock; a process's own locks never show). Linux only (the
    struct's layout); elsewhere ``False``."""
    if sys.platform != "linux":
        return False
    try:
        import fcntl  # noqa: PLC0415  (POSIX only)
        _read_shm(f"{path}-shm")
        with _SHM_LOCK:
            st = os.stat(f"{path}-shm")
            fd = _SHM_FDS[(st.st_dev, st.st_ino)]
        asked = struct.pack("hh4xqqi4x", fcntl.F_WRLCK, os.SEEK_SET, _DMS, 1, 0)
        got = fcntl.fcntl(fd, fcntl.F_GETLK, asked)
        return bool(struct.unpack("hh4xqqi4x", got)[0] != fcntl.F_UNLCK)
    except (OSError, KeyError, ImportError, struct.error):
        return False


def _wal_lost_commit(path: str) -> bool:
    """Whether the -wal holds a commit that SQLite's recovery did not take.

    Recovery stops at the first frame that fails its checksum chain and silently opens the database as
    of the commit before it. A damaged frame followed by a later *commit* frame of the same WAL (its
    salts) whose own checksum holds, chained from the frame before it, means commits were written after
    the damage and are lost: that is damage, not a torn last write (which nothing valid follows). Read
    under the write lock (or a read transaction), after SQLite's recovery: its -shm says how many frames
    it took (mxFrame)."""
    try:
        # Never open and close the database file or its -shm here: closing any descriptor of a file
        # drops every POSIX lock this process holds on it, SQLite's own included (its WAL locks live
        # on the -shm), and another process would then reset the -shm under our mapping (SIGBUS).
        # The -shm is read through one descriptor per file kept open for the process's life; the
        # page size comes from the -wal's header (SQLite takes no lock on the -wal).
        shm = _read_shm(f"{path}-shm")
        with open(f"{path}-wal", "rb") as f:
            size = os.fstat(f.fileno()).st_size
            top = f.read(32)
            if len(shm) < 48 or len(top) < 32:
                return False
            mx = struct.unpack_from("=I", shm, 16)[0]
            page = struct.unpack_from(">I", top, 8)[0]
            if page < 512 or page > 65536 or page & (page - 1):
                return False
            frame = 24 + page
            frames = (size - 32) // frame
            if mx >= frames:  # every frame taken: the usual case, read no further
                return False
            first = max(mx - 1, 0)  # from the last frame taken (its checksum seeds the next)
            f.seek(32 + first * frame)
            rest = f.read((frames - first) * frame)
    except OSError:
        return False
    magic = struct.unpack_from(">I", top, 0)[0]
    big = magic == 0x377F0683 if magic in (0x377F0682, 0x377F0683) else sys.byteorder == "big"
    frames = first + len(rest) // frame
    salts = top[16:24]
    broken = mx == 0 and _wal_sum(top[:24], b"\0" * 8, big) != top[24:32]  # SQLite ignored the whole -wal
    prev = top[24:32] if mx == 0 else rest[16:24]
    for i in range(mx, frames):
        at = (i - first) * frame
        header = rest[at:at + 24]
        ok = header[8:16] == salts and _wal_sum(header[:8] + rest[at + 24:at + frame], prev, big) == header[16:24]
        if not broken:
            broken = not ok
        elif ok and header[4:8] != b"\0\0\0\0":
            return True
        prev = header[16:24]
    return False


def _check_wal(path: str, where: str) -> None:
    # Only a recovery's verdict says commits were dropped: while another process has the database
    # open, the -shm is its live index, not a recovery's, and frames after it may be those a worker
    # killed between writing them and indexing them left behind (a commit it never reported), which
    # the next writer overwrote from their start: not damage.
    if _wal_lost_commit(path) and not _others_attached(path):
        raise StoreCorrupted(f"{where}: its -wal file is damaged: SQLite's recovery stopped at a damaged frame and "
                             "would silently drop the commits written after it. Nothing was loaded; restore the "
                             "store (and its -wal) from a backup")


# --- the intent log -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    """The intent log's lock across processes (none where there is no fcntl)."""
    if fcntl is None:
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


class _IntentLog:
    """``<db>-intents``: every at_most_once intent, one line each (``crc32-hex JSON\\n``, the JSON being
    ``[run id, call record]``), appended and fsync'd before ``record_call`` returns. Emptied when a new
    store is made at its path.

    A damaged -wal can make SQLite drop commits silently (the last commit of the -wal, where nothing
    later shows the damage). An intent the database lost is still in this log, and :func:`_load` returns
    it as an ``INTENT`` journal row: the runner takes the call's outcome as unknown (EffectOutcomeUnknown,
    or ``reconcile``), never running it again. A torn last line (a crash while it was written) is ignored;
    a damaged line with good lines after it is StoreCorrupted."""

    def __init__(self, db_path: str, *, writable: bool) -> None:
        self.path = f"{db_path}-intents"
        self.db_path = db_path
        self.writable = writable
        self._fd: int | None = None
        self._offset = 0  # bytes read so far: every whole, good line before it
        self._lines = 0
        self._by_run: dict[str, dict[tuple[int, int], str]] = {}

    def append(self, run_id: str, call_text: str) -> None:
        body = json.dumps([run_id], ensure_ascii=False)[:-1] + "," + call_text + "]"
        line = f"{zlib.crc32(body.encode()):08x} {body}\n".encode()
        try:
            if self._fd is None:
                created = not os.path.exists(self.path)
                mode = os.stat(self.db_path).st_mode & 0o666
                self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                                   mode)
                if created:  # the new name must survive a power cut too
                    with contextlib.suppress(OSError):
                        d = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
                        try:
                            os.fsync(d)
                        finally:
                            os.close(d)
            with _locked(self._fd):
                size = os.fstat(self._fd).st_size
                if size and os.pread(self._fd, 1, size - 1) != b"\n":
                    # A torn line (a crash while writing it): never acknowledged, so its call never ran.
                    tail = os.pread(self._fd, min(size, 1 << 16), max(0, size - (1 << 16)))
                    os.ftruncate(self._fd, size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else 0)
                os.write(self._fd, line)
                os.fsync(self._fd)
        except OSError as exc:
            raise StoreError(f"cannot write the intent log {self.path!r} ({exc}): the at_most_once call was not "
                             "made; free disk space or fix the folder's permissions and resume the run") from None

    def clear(self) -> None:
        """Empty the log (a new store was made at its path): nothing of it belongs to this store."""
        if os.path.exists(self.path):
            try:
                os.truncate(self.path, 0)
            except OSError as exc:
                raise StoreError(f"cannot empty the intent log {self.path!r} left beside a new store ({exc}): "
                                 "remove it") from None

    def close(self) -> None:
        """Release the log; once the database was closed by its last connection (no -wal is left: SQLite
        checkpointed every commit into the main file and synced it), no logged intent can be lost any
        more, so the log is emptied. Under the log's lock, so no other process appends meanwhile (one that
        has the database open keeps its -wal, and then nothing is emptied)."""
        # Plain try/except, not contextlib: at interpreter exit module globals may already be None.
        try:
            if self._fd is None and self.writable and os.path.exists(self.path):
                self._fd = os.open(self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            if self._fd is not None and self.writable and fcntl is not None:
                with _locked(self._fd):
                    if not os.path.exists(f"{self.db_path}-wal") and os.fstat(self._fd).st_size:
                        os.ftruncate(self._fd, 0)
                        os.fsync(self._fd)
        except Exception:  # emptying is an economy: a log left full loses nothing
            pass
        if self._fd is not None:
            try:  # noqa: SIM105
                os.close(self._fd)
            except Exception:
                pass
            self._fd = None

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self._offset:  # replaced or cut: read it again from the start
                    self._offset, self._lines = 0, 0
                    self._by_run.clear()
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot read the intent log {self.path!r}: {exc}") from None
        lines = data.split(b"\n")
        lines.pop()  # after the last newline: nothing, or a line being written or torn
        bad: int | None = None
        used, count = 0, 0
        for raw in lines:
            count += 1
            entry = self._entry(raw)
            if entry is None:
                if bad is None:
                    bad = self._lines + count
                continue
            if bad is not None:
                raise StoreCorrupted(f"the intent log {self.path!r} line {bad} is damaged (it fails its checksum "
                                     "and good lines follow it): restore it from a backup, or remove that line "
                                     "if you know its call never ran")
            used += len(raw) + 1
            self._offset += used
            self._lines += count
            used, count = 0, 0
            run_id, call = entry
            self._by_run.setdefault(run_id, {})[call] = raw.split(b" ", 1)[1].decode()

    def _entry(self, raw: bytes) -> tuple[str, tuple[int, int]] | None:
        crc, sep, body = raw.partition(b" ")
        if not sep or len(crc) != 8 or not crc.isalnum():
            return None
        try:
            if int(crc, 16) != zlib.crc32(body):
                return None
            run_id, call = json.loads(body.decode(), parse_constant=_no_constant)
            key = (call["step"], call["call"])
        except (ValueError, TypeError, KeyError, RecursionError):
            return None
        if not (isinstance(run_id, str) and all(_whole(k) for k in key)):
            return None
        return run_id, key

    def runs(self) -> set[str]:
        """The ids of the runs with an intent in the log."""
        self._read()
        return set(self._by_run)

    def restore(self, run_id: str, calls: list[CallRecord], since: int = 0) -> list[CallRecord]:
        """``calls`` (the journal rows of steps from ``since`` on) with every logged intent of
        ``run_id`` in those steps that the database lost, as INTENT rows."""
        self._read()
        logged = self._by_run.get(run_id)
        if not logged:
            return calls
        have = {(c.step, c.call) for c in calls}
        lost = []
        for key, body in logged.items():
            if key in have or key[0] < since:
                continue
            what = f"run {run_id!r} journal row {key[0]}/{key[1]} (from the intent log {self.path!r})"
            try:
                call = CallRecord.model_validate(_json(body)[1])
            except (ValueError, RecursionError, IndexError, TypeError):
                raise StoreCorrupted(f"{what}: the logged intent does not validate; nothing was loaded") from None
            lost.append(call.model_copy(update={"status": CallStatus.INTENT}))
        if not lost:
            return calls
        return sorted([*calls, *lost], key=lambda c: (c.step, c.call))


class SQLiteStore(Store):
    """Durable runs in one SQLite file: ``SQLiteStore("runs.db")``.

    ``synchronous="FULL"`` (the default) makes every commit reach the disk before the step that
    follows it starts: a committed step survives a power cut, not just a crash. ``"NORMAL"`` is
    faster and survives a process crash (kill -9) but may lose the last commits on a power cut.
    Each step stores only what it wrote (a list or dict it changed in place, as the changes); a full
    copy of the context (a snapshot) bounds how many steps a load replays: by default once the steps
    since the last one stored about half as much as it holds, or every ``snapshot_every`` steps when that
    is given (see :attr:`.Store.snapshot_every`). Its lists and dicts of 32 items or more are kept in
    segments later snapshots share (:attr:`.Store.snapshots_share_items`), so while steps only append,
    a snapshot is also taken every ``max(96, items // 24)`` steps at the cost of what they appended.
    ``busy_timeout`` is how long to wait for another process's write.
    Several processes may share one file: fencing makes sure only one commits each step.

    A run alone on the store commits in its own thread, which blocks its event loop for each commit
    (an fsync); runs sharing the store commit together in the store's writer thread. ``inline=False``:
    every commit goes through the writer thread, so the event loop never waits on the disk (for an
    async server on a slow disk that runs one agent at a time beside its other work).
    """

    _sql: Dialect = SQLITE
    """The SQL every operation runs (see :mod:`._sqldialect`)."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL", snapshot_every: int | None = None,
                 busy_timeout: float = 30.0, readonly: bool = False, secrets: SecretCodec | None = None,
                 inline: bool = True) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"SQLiteStore(path={path!r}): give a file path (str or pathlib.Path)")
        if synchronous not in ("FULL", "EXTRA", "NORMAL"):
            raise ValueError(f"synchronous={synchronous!r}: use 'FULL' (default), 'EXTRA' or 'NORMAL'")
        if snapshot_every is not None and (isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int)
                                           or snapshot_every < 1):
            raise ValueError(f"snapshot_every={snapshot_every!r}: give a whole number of steps, at least 1, or "
                             "None (the default: by what the steps stored)")
        if (isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float))
                or not 0 <= busy_timeout < math.inf):
            raise ValueError(f"busy_timeout={busy_timeout!r}: give a number of seconds >= 0")
        if not isinstance(readonly, bool):
            raise TypeError(f"readonly={readonly!r}: give True or False")
        if not isinstance(inline, bool):
            raise TypeError(f"inline={inline!r}: give True (a lone run commits in its own thread) or False")
        self.inline = inline
        """A lone run's requests run in its own thread (see the class's docstring)."""
        if secrets is not None and not isinstance(secrets, SecretCodec):
            raise TypeError(f"secrets={type(secrets).__name__}(...): give a codec with encrypt(bytes) -> str and "
                            "decrypt(str) -> bytes, such as statemachine_agent.secrets.FernetSecrets")
        self.path = str(path)
        self.snapshot_every = snapshot_every
        self.snapshots_share_items = True
        """A snapshot's lists and dicts of 32 items or more are stored in segments that later snapshots
        share (``._segments``)."""
        self.secrets = secrets
        self.readonly = readonly
        """Opened read-only (SQLite's ``mode=ro``): every write raises StoreError and nothing is created."""
        memory = self.path == ":memory:"
        if memory and readonly:
            raise ValueError("readonly=True needs a store file: an in-memory store has nothing to read")
        if not memory:
            parent = Path(self.path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreError(f"cannot open the store {self.path!r}: folder {str(parent)!r} does not exist")
            if readonly and not Path(self.path).expanduser().is_file():
                raise StoreError(f"cannot open the store {self.path!r} read-only: there is no such file (opened "
                                 "read-only, a store creates nothing)")
        target = self.path
        self._immutable = readonly and not os.path.exists(f"{self.path}-wal")
        if readonly:
            # mode=ro never writes the database. SQLite still needs the -shm (and creates it, with an empty
            # -wal, if only the -wal is missing) to read a WAL database: a store closed cleanly has neither,
            # so it is opened immutable=1 (no -wal or -shm is looked for or made) and nothing at all appears.
            # With a -wal (a live writer, or a killed one), readonly_shm=1: the -shm is opened read-only, so
            # neither a read mark nor a recovered index is written into it (SQLite then reads the -wal itself).
            # (A -wal without its -shm, copied without it, cannot be read so: SQLite makes the -shm then.)
            target = f"file:{quote(str(Path(self.path).expanduser().resolve()))}?mode=ro"
            if self._immutable:
                target += "&immutable=1"
            elif os.path.exists(f"{self.path}-shm"):
                target += "&readonly_shm=1"
        try:
            conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=busy_timeout,
                                   uri=readonly, factory=_Connection)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {self.path!r}: {exc}") from None
        conn.text_factory = _text
        try:
            self._prepare(conn, synchronous, memory)
        except BaseException:
            conn.close()
            raise
        intents = conn.intents
        self._writer = Writer(conn, self._sql, name=f"statemachine-agent store {self.path}", readonly=readonly,
                              translate=self._translate, after_commit=conn.after_commit,
                              on_close=intents.close if intents is not None else _nothing,
                              relax=None if memory or readonly or synchronous == "NORMAL"
                              else (self._sql.relax_commit, self._sql.restore_commit.format(synchronous)))

    # --- opening --------------------------------------------------------------------------------
    def _prepare(self, conn: _Connection, synchronous: str, memory: bool) -> None:
        where = f"the store {self.path!r}"
        try:
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            objects = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
            tables = {name for kind, name, _, _ in objects if kind == "table"}
            if app not in (0, _APPLICATION_ID) or (tables and "sma_meta" not in tables):
                raise StoreError(f"{where} is an SQLite database of another program (it has no "
                                 "statemachine-agent tables): give a new file or one made by SQLiteStore")
            known = _known_objects()
            foreign = [f"{kind} {name!r}" for kind, name, table, sql in objects
                       if (kind, name, table, sql) not in known]
            if foreign:
                raise StoreError(f"{where} holds objects statemachine-agent did not create ({', '.join(foreign[:5])}"
                                 f"{', ...' if len(foreign) > 5 else ''}): another program changed it, and they could "
                                 "run code on every write, so it is refused and nothing was run or changed. Give "
                                 "the store's own file, or drop those objects with the sqlite3 shell")
            if self.readonly:
                self._prepare_readonly(conn, where, bool(tables))
                return
            if not memory:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"{where}: could not switch to WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            conn.execute(self._sql.begin_write)
            if not memory:
                _check_wal(self.path, where)
            for stmt in self._sql.schema.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            if app != _APPLICATION_ID:
                conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
            row = conn.execute(self._sql.select_version).fetchone()
            # No version: a new store, unless the tables were there before (then the row was lost).
            version = SCHEMA_VERSION if row is None and not tables else _version(None if row is None else row[0],
                                                                                 where)
            if version > SCHEMA_VERSION:
                conn.execute(self._sql.rollback)
                raise StoreError(f"{where} has schema version {version}, written by a newer "
                                 f"statemachine-agent (this one reads up to {SCHEMA_VERSION}): upgrade it")
            while version < SCHEMA_VERSION:
                _MIGRATIONS[version](conn)
                version += 1
            # Written only when it changes: a transaction that writes nothing commits without an fsync
            # (opening a store was a third of a resume's time).
            if row is None or row[0] != str(version):
                conn.execute(self._sql.put_version, (str(version),))
            if not memory:
                conn.intents = _IntentLog(self.path, writable=True)
                if row is None:  # a new store: an intent log left beside it is another store's
                    conn.intents.clear()
            conn.execute(self._sql.commit)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(self._sql.rollback)
            raise _translate(exc, where) from None

    def _prepare_readonly(self, conn: _Connection, where: str, made: bool) -> None:
        """Check a store opened read-only, writing nothing: it must be a store of this schema version."""
        if not made:
            raise StoreError(f"{where} is empty: it holds no runs yet (opened read-only, it is not made a store)")
        row = conn.execute(self._sql.select_version).fetchone()
        version = _version(None if row is None else row[0], where)
        if version > SCHEMA_VERSION:
            raise StoreError(f"{where} has schema version {version}, written by a newer "
                             f"statemachine-agent (this one reads up to {SCHEMA_VERSION}): upgrade it")
        if version < SCHEMA_VERSION:
            raise StoreError(f"{where} has schema version {version}, written by an older statemachine-agent: "
                             "open it once without readonly=True (any command that resumes or delivers does), "
                             f"which migrates it to version {SCHEMA_VERSION}, then read it")
        if not self._immutable:
            conn.execute(self._sql.begin_read)
            try:
                conn.execute("SELECT COUNT(*) FROM sma_meta").fetchone()  # reads the -wal's index
                _check_wal(self.path, where)
            finally:
                conn.execute(self._sql.commit)
        conn.intents = _IntentLog(self.path, writable=False)

    # --- the writer thread (._sqlwriter) ----------------------------------------------------------
    def _submit(self, op: Callable[[sqlite3.Connection], T], *, durable: bool = True,
                run: str | None = None) -> Future[T]:
        """``run``: the run the request is for; a lone run's requests run in the caller's thread."""
        return self._writer.submit(op, f"the store {self.path!r} is closed", durable=durable,
                                   key=run if self.inline else None)

    def _translate(self, exc: BaseException) -> BaseException:
        return _translate(exc, f"the store {self.path!r}")

    def close(self) -> None:
        """Finish what was submitted, then close the connection (idempotent)."""
        self._writer.close()

    def __del__(self) -> None:
        try:  # noqa: SIM105  (not contextlib: at interpreter exit module globals may already be None)
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r}>"

    # --- the operations -------------------------------------------------------------------------
    def create(self, run: RunRow, context: dict[str, Any]) -> Future[None]:
        run_id = run["run_id"]
        run_text, (ctx_text, segments) = _dumps(run), _snapshot_rows(run_id, context)
        sql = self._sql

        def op(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(sql.insert_run, (run_id, run["workflow"], run["epoch"], run["next_step"], run["status"],
                                              run["updated_at"], run_text, _run_crc(run_id, run_text)))
            except sqlite3.IntegrityError:
                raise RunExists(run_id) from None
            _lost_runs(conn, {run_id})  # new here, yet logged: a run lost with the -wal's commits
            _put_segments(sql, conn, segments)
            conn.execute(sql.insert_snapshot, (run_id, 0, ctx_text, _row_crc("snapshot", run_id, 0, ctx_text)))

        return self._submit(op, run=run_id)

    def claim(self, run_id: str) -> Future[StoredRun]:
        return self._claim(run_id, tail=False)

    def claim_tail(self, run_id: str) -> Future[StoredRun]:
        if type(self).claim is not SQLiteStore.claim:
            return self.claim(run_id)  # a subclass's own claim: claims go through it
        return self._claim(run_id, tail=True)

    def _claim(self, run_id: str, *, tail: bool) -> Future[StoredRun]:
        run_id = _plain(run_id)
        sql = self._sql

        def op(conn: sqlite3.Connection) -> StoredRun:
            run = _read_run(sql, conn, run_id)
            if run.status is not RunStatus.DONE:
                # A restart only when the holder before started the step: a claim superseded before
                # it did anything (or a run claimed from a wait) spends none of max_step_restarts.
                restarts = run.restarts + 1 if run.status is RunStatus.RUNNING and run.started else run.restarts
                run = _claimed(sql, conn, run, restarts=restarts, status=run.status)
            return _taken(sql, conn, run) if tail else _load(sql, conn, run, None)

        # A claim is synced by the claimer's next durable commit (its first intent or step): nothing
        # anyone observes depends on it before that, and a crash of the process keeps it.
        return self._submit(op, durable=False, run=run_id)

    def claim_waiting(self, run_id: str) -> Future[StoredRun | None]:
        return self._claim_waiting(run_id, tail=False)

    def claim_waiting_tail(self, run_id: str) -> Future[StoredRun | None]:
        if type(self).claim_waiting is not SQLiteStore.claim_waiting:
            return self.claim_waiting(run_id)  # a subclass's own claim: claims go through it
        return self._claim_waiting(run_id, tail=True)

    def _claim_waiting(self, run_id: str, *, tail: bool) -> Future[StoredRun | None]:
        run_id = _plain(run_id)
        sql = self._sql

        def op(conn: sqlite3.Connection) -> StoredRun | None:
            run = _read_run(sql, conn, run_id)
            if run.status is not RunStatus.WAITING:
                return None  # running (a live worker takes its events at its wait), or ended
            run = _claimed(sql, conn, run, restarts=run.restarts, status=RunStatus.RUNNING)
            return _taken(sql, conn, run) if tail else _load(sql, conn, run, None)

        return self._submit(op, durable=False, run=run_id)

    def mark_started(self, run_id: str, epoch: int) -> Future[None]:
        run_id = _plain(run_id)
        sql = self._sql

        def op(conn: sqlite3.Connection) -> None:
            run = _read_run(sql, conn, run_id)
            if run.epoch != epoch:
                raise RunFenced(run_id, run.next_step)
            if not run.started:
                run = run.model_copy(update={"started": True})
                text = run.model_dump_json()
                conn.execute(sql.update_record, (text, _run_crc(run_id, text), run_id))

        return self._submit(op, durable=False, run=run_id)

    def commit(self, commit: CommitRequest) -> Future[list[InboxRecord]]:
        run = commit["run"]
        step = commit["step"]
        run_text, step_text = _dumps(run), _dumps(step)
        run_id, epoch, number = run["run_id"], commit["epoch"], step["number"]
        snapshot = commit.get("snapshot")
        snap_text, segments = (None, []) if snapshot is None else _snapshot_rows(run_id, snapshot)
        calls = [(c, _dumps(c)) for c in commit.get("calls", ())]
        consume = commit.get("consume")
        sql = self._sql

        def op(conn: sqlite3.Connection) -> list[InboxRecord]:
            status, text = run["status"], run_text
            found = _waited(sql, conn, run, consume)
            if found:  # the event came while the step ran: the run goes on instead of waiting
                status = RunStatus.RUNNING
                text = _dumps({**run, "status": status})
            cur = conn.execute(sql.commit_run, (number + 1, status, run["updated_at"], text, _run_crc(run_id, text),
                                                run_id, epoch, number))
            if cur.rowcount != 1:
                raise RunFenced(run_id, number)
            conn.execute(sql.insert_step, (run_id, number, step_text, _row_crc("step", run_id, number, step_text)))
            if snap_text is not None:
                _put_segments(sql, conn, segments)
                conn.execute(sql.put_snapshot,
                             (run_id, number + 1, snap_text, _row_crc("snapshot", run_id, number + 1, snap_text)))
            _put_calls(sql, conn, run_id, calls)
            if consume is not None:
                cur = conn.execute(sql.consume_event, (number, run_id, consume))
                if cur.rowcount != 1:
                    raise RunFenced(run_id, number, f"run {run_id!r}: event {consume} was consumed by "
                                    "another worker; this worker stops")
                _seal_consumed(sql, conn, run_id, consume, number)
            return found

        return self._submit(op, run=run_id)

    def suspend(self, run: RunRow, epoch: int, snapshot: dict[str, Any]) -> Future[list[InboxRecord]]:
        run_id, number = run["run_id"], run["next_step"]
        run_text, (snap_text, segments) = _dumps(run), _snapshot_rows(run_id, snapshot)
        sql = self._sql

        def op(conn: sqlite3.Connection) -> list[InboxRecord]:
            found = _waited(sql, conn, run, None)
            if found:  # delivered meanwhile: the run does not wait (nothing is written)
                row = conn.execute(sql.select_fence, (run_id,)).fetchone()
                if row is None or row[0] != epoch or row[1] != number:
                    raise RunFenced(run_id, number)
                return found
            cur = conn.execute(sql.suspend_run, (run["status"], run["updated_at"], run_text,
                                                 _run_crc(run_id, run_text), run_id, epoch, number))
            if cur.rowcount != 1:
                raise RunFenced(run_id, number)
            _put_segments(sql, conn, segments)
            conn.execute(sql.put_snapshot, (run_id, number, snap_text, _row_crc("snapshot", run_id, number, snap_text)))
            return []

        return self._submit(op, run=run_id)

    def record_call(self, run_id: str, epoch: int, call: CallRow) -> Future[None]:
        run_id = _plain(run_id)
        if not isinstance(run_id, str) or not run_id:
            raise TypeError(f"run_id={run_id!r}: give the run's id, a non-empty string")
        text = _dumps(call)
        sql = self._sql

        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute(sql.select_epoch, (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(run_id)
            if row[0] != epoch:
                raise RunFenced(run_id, call["step"])
            _put_calls(sql, conn, run_id, [(call, text)])
            if call.get("status") == CallStatus.INTENT and isinstance(conn, _Connection) and conn.intents is not None:
                # Logged once the row is committed (a crash before that never ran the call), and fsync'd
                # before this future resolves (so before the call runs).
                conn.after_commit.append(functools.partial(conn.intents.append, run_id, text))

        return self._submit(op, run=run_id)

    def load(self, run_id: str, *, at_step: int | None = None) -> Future[StoredRun]:
        run_id = _plain(run_id)
        sql = self._sql
        return self._submit(lambda conn: _load(sql, conn, _read_run(sql, conn, run_id), at_step))

    def load_tail(self, run_id: str) -> Future[StoredRun]:
        if type(self).load is not SQLiteStore.load:
            return self.load(run_id)  # a subclass's own load: loads go through it
        run_id = _plain(run_id)
        sql = self._sql
        return self._submit(lambda conn: _load(sql, conn, _read_run(sql, conn, run_id), None, tail=True), run=run_id)

    def load_steps(self, run_id: str, start: int, stop: int) -> Future[list[StepRecord]]:
        run_id = _plain(run_id)
        sql = self._sql
        for name, value in (("start", start), ("stop", stop)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r}: give a step number from 0")
        if self._writer.closed and self.path != ":memory:":
            # A resumed run's result reads its earlier steps when first asked, which may be after the
            # store was closed (``with SQLiteStore(...) as store:``): read them from the file then.
            with SQLiteStore(self.path, readonly=True) as again:
                future: Future[list[StepRecord]] = Future()
                try:
                    future.set_result(again.load_steps(run_id, start, stop).result())
                except BaseException as exc:
                    future.set_exception(exc)
                return future
        return self._submit(lambda conn: _steps(sql, conn, run_id, start, max(start, stop)))

    def list_runs(self, workflow: str | None = None) -> Future[list[RunRecord]]:
        sql = self._sql

        def op(conn: sqlite3.Connection) -> list[RunRecord]:
            # Read from the table itself, so a damaged index hides no run from the list.
            if workflow is None:
                rows = conn.execute(sql.list_runs)
            else:
                rows = conn.execute(sql.list_workflow_runs, (workflow,))
            runs = [_run_of_row(row[0], row[1:]) for row in rows]
            if isinstance(conn, _Connection) and conn.intents is not None:  # a run lost from the table
                logged = conn.intents.runs()
                if logged:
                    have = {r for (r,) in conn.execute(sql.select_run_ids)}
                    _lost_runs(conn, logged - have)
            return runs

        return self._submit(op)

    def due_runs(self, workflow: str, now: float) -> Future[list[str]]:
        workflow = _plain(workflow)
        if not isinstance(workflow, str) or isinstance(now, bool) or not isinstance(now, (int, float)):
            raise TypeError(f"due_runs({workflow!r}, {now!r}): give a workflow name and a time in seconds")
        sql = self._sql

        def op(conn: sqlite3.Connection) -> list[str]:
            # One query in the database, not a load of every waiting run: what wake_due does on a timer.
            return [str(row[0]) for row in conn.execute(sql.due_runs, (workflow, float(now)))]

        return self._submit(op)

    def deliver(self, run_id: str, event: str, payload: Any) -> Future[int]:
        run_id, event = _plain(run_id), _plain(event)
        if not isinstance(event, str) or not event:
            raise TypeError(f"event={event!r}: give the event's name, a non-empty string")
        payload_text = _dumps(payload)  # refuses what is not JSON before anything is written
        sql = self._sql

        def op(conn: sqlite3.Connection) -> int:
            run = _read_run(sql, conn, run_id)
            if run.status is RunStatus.DONE:
                raise StoreError(f"run {run_id!r} has ended in {run.terminal!r}: it takes no more events")
            seq = conn.execute(sql.next_seq, (run_id,)).fetchone()[0]
            text = _dumps({"seq": seq, "event": event, "payload": json.loads(payload_text), "at": time.time(),
                           "consumed_step": None})
            _put_event(sql, conn, run_id, seq, text)
            return int(seq)

        return self._submit(op)

    def fork(self, source: str, at_step: int, run: RunRow, context: dict[str, Any]) -> Future[None]:
        source = _plain(source)
        new = run["run_id"]
        run_text, (ctx_text, segments) = _dumps(run), _snapshot_rows(new, context)
        sql = self._sql

        def op(conn: sqlite3.Connection) -> None:
            src = _read_run(sql, conn, source)
            if isinstance(at_step, bool) or not isinstance(at_step, int) or not 0 <= at_step <= src.next_step:
                raise ValueError(f"at_step={at_step!r}: run {source!r} has committed steps 0..{src.next_step - 1}; "
                                 f"fork before one of them, or at {src.next_step}")
            # Every row copied is checked under its own key first, then sealed under the new run's.
            copies = [(spec[0], spec[1], _copy_rows(sql, conn, source, spec, at_step)) for spec in _FORKED]
            try:
                conn.execute(sql.insert_forked_run, (new, run["workflow"], run["epoch"], run["next_step"],
                                                     run["status"], run["updated_at"], run_text,
                                                     _run_crc(new, run_text), len(copies[1][2])))
            except sqlite3.IntegrityError:
                raise RunExists(new) from None
            for table, kind, rows in copies:
                for key, label, text in rows:
                    conn.execute(sql.insert_copied(table, len(key)),
                                 (new, *key, text, _row_crc(kind, new, label, text)))
            # The earlier snapshots copied refer to the source's segments: each is copied, checked first.
            copied = []
            for key, items, crc in conn.execute(sql.select_all_segments, (source,)).fetchall():
                if not isinstance(key, str) or not isinstance(items, str) or crc != _row_crc("segment", source, key,
                                                                                                items):
                    raise StoreCorrupted(f"run {source!r} segment {key!r}: the stored record fails its checksum: "
                                         "the file was damaged or changed outside statemachine-agent; nothing was "
                                         "forked")
                copied.append((new, key, items, _row_crc("segment", new, key, items)))
            _put_segments(sql, conn, copied + segments)
            conn.execute(sql.insert_snapshot, (new, at_step, ctx_text, _row_crc("snapshot", new, at_step, ctx_text)))

        return self._submit(op)


class MemoryStore(SQLiteStore):
    """A store in memory (an SQLite ``:memory:`` database): the same code and guarantees as
    :class:`SQLiteStore` within one process, gone when it ends. For tests and notebooks."""

    def __init__(self, *, snapshot_every: int | None = None, secrets: SecretCodec | None = None) -> None:
        super().__init__(":memory:", snapshot_every=snapshot_every, secrets=secrets)

    def __repr__(self) -> str:
        return "<MemoryStore>"


# --- reading -------------------------------------------------------------------------------------
def _nothing() -> None:
    pass


def _version(text: object, where: str) -> int:
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 9:
        raise StoreCorrupted(f"{where}: its schema version {text!r} is not a number: the file is damaged; "
                             "restore it from a backup") from None
    version = int(text)
    if version < 1:
        raise StoreCorrupted(f"{where}: its schema version {version} was never written by statemachine-agent "
                             f"(versions start at 1): the file is damaged; restore it from a backup")
    return version


def _json(text: str) -> Any:
    # msgspec's C reader first: 0.41 ms for a 370 KB snapshot against 0.73 ms for Python's, and like the
    # store's own reader it refuses NaN, infinity and what a float cannot hold (1e400; pydantic-core's
    # from_json gives inf). Whatever it refuses (those, a lone surrogate escape, nesting too deep, text
    # that is not JSON) is read again by Python's C decoder, which reads what it can as before and says
    # what is wrong with the rest: a record reads the same either way.
    try:
        return _read_json(text)
    except (msgspec.DecodeError, RecursionError):
        return _DECODER.decode(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a float")
    return value


# One decoder for every record: json.loads with these options would build a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)
_read_json = msgspec.json.Decoder().decode


def _checked(text: object, crc: object, what: str, *, kind: str, run_id: str, key: object) -> str:
    """``text`` if it passes its checksum under its key; else StoreCorrupted naming ``what``."""
    if not isinstance(text, str) or not isinstance(crc, int) or _row_crc(kind, run_id, key, text) != crc:
        raise StoreCorrupted(f"{what}: the stored record fails its checksum: the file was damaged or "
                             "changed outside statemachine-agent; nothing of it was loaded")
    return text


def _parse(model: type[M], text: object, crc: object, what: str, *, kind: str, run_id: str, key: object) -> M:
    text = _checked(text, crc, what, kind=kind, run_id=run_id, key=key)
    if model is StepRecord:
        # A resume reads the steps after its snapshot. A row as this library writes it is read by
        # msgspec (fast_step); any other is validated by pydantic-core in one pass, about twice as fast
        # as json and then the model. Its typed numbers refuse what the store's reader refuses; its
        # untyped values (a step's delta and operations) are checked here. Anything it refuses or that
        # is not finite is read again below, which says what is wrong.
        fast = fast_step(text)
        if fast is not None:
            return cast(M, fast)
        try:
            record = model.model_validate_json(text)
        except ValueError:
            pass
        else:
            step = cast(StepRecord, record)
            if all_finite(step.delta) and all_finite(step.ops):
                return record
    try:
        return model.model_validate(_json(text))
    except ValueError as exc:
        if not isinstance(exc, ValidationError):
            raise StoreCorrupted(f"{what}: the stored record is not JSON ({exc}); nothing of it was loaded") from None
        raise StoreCorrupted(f"{what}: the stored record does not validate ({exc.error_count()} "
                             f"error(s), first: {_first_error(exc)}); nothing of it was loaded") from None
    except RecursionError:
        raise StoreCorrupted(f"{what}: the stored record nests too deeply; nothing of it was loaded") from None


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(x) for x in first.get("loc", ()))
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def _parse_run(run_id: object, text: object, crc: object) -> RunRecord:
    if not isinstance(run_id, str):
        raise StoreCorrupted(f"a run row's id is {type(run_id).__name__}, not text: the file was damaged; "
                             "nothing of it was loaded")
    run = _parse(RunRecord, text, crc, f"run {run_id!r}", kind="run", run_id=run_id, key="")
    if run.run_id != run_id:
        raise StoreCorrupted(f"run {run_id!r}: its record is run {run.run_id!r}'s: the file was damaged; nothing "
                             "of it was loaded")
    return run


def _plain(value: Any) -> Any:
    """A ``str`` subclass as the plain ``str`` it holds (its own ``__eq__``, ``__hash__`` or
    ``__repr__`` never run inside the store); anything else as it is, for the checks to refuse."""
    return str.__str__(value) if isinstance(value, str) else value


def _read_run(sql: Dialect, conn: sqlite3.Connection, run_id: str) -> RunRecord:
    if not isinstance(run_id, str) or not run_id:
        raise TypeError(f"run_id={run_id!r}: give the run's id, a non-empty string")
    row = conn.execute(sql.select_run, (run_id,)).fetchone()
    if row is None:
        # Absent, or hidden by a damaged index entry: the table itself says which.
        if conn.execute(sql.select_run_unindexed, (run_id,)).fetchone() is not None:
            raise StoreCorrupted(f"run {run_id!r}: its row is in the store but its index does not find it: the "
                                 "file is damaged; restore it from a backup (nothing of it was loaded)")
        _lost_runs(conn, {run_id})
        raise RunNotFound(run_id)
    return _run_of_row(run_id, row)


def _lost_runs(conn: sqlite3.Connection, absent: set[str]) -> None:
    """StoreCorrupted if the intent log holds an at_most_once call of a run in ``absent`` (runs the
    database does not have): the run existed (its intent row was committed before it was logged, and
    runs are never deleted), so commits were lost, e.g. to a damaged or cut -wal. Saying "no such run"
    would let a new run under its id make that call again."""
    intents = conn.intents if isinstance(conn, _Connection) else None
    if intents is None or not absent:
        return
    lost = sorted(absent & intents.runs())
    if lost:
        names = ", ".join(repr(r) for r in lost[:5]) + (", ..." if len(lost) > 5 else "")
        raise StoreCorrupted(f"run {lost[0]!r}: the intent log {intents.path!r} holds at_most_once calls of "
                             f"run(s) {names} that the database no longer has: its commits were lost (a damaged "
                             "or cut -wal); restore the store and its -wal from a backup. Nothing was loaded, and "
                             "no run may start under such an id (it would make those calls again)")


def _run_of_row(run_id: object, row: tuple[Any, ...]) -> RunRecord:
    """The run record of a row of the dialect's ``run_columns``: checked, and agreeing with the row's columns."""
    run = _parse_run(run_id, row[0], row[1])
    if run.epoch != row[2] or run.next_step != row[3] or run.status != row[4] or run.workflow != row[5]:
        raise StoreCorrupted(f"run {run_id!r}: its record disagrees with its row (epoch, next step, status or "
                             "workflow): the file was changed outside statemachine-agent; nothing of it was loaded")
    return run


def _steps(sql: Dialect, conn: sqlite3.Connection, run_id: str, start: int, stop: int, *,
           every: bool = False) -> list[StepRecord]:
    """Steps ``start`` to ``stop - 1`` of a run, each checked; StoreCorrupted when one is missing.
    ``every``: the run's steps are all of them (a step past ``stop`` is damage too)."""
    steps: list[StepRecord] = []
    append = steps.append
    query = (sql.select_steps, (run_id,)) if every else (sql.select_steps_from, (run_id, start, stop))
    # A resume reads every row since the snapshot: a row that passes its checksum and reads fast is taken
    # here at once (_row_crc's CRC, chained from the part every row shares); any other goes through
    # _parse, which checks it again and says what is wrong.
    shared = zlib.crc32(f"step\x1f{run_id}\x1f".encode())
    for num, text, crc in conn.execute(*query):
        step = None
        if type(text) is str and zlib.crc32(text.encode(), zlib.crc32(f"{num}\x1f".encode(), shared)) == crc:
            step = fast_step(text)
        if step is None:
            step = _parse(StepRecord, text, crc, f"run {run_id!r} step {num!r}", kind="step", run_id=run_id, key=num)
        if step.number != num:
            raise StoreCorrupted(f"run {run_id!r} step {num!r}: its record is step {step.number}'s: the file is "
                                 "damaged")
        append(step)
    if len(steps) != stop - start or any(s.number != i for i, s in enumerate(steps, start)):
        have = [s.number for s in steps]
        where = f" from {start} on" if start else ""
        raise StoreCorrupted(f"run {run_id!r} records {stop} committed steps but the store holds steps "
                             f"{_ranges(have)}{where}: the file is damaged; nothing of it was loaded")
    return steps


def _load(sql: Dialect, conn: sqlite3.Connection, run: RunRecord, at_step: int | None, *,
          tail: bool = False) -> StoredRun:
    """The run as stored. ``tail``: only what continuing it needs (the steps from its latest snapshot on,
    the journal rows of its next step, the events not consumed), each checked as a full load checks it;
    the row counts are checked by counting."""
    run_id = run.run_id
    n = run.next_step
    at = n if at_step is None else at_step
    if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at <= n:
        raise ValueError(f"at_step={at_step!r}: run {run_id!r} has committed steps 0..{n - 1}; give a step "
                         f"number from 0 to {n}")
    counts = conn.execute(sql.select_counts, (run_id,)).fetchone()
    if counts is None or not all(_whole(c) for c in counts):
        raise StoreCorrupted(f"run {run_id!r}: its row counts are missing or not whole numbers ({counts!r}): the "
                             "file is damaged; nothing of it was loaded")
    snap = conn.execute(sql.select_snapshot, (run_id, at)).fetchone()
    if snap is None or not _whole(snap[0]) or snap[0] > at:
        raise StoreCorrupted(f"run {run_id!r} has no snapshot at or before step {at}: the file is damaged; "
                             "nothing of it was loaded")
    found = (0, 0, 0)
    first = 0
    if tail:
        first = snap[0]
        found = conn.execute(sql.count_rows, (run_id, run_id, run_id)).fetchone()
        if found[0] != n:
            have = [num for num, _, _ in conn.execute(sql.select_steps, (run_id,))]
            raise StoreCorrupted(f"run {run_id!r} records {n} committed steps but the store holds steps "
                                 f"{_ranges(have)}: the file is damaged; nothing of it was loaded")
    steps = _steps(sql, conn, run_id, first, n, every=not tail)
    calls = _calls(sql, conn, run_id, n if tail else None)
    inbox = _inbox(sql, conn, run_id, n, unconsumed=tail)
    rows_found = (found[1], found[2]) if tail else (len(calls), len(inbox))
    for name, got, recorded in (("journal rows", rows_found[0], counts[0]), ("inbox events", rows_found[1], counts[1])):
        if got != recorded:
            raise StoreCorrupted(f"run {run_id!r} records {recorded} {name} but the store finds {got}: the file is "
                                 "damaged (an index no longer finds a row); nothing of it was loaded")
    calls = _with_lost_intents(conn, run_id, calls, n if tail else 0)
    if run.parent_step is not None and at >= run.parent_step > snap[0]:
        raise StoreCorrupted(f"run {run_id!r} was forked at step {run.parent_step} but the store finds no "
                             "snapshot there: the file is damaged; nothing of it was loaded")
    what = f"run {run_id!r} snapshot at step {snap[0]}"
    try:
        context = _json(_checked(snap[1], snap[2], what, kind="snapshot", run_id=run_id, key=snap[0]))
    except (ValueError, RecursionError):
        raise StoreCorrupted(f"{what}: the stored record is not JSON; nothing of it was loaded") from None
    keys = _segments.wanted(context, what)
    if keys:
        context = _segments.join(context, _segment_texts(sql, conn, run_id, keys, what), _json, what)
    if not isinstance(context, dict):
        raise StoreCorrupted(f"run {run_id!r}: its snapshot at step {snap[0]} is not a JSON object")
    for s in steps[snap[0] - first:at - first]:
        rebuild(context, s, run_id)
    return StoredRun(run=run, steps=steps, calls=calls, inbox=inbox, context=context, at_step=at,
                     snapshot_at=snap[0], first_step=first)


def _calls(sql: Dialect, conn: sqlite3.Connection, run_id: str, since: int | None) -> list[CallRecord]:
    """The run's journal rows (of the steps from ``since`` on), each checked."""
    calls = []
    rows = conn.execute(sql.select_calls, (run_id,)) if since is None else conn.execute(
        sql.select_calls_from, (run_id, since))
    for s, c, text, crc in rows:
        what = f"run {run_id!r} journal row {s!r}/{c!r}"
        call = _parse(CallRecord, text, crc, what, kind="call", run_id=run_id, key=f"{s}/{c}")
        if (call.step, call.call) != (s, c):
            raise StoreCorrupted(f"{what}: its record is row {call.step}/{call.call}'s: the file is damaged")
        calls.append(call)
    return calls


def _inbox(sql: Dialect, conn: sqlite3.Connection, run_id: str, n: int, *, unconsumed: bool) -> list[InboxRecord]:
    """The run's inbox (only the events not consumed), each checked. The record is written once, at
    delivery; the consuming step is the column, set in its commit (and covered by the row's checksum
    from then on)."""
    events: Any = conn.execute(sql.select_inbox, (run_id,)) if not unconsumed else [
        (seq, text, crc, None) for seq, text, crc in conn.execute(sql.select_unconsumed, (run_id,)).fetchall()]
    inbox = []
    for seq, text, crc, consumed in events:
        what = f"run {run_id!r} inbox event {seq!r}"
        if consumed is not None and not (_whole(consumed) and consumed < n + 1):
            raise StoreCorrupted(f"{what}: it was consumed by step {consumed!r}, which the run does not have: the "
                                 "file is damaged; nothing of it was loaded")
        event = _parse(InboxRecord, text, crc, what, kind="inbox", run_id=run_id, key=_inbox_key(seq, consumed))
        if event.seq != seq:
            raise StoreCorrupted(f"{what}: its record is event {event.seq}'s: the file is damaged")
        inbox.append(event.model_copy(update={"consumed_step": consumed}))
    return inbox


def _with_lost_intents(conn: sqlite3.Connection, run_id: str, calls: list[CallRecord], since: int
                       ) -> list[CallRecord]:
    """``calls`` with the intents (of steps from ``since`` on) that only the intent log still holds."""
    intents = conn.intents if isinstance(conn, _Connection) else None
    return calls if intents is None else intents.restore(run_id, calls, since)


def _taken(sql: Dialect, conn: sqlite3.Connection, run: RunRecord) -> StoredRun:
    """A claimed run without its history or context: its record, the journal rows of its next step and
    the events not consumed (what a claim adds to the tail its claimer loaded before)."""
    n = run.next_step
    run_id = run.run_id
    calls = _with_lost_intents(conn, run_id, _calls(sql, conn, run_id, n), n)
    inbox = _inbox(sql, conn, run_id, n, unconsumed=True)
    return StoredRun(run=run, steps=[], calls=calls, inbox=inbox, context={}, at_step=n, snapshot_at=n,
                     first_step=n)


def _claimed(sql: Dialect, conn: sqlite3.Connection, run: RunRecord, *, restarts: int, status: RunStatus
             ) -> RunRecord:
    """``run`` taken over: its epoch raised (older holders are fenced out), not started yet."""
    run = run.model_copy(update={"epoch": run.epoch + 1, "restarts": restarts, "status": status, "started": False,
                                 "updated_at": time.time()})
    text = run.model_dump_json()
    conn.execute(sql.update_claimed, (run.epoch, str(run.status), run.updated_at, text, _run_crc(run.run_id, text),
                                      run.run_id))
    return run


def _waited(sql: Dialect, conn: sqlite3.Connection, run: RunRow, consumed: int | None) -> list[InboxRecord]:
    """For a run about to be stored as waiting: the unconsumed events of its inbox it waits for
    (read in the transaction that would suspend it, so a delivery is never missed); else none."""
    wait = run.get("wait")
    if run.get("status") != RunStatus.WAITING or not isinstance(wait, dict):
        return []
    run_id = run["run_id"]
    found = []
    for seq, text, crc in conn.execute(sql.select_unconsumed, (run_id,)):
        if seq == consumed:
            continue
        event = _parse(InboxRecord, text, crc, f"run {run_id!r} inbox event {seq!r}", kind="inbox", run_id=run_id,
                       key=_inbox_key(seq, None))
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
    if isinstance(exc, UnicodeDecodeError):  # sqlite3 could not decode SQLite's message (it quotes damage)
        return StoreCorrupted(f"{where} is damaged (its schema or a row holds bytes that are not UTF-8): restore "
                              "it from a backup; nothing was loaded")
    if not isinstance(exc, sqlite3.Error) or isinstance(exc, StoreError):
        return exc
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "readonly database" in text:
        return StoreError(f"{where} was opened read-only (SQLiteStore(..., readonly=True)): it takes no writes; "
                          "open it without readonly=True to change it")
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return StoreError(f"{where} is locked by another process's write longer than busy_timeout: retry, or "
                          "raise SQLiteStore(..., busy_timeout=)")
    damaged = ("malformed" in text or "not a database" in text
               or type(exc) is sqlite3.DatabaseError)  # sqlite3 raises the bare class for a bad file
    if damaged:
        return StoreCorrupted(f"{where} is damaged ({text}): restore it from a backup; nothing was loaded")
    return StoreError(f"{where}: {text}")
