"""Damaged store files: truncated, bit-flipped, in the main file and in its -wal.

A damaged file must give a typed error (``StoreError`` / ``StoreCorrupted``) whose message says what
is wrong, or load runs exactly as the undamaged file does (the damage hit unused space): never a
silent ``None``, a different or shorter run, a raw ``sqlite3`` error or another exception type.
What each damaged copy is asked: open the store, load both runs, list the runs, resume both (one
finished, one stopped after step 4 with the journaled call of step 5 DONE).

The store is built with a frozen clock, so its bytes are the same on every run of this file and a
Hypothesis example (derandomized) flips the same byte every time. The main file is damaged only
after the store was closed (closing checkpoints the WAL into it and removes the -wal); the -wal
tests copy the files of a store that is still open, as a killed process would leave them.

The tests named after a damage (a schema byte that is not UTF-8, a schema version flipped to 0,
flipped index entries of each kind, a flipped byte in the -wal) were strict expected failures until
issue 16 fixed them; the property tests tolerate no known bug any more.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
import types
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from crash_worker import Job, build
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachine_agent import _durable as durable_module
from statemachine_agent import runner as runner_module
from statemachine_agent.errors import RunNotFound, StoreCorrupted, StoreError
from statemachine_agent.stores import SCHEMA_VERSION, SQLiteStore, StoredRun
from statemachine_agent.stores import _sqlite as sqlite_module

PAGE = 4096
WAL_HEADER, WAL_FRAME_HEADER = 32, 24
RUNS = ("d", "h")


class Crash(BaseException):
    """Stands for the process dying (see tests/test_durable.py)."""


@contextlib.contextmanager
def frozen_clock() -> Iterator[None]:
    """Every timestamp and duration the store records is a constant: the file's bytes are too."""
    fake = types.SimpleNamespace(time=lambda: 1_700_000_000.0, perf_counter=lambda: 100.0)
    with pytest.MonkeyPatch.context() as mp:
        for module in (runner_module, durable_module, sqlite_module):
            mp.setattr(module, "time", fake)
        yield


def stop_at(state: str, visit: int) -> Callable[[str], None]:
    """A ``mid`` hook that crashes the ``visit``-th action of ``state`` between its two writes."""
    seen = Counter[str]()

    def mid(s: str) -> None:
        seen[s] += 1
        if s == state and seen[s] == visit:
            raise Crash

    return mid


class Recording(SQLiteStore):
    """A store that loads run ``h`` after each of its writes commits: every state the file passes
    through (test-side: it waits for each write, then reads)."""

    def __init__(self, path: Path, history: list[StoredRun]) -> None:
        super().__init__(path, snapshot_every=3)
        self.history = history

    def _after(self, future: Future[Any], run_id: str) -> Future[Any]:
        future.result()
        if run_id == "h":
            self.history.append(self.load("h").result())
        return future

    def create(self, run: dict[str, Any], context: dict[str, Any]) -> Future[None]:
        return self._after(super().create(run, context), run["run_id"])

    def commit(self, commit: dict[str, Any]) -> Future[None]:
        return self._after(super().commit(commit), commit["run"]["run_id"])

    def record_call(self, run_id: str, epoch: int, call: dict[str, Any]) -> Future[None]:
        return self._after(super().record_call(run_id, epoch, call), run_id)


def make_store(path: Path, *, stop: tuple[str, int] = ("charge_card", 2), checkpoint_after_d: bool = False,
               history: list[StoredRun] | None = None) -> SQLiteStore:
    """Runs ``d`` (to its end) and ``h`` (stopped inside ``stop``, after that step's journaled call was
    committed) in a new store at ``path``, which is returned open. ``history`` gets ``h`` as loaded
    after each of its commits."""
    def opened() -> SQLiteStore:
        return SQLiteStore(path, snapshot_every=3) if history is None else Recording(path, history)

    with frozen_clock():
        store = opened()
        build("d").run_sync(Job(), store=store, run_id="d")
        if checkpoint_after_d:
            store.close()
            store = opened()
        with contextlib.suppress(Crash):
            build("h", mid=stop_at(*stop)).run_sync(Job(), store=store, run_id="h")
    return store


# --- asking a store everything -------------------------------------------------------------------
@dataclass(frozen=True)
class Answers:
    loads: dict[str, StoredRun]
    listed: list[Any]
    resumed: dict[str, tuple[str, dict[str, Any], list[tuple[str, str, str]]]]


def ask(path: Path) -> Answers:
    """Open, load, list and resume: the answers, or the first exception."""
    with frozen_clock():
        store = SQLiteStore(path, snapshot_every=3)
        try:
            loads = {rid: store.load(rid).result() for rid in RUNS}
            listed = build("d").runs(store)
            resumed = {}
            for rid in RUNS:
                r = build(rid).resume_sync(rid, store=store)
                resumed[rid] = (r.terminal, r.context.model_dump(mode="json"),
                                [(s.state, s.target, s.transition) for s in r.path])
        finally:
            store.close()
    return Answers(loads, listed, resumed)


@contextlib.contextmanager
def copy_of(where: Path, content: bytes, wal: bytes | None = None) -> Iterator[Path]:
    """A store file (and -wal) with ``content``, in a directory of its own, removed afterwards."""
    d = Path(tempfile.mkdtemp(dir=where))
    try:
        (d / "runs.db").write_bytes(content)
        if wal is not None:
            (d / "runs.db-wal").write_bytes(wal)
        yield d / "runs.db"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@dataclass(frozen=True)
class Pristine:
    """The undamaged store, closed: its bytes and answers."""

    data: bytes
    answers: Answers
    index_pages: dict[int, str]
    """Page number -> name of every index b-tree page."""
    meta_pages: set[int]
    """The pages of table sma_meta (the schema version)."""
    rowids: dict[tuple[str, str], int]
    """('journal', 'run/step/call') or ('runs', run_id) -> the row's rowid."""
    where: Path

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # Hypothesis' reports: not 64 kB of bytes
        p.text(f"Pristine({len(self.data)} bytes)")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    where = tmp_path_factory.mktemp("damage")
    db = where / "runs.db"
    make_store(db).close()  # closing checkpoints the WAL into the file and removes it
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    data = db.read_bytes()
    again = where / "again.db"
    make_store(again).close()
    assert again.read_bytes() == data, "the store's bytes must not depend on the clock"
    with copy_of(where, data) as copy:
        conn = sqlite3.connect(copy)
        try:
            indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
            names = list(conn.execute("SELECT name, pageno FROM dbstat"))
            pages = {p: n for n, p in names if n in indexes}
            meta = {p for n, p in names if n == "sma_meta"}
            rowids = {(t, k): r for t, k, r in conn.execute(
                "SELECT 'journal', run_id || '/' || step || '/' || call, rowid FROM sma_journal UNION ALL "
                "SELECT 'runs', run_id, rowid FROM sma_runs")}
        finally:
            conn.close()
        answers = ask(copy)
    assert answers.loads["h"].run.next_step == 5 and answers.resumed["h"][0] == "done"
    assert answers.loads["d"].run.next_step == 8
    return Pristine(data, answers, pages, meta, rowids, where)


def judge(outcome: Answers | BaseException, good: Answers) -> str:
    """'same', or 'error: <type>' for a typed error naming the store or run, when the outcome is
    allowed; else what is wrong with it."""
    if isinstance(outcome, Answers):
        if outcome == good:
            return "same"
        wrong = [rid for rid in RUNS if outcome.loads[rid] != good.loads[rid]]
        return f"different load of {wrong}" if wrong else "different list or resume"
    if not isinstance(outcome, StoreError):
        return f"untyped {type(outcome).__name__}: {outcome}"
    if isinstance(outcome, RunNotFound):
        return f"run reported missing: {outcome}"
    text = str(outcome)
    if not ("the store '" in text or "run '" in text) or len(text) < 30:
        return f"unclear message: {text}"
    return f"error: {type(outcome).__name__}"


def attempt(where: Path, content: bytes) -> Answers | BaseException:
    """Ask a damaged copy; the exception it raised, if any (judge() lets only StoreError pass)."""
    with copy_of(where, content) as path:
        try:
            return ask(path)
        except Exception as exc:
            return exc


# --- truncation ----------------------------------------------------------------------------------
CUTS = {"header only": 100, "mid first page": 512, "after first page": PAGE, "mid second page": PAGE + 1000,
        "half": -2, "mid a middle page": -3, "last page missing": -PAGE, "last byte missing": -1}


@pytest.mark.parametrize("cut", list(CUTS.values()), ids=list(CUTS))
def test_a_truncated_file_is_a_typed_error(pristine: Pristine, cut: int) -> None:
    """A file cut short, anywhere from inside the header to its last byte: a typed error that says
    the store is damaged, never a shorter run."""
    size = len(pristine.data)
    n = size // 2 if cut == -2 else size // 2 + PAGE // 2 if cut == -3 else size + cut if cut < 0 else cut
    outcome = attempt(pristine.where, pristine.data[:n])
    assert judge(outcome, pristine.answers) == "error: StoreCorrupted", outcome


def test_an_empty_file_is_an_empty_store(pristine: Pristine) -> None:
    """A file cut to 0 bytes is a valid empty SQLite database: the store opens it as a new store and
    the run is not found. SQLite cannot tell it from a file just created; documented, not hidden."""
    outcome = attempt(pristine.where, b"")
    assert isinstance(outcome, RunNotFound) and "no run 'd'" in str(outcome), outcome


# --- bit flips in the main file --------------------------------------------------------------------
FLIPS: Counter[str] = Counter()


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bit_flips_in_the_file_give_a_typed_error_or_the_same_runs(pristine: Pristine, data: st.DataObject) -> None:
    """One to three bytes XORed at drawn offsets anywhere in the (checkpointed) file: a typed error
    saying what is wrong, or exactly the undamaged answers (loads, list, resumes)."""
    pages = len(pristine.data) // PAGE
    # A page, then a byte in it: Hypothesis draws small integers far more often than large ones, so
    # drawing the offset directly would flip the first page and little else.
    where = st.tuples(st.integers(0, pages - 1), st.integers(0, PAGE - 1)).map(lambda pb: pb[0] * PAGE + pb[1])
    flips = data.draw(st.lists(st.tuples(where, st.integers(1, 255)), min_size=1, max_size=3))
    damaged = bytearray(pristine.data)
    for offset, mask in flips:
        damaged[offset] ^= mask
    outcome = attempt(pristine.where, bytes(damaged))
    verdict = judge(outcome, pristine.answers)
    if verdict == "error: StoreError":  # typed, but not StoreCorrupted: which symptom
        verdict = f"{verdict} ({str(outcome).split(': ', 1)[-1][:40]})"
    FLIPS[verdict] += 1
    assert verdict == "same" or verdict.startswith("error"), f"flips {flips}: {verdict}"


def flip_at(data: bytes, needle: bytes, index: int, mask: int, *, page: int | None = None) -> bytes:
    """``data`` with byte ``index`` of the only occurrence of ``needle`` (in ``page``) XORed."""
    lo, hi = (0, len(data)) if page is None else ((page - 1) * PAGE, page * PAGE)
    at = data.find(needle, lo, hi)
    if at < 0 or data.find(needle, at + 1, hi) >= 0:  # not an AssertionError: a broken test, not a failed check
        raise LookupError(f"{needle!r} must occur once in page {page}")
    out = bytearray(data)
    out[at + index] ^= mask
    return bytes(out)


def index_page(pristine: Pristine, name: str) -> int:
    return next(p for p, n in pristine.index_pages.items() if n == name)


def cell(run_id: str, *ints: int) -> bytes:
    """An index b-tree leaf cell holding (run_id, ints..., rowid), ints in 0..127: its payload size,
    the record's header (its size, then serial types: text, 8 and 9 for the integers 0 and 1, 1 for
    one byte) and the values."""
    if not all(0 <= i < 128 for i in ints):
        raise ValueError(f"{ints}: only 0..127 are encoded here")
    header = bytes([2 + len(ints), 13 + 2 * len(run_id)]) + bytes(8 + i if i < 2 else 1 for i in ints)
    body = run_id.encode() + bytes(i for i in ints if i >= 2)
    return bytes([len(header) + len(body)]) + header + body


def test_a_schema_byte_that_is_not_utf8_is_a_typed_error(pristine: Pristine) -> None:
    """The high bit of the '(' of a CREATE TABLE statement flipped: SQLite reports 'malformed database
    schema (sma_steps) - near "\\xa8": syntax error', which Python's sqlite3 cannot decode. Opening
    must still raise StoreCorrupted, not UnicodeDecodeError."""
    damaged = flip_at(pristine.data, b"CREATE TABLE sma_steps (", len(b"CREATE TABLE sma_steps "), 0x80, page=1)
    with copy_of(pristine.where, damaged) as path, pytest.raises(StoreCorrupted):
        ask(path)


def test_a_damaged_schema_version_is_a_typed_error(pristine: Pristine) -> None:
    """The last byte of the schema version flipped to '0': opening must raise StoreCorrupted saying
    the version was never written, not KeyError (there is no migration from version 0)."""
    digit = str(SCHEMA_VERSION).encode()
    damaged = flip_at(pristine.data, b"schema_version" + digit, len(b"schema_version"), digit[0] ^ ord("0"))
    with copy_of(pristine.where, damaged) as path, pytest.raises(StoreCorrupted, match="version 0 was never"):
        ask(path)


def test_a_flipped_journal_index_entry_never_drops_a_call(pristine: Pristine) -> None:
    """One bit of run d's index entry for its journal row (6, 0) ('d' -> 'e'): the row is still in
    the table, the run must not load without it."""
    page = index_page(pristine, "sqlite_autoindex_sma_journal_1")
    entry = cell("d", 6, 0, pristine.rowids["journal", "d/6/0"])
    damaged = flip_at(pristine.data, entry, entry.index(b"d"), 0x01, page=page)
    outcome = attempt(pristine.where, damaged)
    assert judge(outcome, pristine.answers).startswith(("same", "error")), [
        (c.step, c.call) for c in outcome.loads["d"].calls] if isinstance(outcome, Answers) else outcome


def test_a_flipped_journal_index_entry_never_loads_another_runs_call(pristine: Pristine) -> None:
    """Run h's index entry for its journal row (4, 0) pointing at run d's row (4, 0) (its rowid's
    bits changed): h must not load d's call (key 'd/4/0') as its own."""
    page = index_page(pristine, "sqlite_autoindex_sma_journal_1")
    mine, theirs = pristine.rowids["journal", "h/4/0"], pristine.rowids["journal", "d/4/0"]
    if mine < 2 or theirs < 2:
        raise ValueError("both rowids must take a byte of their own")
    entry = cell("h", 4, 0, mine)
    damaged = flip_at(pristine.data, entry, len(entry) - 1, mine ^ theirs, page=page)
    outcome = attempt(pristine.where, damaged)
    assert judge(outcome, pristine.answers).startswith(("same", "error")), [
        c.key for c in outcome.loads["h"].calls] if isinstance(outcome, Answers) else outcome


def test_a_flipped_runs_index_entry_is_damage_not_a_missing_run(pristine: Pristine) -> None:
    """One bit of run d's entry in the runs' index: d is still in its table (``runs`` lists it), so
    loading it must say the store is damaged, not that there is no such run."""
    page = index_page(pristine, "sqlite_autoindex_sma_runs_1")
    entry = cell("d", pristine.rowids["runs", "d"])
    damaged = flip_at(pristine.data, entry, entry.index(b"d"), 0x01, page=page)
    outcome = attempt(pristine.where, damaged)
    assert judge(outcome, pristine.answers).startswith(("same", "error")), outcome


def test_a_flipped_journal_index_entry_never_repeats_an_at_most_once_call(tmp_path: Path) -> None:
    """Run m stopped in step 2 after its at_most_once call 'send' was journaled DONE. One bit of that
    row's index entry: resuming must fail with a typed error or reuse the outcome, never send again
    (G3 and G4 rest on the journal row being found)."""
    db = tmp_path / "runs.db"
    make_store(db, stop=("notify", 1)).close()
    conn = sqlite3.connect(db)
    page, = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='sqlite_autoindex_sma_journal_1'").fetchone()
    rowid, = conn.execute("SELECT rowid FROM sma_journal WHERE run_id='h' AND step=2").fetchone()
    conn.close()
    entry = cell("h", 2, 0, rowid)
    damaged = flip_at(db.read_bytes(), entry, entry.index(b"h"), 0x01, page=page)
    db.write_bytes(damaged)
    sent: list[int] = []
    compiled = build("h", effect=lambda tool, key, step: sent.append(step) if tool == "send" else None)
    with contextlib.suppress(StoreError), SQLiteStore(db) as store:
        compiled.resume_sync("h", store=store)
    assert 2 not in sent, "the at_most_once call of step 2 ran again"


# --- the -wal ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Walled:
    """A store's files as a kill leaves them, d in the main file and h in the -wal."""

    data: bytes
    wal: bytes
    history: list[StoredRun]
    """h as loaded after each commit of its own (creation, journal rows, steps); the last is what
    the undamaged files hold."""
    d: StoredRun
    where: Path

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(f"Walled({len(self.data)} + {len(self.wal)} bytes)")


@pytest.fixture(scope="module")
def walled(tmp_path_factory: pytest.TempPathFactory) -> Walled:
    """d checkpointed into the main file, h's commits only in the -wal: the files copied while the
    store is open, as a process killed right then leaves them."""
    where = tmp_path_factory.mktemp("wal")
    db = where / "runs.db"
    history: list[StoredRun] = []
    store = make_store(db, checkpoint_after_d=True, history=history)
    try:
        d = store.load("d").result()
        data, wal = db.read_bytes(), Path(f"{db}-wal").read_bytes()
    finally:
        store.close()
    assert (len(wal) - WAL_HEADER) % (PAGE + WAL_FRAME_HEADER) == 0
    assert history[-1].run.next_step == 5 and history[-1] == store_h(where, data, wal)
    assert history[0].run.next_step == 0 and len(history) >= 10
    return Walled(data, wal, history, d, where)


def store_h(where: Path, data: bytes, wal: bytes) -> StoredRun:
    with copy_of(where, data, wal) as path, frozen_clock(), SQLiteStore(path) as store:
        return store.load("h").result()


def judge_wal(path: Path, w: Walled) -> str:
    """After -wal damage: d (in the main file) exactly right; h exactly as it was after one of its
    commits, or absent if the damage reaches back before its creation; or a typed error."""
    try:
        with frozen_clock(), SQLiteStore(path, snapshot_every=3) as store:
            if store.load("d").result() != w.d:
                return "d changed"
            try:
                h = store.load("h").result()
            except RunNotFound:
                return "h absent"
            if h == w.history[-1]:
                return "same"
            if h in w.history:
                return f"h rolled back to step {h.run.next_step}"
            return "h torn"
    except StoreError:
        return "error"


WAL: Counter[str] = Counter()


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_wal_damage_rolls_back_to_a_commit_never_a_torn_run(walled: Walled, data: st.DataObject) -> None:
    """A flipped byte in the -wal, or a -wal cut short: the runs load as they were after some commit
    (SQLite's recovery stops at the first frame that fails its checksum), never a mix of commits,
    and the run finished before the -wal began is untouched."""
    frame = PAGE + WAL_FRAME_HEADER
    frames = (len(walled.wal) - WAL_HEADER) // frame
    # A frame (its header or its page; -1 for the -wal's header), then a byte in it (see the flips above).
    where = st.tuples(st.integers(-1, frames - 1), st.integers(0, frame - 1)).map(
        lambda fb: fb[1] % WAL_HEADER if fb[0] < 0 else WAL_HEADER + fb[0] * frame + fb[1])
    truncated = data.draw(st.booleans(), label="truncate")
    damaged = bytearray(walled.wal)
    if truncated:
        wal = walled.wal[:data.draw(where, label="cut")]
    else:
        damaged[data.draw(where, label="offset")] ^= data.draw(st.integers(1, 255), label="mask")
        wal = bytes(damaged)
    with copy_of(walled.where, walled.data, wal) as path:
        verdict = judge_wal(path, walled)
    WAL[verdict] += 1
    assert verdict not in ("d changed", "h torn"), verdict
    if verdict.startswith("h rolled back"):
        assert (truncated or damaged != walled.wal), "an undamaged -wal rolled back"


def test_a_flipped_byte_in_the_wal_never_loses_a_committed_step(walled: Walled) -> None:
    """A byte flipped in the middle of the -wal: h (5 steps committed) must load whole, or the store
    must say it is damaged."""
    damaged = bytearray(walled.wal)
    damaged[len(damaged) // 2] ^= 0x01
    with copy_of(walled.where, walled.data, bytes(damaged)) as path:
        verdict = judge_wal(path, walled)
    assert verdict in ("same", "error"), verdict


def test_damage_report() -> None:
    """What the flips above hit (printed with -s): most are errors or unused space, by category."""
    if not FLIPS and not WAL:
        pytest.skip("run together with the flip tests")
    print("\nmain file flips:", dict(FLIPS), "\n-wal damage:", dict(WAL))
    assert FLIPS["error: StoreCorrupted"] > 0 and FLIPS["same"] > 0
