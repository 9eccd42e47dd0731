"""The typed store contract (issue 22): stored bytes unchanged across the change, records holding the
library's enums, and every statement a store runs coming from its SQL dialect.

tests/fixtures/store-v2.db was written by the release before the typed contract (tests/store_fixture.py
says how); the current code must read and continue it. Schema version 3 (issue 17) stores a field a step
changed in place as its operations: those step rows differ from version 2's, every other row is still
its bytes. tests/fixtures/store-v3.db pins version 3's bytes from now on (written by
``python tests/store_fixture.py make tests/fixtures/store-v3.db``)."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import store_fixture

from statemachine_agent import Outcome
from statemachine_agent.result import StepKind
from statemachine_agent.stores import CallStatus, RunStatus, SQLiteStore, StoredRun
from statemachine_agent.stores._records import call_row, run_row
from statemachine_agent.stores._sqldialect import Dialect, SQLiteDialect
from statemachine_agent.tools import Effect

FIXTURE = Path(__file__).parent / "fixtures" / "store-v2.db"
FIXTURE_V3 = Path(__file__).parent / "fixtures" / "store-v3.db"


@pytest.mark.parametrize("fixture", [FIXTURE, FIXTURE_V3], ids=["v2", "v3"])
def test_a_store_written_by_the_release_before_loads_and_continues(fixture: Path) -> None:
    """Every run of the fixture loads, lists and continues: the crashed at_most_once call's outcome is
    unknown (never sent again), the waiting and forked runs take their event, the ended run stays ended."""
    store_fixture.check(fixture)


def test_the_rows_written_are_the_bytes_version_3_wrote(tmp_path: Path) -> None:
    """The same runs, written now with the same frozen clock: every row's JSON text and checksum is the
    version-3 fixture's, byte for byte."""
    store_fixture.make(tmp_path / "now.db")
    now, before = store_fixture.rows(tmp_path / "now.db"), store_fixture.rows(FIXTURE_V3)
    assert now.keys() == before.keys()
    changed = {key: (before[key][0], now[key][0]) for key in before if now[key] != before[key]}
    assert not changed, f"{len(changed)} rows differ from version 3's, e.g. {next(iter(changed.items()))}"


def test_only_steps_that_changed_a_field_in_place_differ_from_version_2(tmp_path: Path) -> None:
    """Against the release before (version 2): a step row that stores operations holds them instead of
    the field's whole JSON (and the whole field rebuilds from them), and a run's record adds what its
    model calls spent (``spent``, last); every other row is its bytes."""
    store_fixture.make(tmp_path / "now.db")
    now, before = store_fixture.rows(tmp_path / "now.db"), store_fixture.rows(FIXTURE)
    assert now.keys() == before.keys()
    with_ops = {k for k, (text, _) in now.items() if k[0] == "sma_steps" and '"ops":' in text}
    assert with_ops, "the fixture's runs append to a list in place: some step must store operations"
    for key, (text, _) in now.items():
        if key[0] == "sma_runs":
            record = json.loads(text)
            assert record.pop("spent") == {"tokens": 0, "cost": 0.0}
            now[key] = (json.dumps(record, separators=(",", ":"), ensure_ascii=False), before[key][1])
    changed = {k for k in before if now[k] != before[k]}
    assert changed == with_ops
    shutil.copyfile(FIXTURE, tmp_path / "v2.db")
    with SQLiteStore(tmp_path / "now.db") as a, SQLiteStore(tmp_path / "v2.db") as b:
        for run in store_fixture.RUNS:
            assert a.load(run).result().context == b.load(run).result().context


def test_loaded_records_hold_the_library_enums(tmp_path: Path) -> None:
    """A step's kind, a call's effect and a run's outcome load as StepKind, Effect and Outcome (the
    stored JSON holds their values, as before)."""
    with store_fixture.frozen_clock(), SQLiteStore(tmp_path / "runs.db") as store:
        compiled = store_fixture.build()
        compiled.run_sync(store_fixture.Order(amount=5), store=store, run_id="r")
        compiled.deliver_sync("r", "approval", {"ok": True}, store=store)
        stored: StoredRun = store.load("r").result()
    assert stored.run.status is RunStatus.DONE and stored.run.outcome is Outcome.SUCCESS
    assert [s.kind for s in stored.steps] == [StepKind.TRANSITION] * 5
    assert all(type(s.kind) is StepKind for s in stored.steps)
    assert [c.effect for c in stored.calls] == [Effect.READ, Effect.IDEMPOTENT, Effect.AT_MOST_ONCE]
    assert all(type(c.effect) is Effect for c in stored.calls)


def test_a_row_built_with_enums_is_stored_as_their_values() -> None:
    """The builders keep the enums; their JSON is the plain strings a store has always held."""
    row = call_row(step=0, call=0, tool="t", effect=Effect.AT_MOST_ONCE, key="k", status=CallStatus.INTENT, at=0.0)
    assert json.loads(json.dumps(row))["effect"] == "at_most_once"
    run = run_row(run_id="r", workflow="w", fingerprint="", status=RunStatus.DONE, state="s", next_step=1, epoch=1,
                  counters={"actions_run": 1, "visits": {}, "traversals": {}}, written=[], initial_written=[],
                  max_steps=5, created_at=0.0, updated_at=0.0, terminal="s", outcome=Outcome.SUCCESS)
    assert json.loads(json.dumps(run))["outcome"] == "success"
    assert json.loads(json.dumps(run))["status"] == "done"


# --- the dialect holds the SQL -----------------------------------------------------------------------
MARK = " /* dialect */"


class MarkedDialect(SQLiteDialect):
    """SQLite's dialect with a comment on every statement: a statement run without it did not come from
    the dialect."""

    def copied_rows(self, table: str, keys: tuple[str, ...], column: str) -> str:
        return super().copied_rows(table, keys, column) + MARK

    def insert_copied(self, table: str, keys: int) -> str:
        return super().insert_copied(table, keys) + MARK


for _name in Dialect.__annotations__:
    if _name not in ("schema", "run_columns"):
        setattr(MarkedDialect, _name, getattr(SQLiteDialect, _name) + MARK)


class MarkedStore(SQLiteStore):
    _sql = MarkedDialect()


def test_every_statement_an_operation_runs_comes_from_the_dialect(tmp_path: Path) -> None:
    """Runs started, crashed, resumed, delivered to, forked, listed and woken, on a store whose dialect
    marks each statement: once the store is open, SQLite sees no statement without the mark (the writer's
    transactions and savepoints included). So a store for another database replaces the dialect."""
    seen: list[str] = []
    with store_fixture.frozen_clock(), MarkedStore(tmp_path / "runs.db") as store:
        store._writer.conn.set_trace_callback(seen.append)
        compiled = store_fixture.build()
        compiled.run_sync(store_fixture.Order(amount=5), store=store, run_id="a")
        compiled.deliver_sync("a", "approval", {"ok": True}, store=store)
        with contextlib.suppress(store_fixture.Crash):
            store_fixture.build(crash=True).run_sync(store_fixture.Order(amount=9), store=store, run_id="c")
        compiled.resume_sync("c", store=store)
        compiled.fork_sync("a", at_step=2, store=store, new_run_id="f")
        compiled.runs(store)
        compiled.wake_due_sync(store=store)
        compiled.check_runs(store)
        store.close()
    assert len(seen) > 50
    unmarked = sorted({s for s in seen if not s.rstrip().endswith(MARK.strip())})
    assert not unmarked, f"statements not from the dialect: {unmarked[:5]}"
