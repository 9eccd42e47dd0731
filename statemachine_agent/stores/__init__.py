"""Durable runs: where every step is committed. ``from statemachine_agent.stores import SQLiteStore``.

See docs/durability.md for the guarantees and :mod:`.conformance` for the suite a store must pass.
"""

from __future__ import annotations

from ..errors import IncompatibleRun, RunExists, RunFenced, RunNotFound, StoreCorrupted, StoreError
from ._base import Store
from ._records import (
    SCHEMA_VERSION,
    CallRecord,
    CallStatus,
    Counters,
    InboxRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    StoredRun,
    WaitRecord,
)
from ._sqlite import MemoryStore, SQLiteStore

__all__ = [
    "SCHEMA_VERSION",
    "CallRecord",
    "CallStatus",
    "Counters",
    "InboxRecord",
    "IncompatibleRun",
    "MemoryStore",
    "RunExists",
    "RunFenced",
    "RunNotFound",
    "RunRecord",
    "RunStatus",
    "SQLiteStore",
    "StepRecord",
    "Store",
    "StoreCorrupted",
    "StoreError",
    "StoredRun",
    "WaitRecord",
]
