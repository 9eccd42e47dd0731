"""The store conformance suite against the stores that ship, and SQLiteStore's own file checks.

``StoreConformance`` (statemachine_agent/stores/conformance.py) runs against SQLiteStore as shipped
(a file, synchronous=FULL), with synchronous="NORMAL", with snapshot_every=1, and against
MemoryStore (persistent = False). Known bugs of SQLiteStore are strict expected failures, listed in
SQLITE_KNOWN_FAILURES with their cause: fixing one makes its test pass, and the entry must go.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import pytest

# The suite's asserts get pytest's detailed messages (must come before the import below).
pytest.register_assert_rewrite("statemachine_agent.stores.conformance")

from statemachine_agent.stores import (  # noqa: E402
    SCHEMA_VERSION,
    MemoryStore,
    SQLiteStore,
    Store,
    StoreCorrupted,
    StoreError,
)
from statemachine_agent.stores._sqlite import _row_crc  # noqa: E402
from statemachine_agent.stores.conformance import StoreConformance  # noqa: E402

SQLITE_KNOWN_FAILURES: dict[str, str] = {}


class _SQLiteSuite(StoreConformance):
    """The hooks that reach under SQLiteStore's interface (shared by the file and memory variants)."""

    known_failures = SQLITE_KNOWN_FAILURES

    _WHERE: ClassVar[dict[str, tuple[str, str, str, str]]] = {
        "run": ("sma_runs", "record", "", ""),
        "step": ("sma_steps", "record", " AND number=0", "0"),
        "snapshot": ("sma_snapshots", "context", " AND step=0", "0"),
        "call": ("sma_journal", "record", " AND step=0 AND call=0", "0/0"),
        "inbox": ("sma_inbox", "record", " AND seq=1", "1/"),  # event 1, not consumed
    }

    def tamper(self, store: Store, run_id: str, kind: str, text: str) -> None:
        assert isinstance(store, SQLiteStore)
        table, column, where, key = self._WHERE[kind]

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(f"UPDATE {table} SET {column}=?, crc=? WHERE run_id=?{where}",
                               (text, _row_crc(kind, run_id, key, text), run_id))
            return cur.rowcount

        assert store._submit(op).result() == 1

    def stored_texts(self, store: Store) -> list[str | bytes]:
        assert isinstance(store, SQLiteStore)

        def op(conn: sqlite3.Connection) -> list[Any]:
            out: list[Any] = []
            for table, column, _, _ in self._WHERE.values():
                out += [row[0] for row in conn.execute(f"SELECT {column} FROM {table}")]
            return out

        return store._submit(op).result()


class TestSQLiteStore(_SQLiteSuite):
    def make_store(self, path: Path) -> Store:
        return SQLiteStore(path)


class TestSQLiteStoreSynchronousNormal(_SQLiteSuite):
    def make_store(self, path: Path) -> Store:
        return SQLiteStore(path, synchronous="NORMAL")


class TestSQLiteStoreSnapshotEveryStep(_SQLiteSuite):
    def make_store(self, path: Path) -> Store:
        return SQLiteStore(path, snapshot_every=1)


class TestMemoryStore(_SQLiteSuite):
    persistent = False

    def make_store(self, path: Path) -> Store:
        return MemoryStore()


def test_known_failures_must_name_tests_of_the_suite() -> None:
    """A misspelt known_failures entry is an error at class creation, not a silently ignored mark."""
    with pytest.raises(TypeError, match="not a test of the suite"):
        type("TestTypo", (StoreConformance,), {"known_failures": {"test_does_not_exist": "why"}})


# --- SQLiteStore's file checks -------------------------------------------------------------------
def _fill(path: Path) -> None:
    with SQLiteStore(path) as store:
        store.create({"run_id": "r", "workflow": "wf", "fingerprint": "", "status": "running", "state": "s",
                      "next_step": 0, "epoch": 1, "counters": {}, "written": [], "max_steps": 5,
                      "created_at": 0.0, "updated_at": 0.0}, {}).result()


def test_a_file_of_a_newer_schema_version_is_refused_with_upgrade_advice(tmp_path: Path) -> None:
    """A store file whose schema_version is above SCHEMA_VERSION was written by a newer release:
    opening it raises StoreError saying to upgrade, and leaves its version as it was."""
    path = tmp_path / "runs.db"
    _fill(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE sma_meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.close()
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade"):
        SQLiteStore(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM sma_meta WHERE key='schema_version'").fetchone()[0] == \
            str(SCHEMA_VERSION + 1)
    conn.close()


def test_a_schema_version_that_is_not_a_number_is_corrupted(tmp_path: Path) -> None:
    """A schema_version that is not a number means the file is damaged: StoreCorrupted."""
    path = tmp_path / "runs.db"
    _fill(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE sma_meta SET value='one' WHERE key='schema_version'")
    conn.close()
    with pytest.raises(StoreCorrupted, match="not a number"):
        SQLiteStore(path)


@pytest.mark.parametrize("application_id", [0, 0x12345678])
def test_an_sqlite_database_of_another_program_is_refused_untouched(tmp_path: Path, application_id: int) -> None:
    """A plain SQLite database with other tables (or another program's application_id) is refused
    with a StoreError naming it as another program's, and the file is not changed."""
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA application_id={application_id}")
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="another program"):
        SQLiteStore(path)
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


def test_an_empty_database_of_another_program_with_its_id_is_refused(tmp_path: Path) -> None:
    """Even with no tables, a database marked with another application_id is not taken over."""
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id=42")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="another program"):
        SQLiteStore(path)


@pytest.mark.parametrize("content", [
    b"these are my notes, not a database\n" * 50,
    bytes(range(256)) * 64,
    b"SQLite format 3\x00" + b"\xff" * 84,  # a header and nothing else
    "truncated",
    "garbled",
])
def test_a_file_that_is_not_an_sqlite_database_is_a_store_error(tmp_path: Path, content: bytes | str) -> None:
    """A file that is not an SQLite database (text, random bytes, a bare header, a store cut short or
    overwritten in its middle) gives StoreCorrupted or StoreError, never a raw sqlite3 error, at open
    or at the first read."""
    path = tmp_path / "runs.db"
    if isinstance(content, str):
        _fill(path)
        data = path.read_bytes()
        data = data[:1500] if content == "truncated" else data[:100] + b"\xa5" * (len(data) - 100)
        path.write_bytes(data)
    else:
        path.write_bytes(content)
    error: BaseException | None = None
    try:
        with SQLiteStore(path) as store:
            store.list_runs().result()
            store.load("r").result()
    except Exception as exc:
        error = exc
    assert error is not None, "the damaged file was read as a store"
    assert isinstance(error, StoreError), f"not a StoreError: {error!r}"
    assert not isinstance(error, sqlite3.Error)
    assert isinstance(error, StoreCorrupted) or "the store" in str(error)
    assert str(path) in str(error), f"the error does not name the file: {error}"


def test_a_folder_or_a_missing_folder_is_a_store_error(tmp_path: Path) -> None:
    """A path that is a folder, or in a folder that does not exist, gives StoreError at open."""
    with pytest.raises(StoreError):
        SQLiteStore(tmp_path)
    with pytest.raises(StoreError, match="does not exist"):
        SQLiteStore(tmp_path / "missing" / "runs.db")


def test_a_store_finalized_at_interpreter_exit_raises_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At interpreter exit CPython sets module globals to None before it collects the last objects
    (a store kept by a reference cycle or a framework's cache): SQLiteStore.__del__ must not need them.
    Seen for real as 'Exception ignored in: <function SQLiteStore.__del__>' after a Hypothesis script."""
    from statemachine_agent.stores import _sqlite

    store = SQLiteStore(tmp_path / "runs.db")
    store.close()
    with monkeypatch.context() as patched:  # undone before the store itself is collected
        patched.setattr(_sqlite, "contextlib", None)
        store.__del__()
