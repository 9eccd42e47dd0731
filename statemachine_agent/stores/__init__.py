"""Durable runs: where every step is committed. ``from statemachine_agent.stores import SQLiteStore``.

See docs/durability.md for the guarantees and :mod:`.conformance` for the suite a store must pass. A
store is given the typed rows (``RunRow``, ``StepRow``, ``CallRow``, ``CommitRequest``) and returns the
models (``StoredRun``, ``RunRecord``, ...).
"""

from __future__ import annotations

from ..errors import IncompatibleRun, RunExists, RunFenced, RunNotFound, StoreCorrupted, StoreError
from ._base import Store
from ._records import (
    SCHEMA_VERSION,
    CallRecord,
    CallRow,
    CallStatus,
    CommitRequest,
    Counters,
    CountersRow,
    InboxRecord,
    RunRecord,
    RunRow,
    RunStatus,
    StepRecord,
    StepRow,
    StoredRun,
    WaitRecord,
    WaitRow,
    rebuild,
)
from ._sqlite import MemoryStore, SQLiteStore

__all__ = [
    "SCHEMA_VERSION",
    "CallRecord",
    "CallRow",
    "CallStatus",
    "CommitRequest",
    "Counters",
    "CountersRow",
    "InboxRecord",
    "IncompatibleRun",
    "MemoryStore",
    "RunExists",
    "RunFenced",
    "RunNotFound",
    "RunRecord",
    "RunRow",
    "RunStatus",
    "SQLiteStore",
    "StepRecord",
    "StepRow",
    "Store",
    "StoreCorrupted",
    "StoreError",
    "StoredRun",
    "WaitRecord",
    "WaitRow",
    "rebuild",
]
