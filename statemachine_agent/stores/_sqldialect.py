"""The SQL a store speaks: every statement :class:`~._sqlite.SQLiteStore` runs, and the few facts that
differ between databases, in one dialect object.

:class:`Dialect` names each statement and fact; :data:`SQLITE` gives SQLite's. The store's operations
(:mod:`._sqlite`: fencing, checksums, the checks on load) only execute these statements, and the
writer thread that runs them in order, in group commits (:mod:`._sqlwriter`), knows no SQL beyond the
dialect's transaction statements. So a PostgreSQL store replaces this dialect (and how a connection is
opened) and keeps the rest; what it would change:

* placeholders: ``?`` here, ``%s`` for psycopg;
* upserts: ``INSERT OR IGNORE``/``INSERT OR REPLACE`` here, ``INSERT ... ON CONFLICT ... DO NOTHING``/
  ``DO UPDATE`` there;
* JSON extraction (``due_runs``): ``json_extract(record, '$.wait.deadline')`` here, ``(record::json #>>
  '{wait,deadline}')::float8`` there (keep records in ``json`` or ``text``, never ``jsonb``: it
  changes numbers);
* locking: a write transaction takes SQLite's one write lock at once (``BEGIN IMMEDIATE``); PostgreSQL
  would ``BEGIN`` and lock the run's row (``SELECT ... FOR UPDATE``) in the statements that read it;
* ``NOT INDEXED`` (read the table itself, so a damaged index hides no row) is SQLite's; PostgreSQL
  has no such hint and would read the plain table.

The stored layout (tables, columns, row checksums) is the same for every dialect: see
docs/durability.md.
"""

from __future__ import annotations

__all__ = ["SQLITE", "Dialect", "SQLiteDialect"]

# --- SQLite's tables ------------------------------------------------------------------------------
_TABLES = """
CREATE TABLE IF NOT EXISTS sma_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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
CREATE TABLE IF NOT EXISTS sma_segments (
    run_id TEXT NOT NULL, key TEXT NOT NULL, items TEXT NOT NULL, crc INTEGER NOT NULL,
    PRIMARY KEY (run_id, key));
"""

SCHEMA_V1 = _TABLES + """
CREATE TABLE IF NOT EXISTS sma_runs (
    run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, epoch INTEGER NOT NULL, next_step INTEGER NOT NULL,
    status TEXT NOT NULL, updated_at REAL NOT NULL, record TEXT NOT NULL, crc INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS sma_runs_by_workflow ON sma_runs (workflow, updated_at);
"""
"""Schema version 1, as SQLite files of that version hold it."""

# Version 2: every CRC covers its row's key, and the run's row counts its journal and inbox rows (so a row
# an index no longer finds is detected). No index on (workflow, updated_at): listing scans the table.
SCHEMA = _TABLES + """
CREATE TABLE IF NOT EXISTS sma_runs (
    run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, epoch INTEGER NOT NULL, next_step INTEGER NOT NULL,
    status TEXT NOT NULL, updated_at REAL NOT NULL, record TEXT NOT NULL, crc INTEGER NOT NULL,
    journal_rows INTEGER NOT NULL DEFAULT 0, inbox_rows INTEGER NOT NULL DEFAULT 0);
"""
"""The current schema (version 2)."""

ADD_COUNTS = ("ALTER TABLE sma_runs ADD COLUMN journal_rows INTEGER NOT NULL DEFAULT 0",
              "ALTER TABLE sma_runs ADD COLUMN inbox_rows INTEGER NOT NULL DEFAULT 0",
              "DROP INDEX IF EXISTS sma_runs_by_workflow")
"""Version 1 -> 2's change of the tables."""


class Dialect:
    """The statements and facts of one database's SQL. Every statement takes its parameters in the
    order its docstring gives; the store binds them with the database's placeholder."""

    schema: str
    """The tables (statements separated by ``;``), each made only if it is not there yet."""

    # --- transactions (the writer thread) ---------------------------------------------------------
    begin_write: str
    """Start a transaction that will write, taking the write lock now (group commit runs many
    requests in it)."""
    begin_read: str
    """Start a transaction that only reads (a store opened read-only)."""
    commit: str
    rollback: str
    savepoint: str
    """Each request of a group runs under its own savepoint, so one failing undoes only itself."""
    rollback_savepoint: str
    release_savepoint: str
    relax_commit: str
    """Run before a transaction whose requests need no fsync of their own (a claim): its commit need
    not reach the disk by itself (the next durable commit syncs it)."""
    restore_commit: str
    """Run after it: ``{}`` is the store's own durability (``FULL``, ``EXTRA``)."""

    select_version: str
    """() -> (the schema version, as text), if the store has one."""
    put_version: str
    """(version as text): an upsert."""

    # --- runs ------------------------------------------------------------------------------------
    run_columns: str
    """The columns a run is read by: record, crc, epoch, next_step, status, workflow."""
    select_run: str
    """(run_id) -> a row of ``run_columns``."""
    select_run_unindexed: str
    """(run_id) -> a row if the table holds the run, without its index."""
    select_run_ids: str
    """() -> every run id, read from the table itself."""
    list_runs: str
    """() -> (run_id, ``run_columns``) of every run, newest first, read from the table itself."""
    list_workflow_runs: str
    """(workflow) -> the same, of one workflow."""
    select_counts: str
    """(run_id) -> (journal_rows, inbox_rows)."""
    select_epoch: str
    """(run_id) -> (epoch)."""
    select_fence: str
    """(run_id) -> (epoch, next_step)."""
    insert_run: str
    """(run_id, workflow, epoch, next_step, status, updated_at, record, crc): a new run, no journal or
    inbox rows; fails with the database's integrity error when the id is taken."""
    insert_forked_run: str
    """(run_id, workflow, epoch, next_step, status, updated_at, record, crc, journal_rows)."""
    update_claimed: str
    """(epoch, status, updated_at, record, crc, run_id)."""
    update_record: str
    """(record, crc, run_id)."""
    commit_run: str
    """(next_step, status, updated_at, record, crc, run_id, epoch, next_step before): fenced."""
    suspend_run: str
    """(status, updated_at, record, crc, run_id, epoch, next_step): fenced."""
    due_runs: str
    """(workflow, now) -> run_id of each waiting run whose deadline passed or whose awaited event is in
    its inbox, oldest first (the JSON of the run's record and the events read in the database)."""

    # --- steps, snapshots --------------------------------------------------------------------------
    select_steps: str
    """(run_id) -> (number, record, crc), by number."""
    select_steps_from: str
    """(run_id, start, stop) -> (number, record, crc) of the steps ``start <= number < stop``, by number."""
    count_rows: str
    """(run_id, run_id, run_id) -> how many steps, journal rows and inbox events the run has."""
    insert_step: str
    """(run_id, number, record, crc)."""
    insert_snapshot: str
    """(run_id, step, context, crc): a new snapshot."""
    put_snapshot: str
    """(run_id, step, context, crc): an upsert (the snapshot at that step, new or replaced)."""
    select_snapshot: str
    """(run_id, at) -> (step, context, crc) of the latest snapshot at or before ``at``."""
    insert_segment: str
    """(run_id, key, items, crc): a snapshot's segment (``._segments``); nothing when the run holds it."""
    select_all_segments: str
    """(run_id) -> (key, items, crc) of every segment the run holds: what a fork copies."""

    # --- the journal -------------------------------------------------------------------------------
    select_calls: str
    """(run_id) -> (step, call, record, crc), by step and call."""
    select_calls_from: str
    """(run_id, step) -> (step, call, record, crc) of the steps from ``step`` on, by step and call."""
    insert_call_if_new: str
    """(run_id, step, call, record, crc): inserts nothing when the row exists (rowcount 0)."""
    update_call: str
    """(record, crc, run_id, step, call)."""
    count_call_rows: str
    """(n, run_id): add ``n`` to the run's journal row count."""

    # --- the inbox -------------------------------------------------------------------------------
    select_inbox: str
    """(run_id) -> (seq, record, crc, consumed_step), by seq."""
    select_unconsumed: str
    """(run_id) -> (seq, record, crc) of the events not consumed, by seq."""
    select_event: str
    """(run_id, seq) -> (record, crc)."""
    next_seq: str
    """(run_id) -> the next event's sequence number."""
    insert_event: str
    """(run_id, seq, record, crc): an event not consumed."""
    count_inbox_row: str
    """(run_id): one more inbox row."""
    consume_event: str
    """(consumed_step, run_id, seq): only an event not consumed yet (rowcount 0 otherwise)."""
    seal_event: str
    """(crc, run_id, seq)."""

    def copied_rows(self, table: str, keys: tuple[str, ...], column: str) -> str:
        """(run_id, before) -> (``*keys``, column, crc) of a run's rows in ``table`` whose first key is
        below ``before``, by key: what a fork copies."""
        raise NotImplementedError

    def insert_copied(self, table: str, keys: int) -> str:
        """(run_id, ``*keys``, record, crc): one row copied into ``table`` (``keys`` key columns)."""
        raise NotImplementedError

    def select_segments(self, count: int) -> str:
        """(run_id, ``count`` keys) -> (key, items, crc) of those of the run's segments the store holds."""
        raise NotImplementedError


class SQLiteDialect(Dialect):
    """SQLite's SQL (3.38 or later: ``json_extract`` and ``NOT INDEXED``)."""

    schema = SCHEMA

    begin_write = "BEGIN IMMEDIATE"
    begin_read = "BEGIN"
    commit = "COMMIT"
    rollback = "ROLLBACK"
    savepoint = "SAVEPOINT sma_op"
    rollback_savepoint = "ROLLBACK TO sma_op"
    release_savepoint = "RELEASE sma_op"
    relax_commit = "PRAGMA synchronous=NORMAL"
    restore_commit = "PRAGMA synchronous={}"

    select_version = "SELECT value FROM sma_meta WHERE key='schema_version'"
    put_version = "INSERT OR REPLACE INTO sma_meta VALUES ('schema_version', ?)"

    run_columns = "record, crc, epoch, next_step, status, workflow"
    select_run = f"SELECT {run_columns} FROM sma_runs WHERE run_id=?"
    select_run_unindexed = "SELECT 1 FROM sma_runs NOT INDEXED WHERE run_id=?"
    select_run_ids = "SELECT run_id FROM sma_runs NOT INDEXED"
    list_runs = f"SELECT run_id, {run_columns} FROM sma_runs NOT INDEXED ORDER BY updated_at DESC"
    list_workflow_runs = (f"SELECT run_id, {run_columns} FROM sma_runs NOT INDEXED WHERE workflow=? "
                          "ORDER BY updated_at DESC")
    select_counts = "SELECT journal_rows, inbox_rows FROM sma_runs WHERE run_id=?"
    select_epoch = "SELECT epoch FROM sma_runs WHERE run_id=?"
    select_fence = "SELECT epoch, next_step FROM sma_runs WHERE run_id=?"
    insert_run = "INSERT INTO sma_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0)"
    insert_forked_run = "INSERT INTO sma_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
    update_claimed = "UPDATE sma_runs SET epoch=?, status=?, updated_at=?, record=?, crc=? WHERE run_id=?"
    update_record = "UPDATE sma_runs SET record=?, crc=? WHERE run_id=?"
    commit_run = ("UPDATE sma_runs SET next_step=?, status=?, updated_at=?, record=?, crc=? "
                  "WHERE run_id=? AND epoch=? AND next_step=?")
    suspend_run = ("UPDATE sma_runs SET status=?, updated_at=?, record=?, crc=? "
                   "WHERE run_id=? AND epoch=? AND next_step=?")
    # A record that is not JSON is passed over here; the run's own load reports its damage.
    due_runs = ("SELECT r.run_id FROM sma_runs AS r NOT INDEXED WHERE r.workflow=? AND r.status='waiting' "
                "AND json_valid(r.record) AND ("
                " json_extract(r.record, '$.wait.deadline') <= ? OR EXISTS ("
                "  SELECT 1 FROM sma_inbox AS i WHERE i.run_id=r.run_id AND i.consumed_step IS NULL"
                "  AND json_valid(i.record)"
                "  AND json_extract(i.record, '$.event') = json_extract(r.record, '$.wait.event')))"
                " ORDER BY r.updated_at")

    select_steps = "SELECT number, record, crc FROM sma_steps WHERE run_id=? ORDER BY number"
    select_steps_from = ("SELECT number, record, crc FROM sma_steps WHERE run_id=? AND number>=? AND number<? "
                         "ORDER BY number")
    count_rows = ("SELECT (SELECT COUNT(*) FROM sma_steps WHERE run_id=?), "
                  "(SELECT COUNT(*) FROM sma_journal WHERE run_id=?), (SELECT COUNT(*) FROM sma_inbox WHERE run_id=?)")
    insert_step = "INSERT INTO sma_steps VALUES (?, ?, ?, ?)"
    insert_snapshot = "INSERT INTO sma_snapshots VALUES (?, ?, ?, ?)"
    put_snapshot = "INSERT OR REPLACE INTO sma_snapshots VALUES (?, ?, ?, ?)"
    select_snapshot = ("SELECT step, context, crc FROM sma_snapshots WHERE run_id=? AND step<=? "
                       "ORDER BY step DESC LIMIT 1")
    insert_segment = "INSERT OR IGNORE INTO sma_segments VALUES (?, ?, ?, ?)"
    select_all_segments = "SELECT key, items, crc FROM sma_segments WHERE run_id=? ORDER BY key"

    select_calls = "SELECT step, call, record, crc FROM sma_journal WHERE run_id=? ORDER BY step, call"
    select_calls_from = ("SELECT step, call, record, crc FROM sma_journal WHERE run_id=? AND step>=? "
                         "ORDER BY step, call")
    insert_call_if_new = "INSERT OR IGNORE INTO sma_journal VALUES (?, ?, ?, ?, ?)"
    update_call = "UPDATE sma_journal SET record=?, crc=? WHERE run_id=? AND step=? AND call=?"
    count_call_rows = "UPDATE sma_runs SET journal_rows=journal_rows+? WHERE run_id=?"

    select_inbox = "SELECT seq, record, crc, consumed_step FROM sma_inbox WHERE run_id=? ORDER BY seq"
    select_unconsumed = "SELECT seq, record, crc FROM sma_inbox WHERE run_id=? AND consumed_step IS NULL ORDER BY seq"
    select_event = "SELECT record, crc FROM sma_inbox WHERE run_id=? AND seq=?"
    next_seq = "SELECT COALESCE(MAX(seq), 0) + 1 FROM sma_inbox WHERE run_id=?"
    insert_event = "INSERT INTO sma_inbox VALUES (?, ?, ?, ?, NULL)"
    count_inbox_row = "UPDATE sma_runs SET inbox_rows=inbox_rows+1 WHERE run_id=?"
    consume_event = "UPDATE sma_inbox SET consumed_step=? WHERE run_id=? AND seq=? AND consumed_step IS NULL"
    seal_event = "UPDATE sma_inbox SET crc=? WHERE run_id=? AND seq=?"

    def copied_rows(self, table: str, keys: tuple[str, ...], column: str) -> str:
        return (f"SELECT {', '.join(keys)}, {column}, crc FROM {table} WHERE run_id=? AND {keys[0]}<? "
                f"ORDER BY {', '.join(keys)}")

    def insert_copied(self, table: str, keys: int) -> str:
        return f"INSERT INTO {table} VALUES ({', '.join('?' * (keys + 3))})"

    def select_segments(self, count: int) -> str:
        return f"SELECT key, items, crc FROM sma_segments WHERE run_id=? AND key IN ({', '.join('?' * count)})"


SQLITE = SQLiteDialect()
"""SQLite's dialect: what :class:`~._sqlite.SQLiteStore` speaks."""
