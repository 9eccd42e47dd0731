"""The conformance suite every store must pass: subclass :class:`StoreConformance` in a test module.

Say how to make your store and pytest runs every check of the suite against it::

    from statemachine_agent.stores.conformance import StoreConformance

    class TestMyStore(StoreConformance):
        def make_store(self, path):
            return MyStore(path)

``make_store(path)`` gets a fresh file path in pytest's ``tmp_path`` for each test (a store that is
not a file may derive a database or schema name from it, or ignore it). Optional, on the subclass:

* ``persistent = False`` for a store that keeps nothing once closed (the persistence tests skip);
  ``reopen_store(path)`` opens what ``make_store(path)`` made again (by default: ``make_store``);
* ``tamper(store, run_id, kind, text)`` and ``stored_texts(store)`` let the suite reach under the
  interface, to check that damaged rows are caught and that everything stored is JSON (skipped
  when not given);
* ``known_failures = {"test_name": "why"}`` (or ``"test_name[case]"``) marks tests as strict
  expected failures while a bug is being fixed: once fixed, the test passes and the mark must go.

The suite needs pytest and hypothesis. It writes runs the way the runner does (the rows of
:mod:`~._records`, made by its builders, with fake timestamps: no test reads the clock) and checks what is
read back: fencing, atomic commits, context rebuild, the journal, the inbox, forks, listing,
persistence, concurrent commits, hostile values and damaged rows. To get pytest's detailed
assertion messages, call ``pytest.register_assert_rewrite("statemachine_agent.stores.conformance")``
in your conftest.py.

What is stored must come back as written, JSON type for JSON type: ``1.0`` stays a float and ``1`` an
int (PostgreSQL's ``jsonb`` turns ``1e16`` into an integer: keep records in ``json`` or ``text``
columns). A value a store cannot keep (a lone surrogate, NUL where the database has no room for it,
JSON nested too deep) must be refused with a clear error (StoreError, ValueError or TypeError)
before anything is written, never accepted and then unloadable.
"""

from __future__ import annotations

import functools
import itertools
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, ParamSpec, TypeVar, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from .._tooldef import Effect
from ..context import Context
from ..errors import RunExists, RunFenced, RunNotFound, StoreCorrupted, StoreError
from ..result import StepKind
from ..spec import Outcome
from ..workflow import Workflow
from ._base import Store
from ._records import (
    CallRecord,
    CallRow,
    CallStatus,
    CommitRequest,
    InboxRecord,
    RunRecord,
    RunRow,
    RunStatus,
    StepRecord,
    StepRow,
    StoredRun,
    WaitRow,
    call_row,
    commit_request,
    run_row,
    step_row,
)

__all__ = ["StoreConformance"]

T = TypeVar("T")
P = ParamSpec("P")

_TIMEOUT = 120.0
"""Seconds to wait for any future: a store that hangs fails its test instead of hanging the suite."""

_T0 = 1_000_000.0
"""Fake timestamps start here; the suite never reads the clock."""

_CLEAR: tuple[type[BaseException], ...] = (StoreError, ValueError, TypeError, RecursionError)
"""What a store may raise to refuse a value it cannot store: a clear error, before anything is
written (UnicodeEncodeError is a ValueError; RecursionError is what json refuses too-deep data with)."""

_ids = itertools.count()
_TAMPER_KINDS = ("run", "step", "snapshot", "call", "inbox")


# --- writing runs the way the runner does ------------------------------------------------------
class _Clock:
    """Fake, strictly increasing timestamps."""

    def __init__(self) -> None:
        self._now = _T0

    def __call__(self) -> float:
        self._now += 1.0
        return self._now


def _wait(future: Future[T]) -> T:
    assert isinstance(future, Future), f"the store returned {type(future).__name__}, not a concurrent.futures.Future"
    return future.result(timeout=_TIMEOUT)


def _error_of(call: Callable[P, Future[Any]], *args: P.args, **kwargs: P.kwargs) -> BaseException | None:
    """The exception of ``call(*args, **kwargs)`` (raised at once or by its future), or None if it succeeded."""
    try:
        _wait(call(*args, **kwargs))
    except Exception as exc:
        return exc
    return None


def _expect(kinds: type[BaseException] | tuple[type[BaseException], ...], what: str,
            call: Callable[P, Future[Any]], *args: P.args, **kwargs: P.kwargs) -> BaseException:
    """The exception of ``call(*args, **kwargs)``, which must be one of ``kinds``."""
    exc = _error_of(call, *args, **kwargs)
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    names = " or ".join(k.__name__ for k in kinds)
    assert exc is not None, f"{what}: expected {names}, but it succeeded"
    assert isinstance(exc, kinds), f"{what}: expected {names}, got {type(exc).__name__}: {str(exc)[:300]}"
    return exc


def _run_record(run_id: str, *, workflow: str = "wf", status: str = RunStatus.RUNNING, state: str = "s",
                next_step: int = 0, epoch: int = 1, updated_at: float = _T0, terminal: str | None = None,
                outcome: str | None = None, reason: str | None = None, parent: str | None = None,
                parent_step: int | None = None, wait: WaitRow | None = None,
                written: Sequence[str] = ()) -> RunRow:
    """A run's record, made as ``Durable.record`` makes it."""
    return run_row(
        run_id=run_id, workflow=workflow, fingerprint="f" * 32, status=RunStatus(status), state=state,
        next_step=next_step,
        epoch=epoch, counters={"actions_run": next_step, "visits": {state: next_step} if next_step else {},
                               "traversals": {"loop": next_step} if next_step else {}},
        written=sorted(written), initial_written=[], max_steps=1000, created_at=_T0, updated_at=updated_at,
        terminal=terminal, outcome=None if outcome is None else Outcome(outcome), reason=reason, parent=parent,
        parent_step=parent_step, wait=wait)


def _step_record(number: int, *, delta: dict[str, Any], unset: Sequence[str] = (), state: str = "s",
                 target: str = "s", started_at: float = _T0, error: str | None = None) -> StepRow:
    """A step's row, made as ``Durable.commit`` makes it."""
    return step_row(number=number, state=state, target=target, transition="loop", kind=StepKind.TRANSITION,
                    started_at=started_at, duration=0.25, error=error,
                    error_type=None if error is None else "ValueError", writes=sorted({*delta, *unset}),
                    delta=delta, unset=list(unset))


def _call_record(step: int, call: int, *, status: str = CallStatus.DONE, arguments: Any = None,
                 result: Any = None, effect: str = Effect.IDEMPOTENT, tool: str = "tool", at: float = _T0
                 ) -> CallRow:
    """A journal row, made as ``Durable.call`` makes it."""
    return call_row(step=step, call=call, tool=tool, effect=Effect(effect), status=CallStatus(status),
                    key=f"run/{step}/{call}",
                    arguments=arguments, result=result,
                    error="ValueError: no" if status == CallStatus.FAILED else None, at=at)


class _Run:
    """One run written the way the runner writes it, and what the store should hold for it."""

    def __init__(self, store: Store, run_id: str, clock: Callable[[], float], *,
                 context: dict[str, Any] | None = None, workflow: str = "wf") -> None:
        self.store = store
        self.run_id = run_id
        self.clock = clock
        self.workflow = workflow
        self.epoch = 1
        self.contexts: list[dict[str, Any]] = [dict(context) if context is not None else {"n": 0}]
        """The context before each step, and after the last one."""
        self.steps: list[StepRow] = []
        self.calls: dict[tuple[int, int], CallRow] = {}
        self.events: dict[int, tuple[str, Any]] = {}
        self.record = _run_record(run_id, workflow=workflow, updated_at=clock())

    @property
    def next_step(self) -> int:
        return len(self.steps)

    def create(self) -> None:
        _wait(self.store.create(self.record, self.contexts[0]))

    def build(self, *, delta: dict[str, Any] | None = None, unset: Sequence[str] = (),
              snapshot: bool | dict[str, Any] = False, calls: Sequence[CallRow] = (),
              consume: int | None = None, status: str = "running", wait: WaitRow | None = None,
              epoch: int | None = None, number: int | None = None, state: str = "s", target: str = "s",
              terminal: str | None = None, reason: str | None = None, error: str | None = None
              ) -> CommitRequest:
        """The commit of the next step (or of step ``number``), as ``Durable.commit`` builds it.

        ``snapshot=True`` includes the full context after the step; a dict is included as given.
        """
        number = self.next_step if number is None else number
        delta = {"n": number + 1} if delta is None else delta
        after = self.context_after(delta, unset)
        written = set(self.record["written"]) | set(delta)
        return commit_request(
            epoch=self.epoch if epoch is None else epoch,
            run=_run_record(self.run_id, workflow=self.workflow, status=status, state=target,
                            next_step=number + 1, epoch=self.epoch if epoch is None else epoch,
                            updated_at=self.clock(), terminal=terminal,
                            outcome=None if terminal is None else "success", reason=reason, wait=wait,
                            parent=self.record["parent"], parent_step=self.record["parent_step"],
                            written=sorted(written - set(unset))),
            step=_step_record(number, delta=delta, unset=unset, state=state, target=target,
                              started_at=self.clock(), error=error),
            snapshot=after if snapshot is True else (snapshot or None),
            calls=list(calls), consume=consume)

    def context_after(self, delta: Mapping[str, Any], unset: Sequence[str]) -> dict[str, Any]:
        context = {**self.contexts[-1], **delta}
        for f in unset:
            context.pop(f, None)
        return context

    def applied(self, commit: CommitRequest) -> None:
        """Take ``commit`` as committed."""
        step = commit["step"]
        self.contexts.append(self.context_after(step["delta"], step["unset"]))
        self.steps.append(step)
        self.record = commit["run"]
        for c in commit["calls"]:
            self.calls[c["step"], c["call"]] = c

    def commit(self, **options: Any) -> CommitRequest:
        commit = self.build(**options)
        _wait(self.store.commit(commit))
        self.applied(commit)
        return commit

    def record_call(self, row: CallRow) -> None:
        _wait(self.store.record_call(self.run_id, self.epoch, row))
        self.calls[row["step"], row["call"]] = row

    def deliver(self, event: str, payload: Any) -> int:
        seq = _wait(self.store.deliver(self.run_id, event, payload))
        self.events[seq] = (event, payload)
        return seq

    def claim(self) -> StoredRun:
        stored = _wait(self.store.claim(self.run_id))
        self.epoch = stored.run.epoch
        self.record = cast(RunRow, stored.run.model_dump(mode="json"))
        return stored

    def load(self, at_step: int | None = None) -> StoredRun:
        return _wait(self.store.load(self.run_id, at_step=at_step))

    def check(self, stored: StoredRun | None = None) -> None:
        """The store holds exactly what was written: record, path, journal, inbox, context."""
        stored = self.load() if stored is None else stored
        assert isinstance(stored, StoredRun), f"load() returned {type(stored).__name__}, not a StoredRun"
        assert stored.run == RunRecord.model_validate(self.record), f"run {self.run_id!r}: its record differs"
        assert stored.steps == [StepRecord.model_validate(s) for s in self.steps], \
            f"run {self.run_id!r}: its steps differ"
        got = {(c.step, c.call): c for c in stored.calls}
        assert len(got) == len(stored.calls), f"run {self.run_id!r}: a journal row is there twice"
        assert got == {k: CallRecord.model_validate(c) for k, c in self.calls.items()}, \
            f"run {self.run_id!r}: its journal differs"
        events = {e.seq: (e.event, e.payload) for e in stored.inbox}
        assert len(events) == len(stored.inbox), f"run {self.run_id!r}: an inbox event is there twice"
        assert events == self.events, f"run {self.run_id!r}: its inbox differs"
        assert stored.at_step == self.next_step
        assert _same(stored.context, self.contexts[-1]), f"run {self.run_id!r}: its context differs"


def _everything(store: Store, run_id: str) -> dict[str, Any]:
    """All a store tells of one run: its load, and its context at every step (a fork's from its fork
    point on: the steps before it are checked by their own test)."""
    stored = _wait(store.load(run_id))
    start = stored.run.parent_step or 0 if stored.run.parent is not None else 0
    return {"stored": stored.model_dump(mode="json"),
            "contexts": [_wait(store.load(run_id, at_step=k)).context for k in range(start, stored.run.next_step + 1)]}


def _same(a: Any, b: Any) -> bool:
    """JSON equality that tells 1 from 1.0 and True from 1, without recursion (any depth)."""
    stack: list[tuple[Any, Any]] = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if x.keys() != y.keys():
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif x != y:
            return False
    return True


def _nested(depth: int) -> Any:
    """JSON ``depth`` levels deep, lists and objects in turn."""
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def _works(store: Store, clock: _Clock) -> None:
    """The store still serves: a new run is created, committed to and loaded back."""
    run = _Run(store, f"canary-{next(_ids)}", clock)
    run.create()
    run.commit()
    run.check()


# --- values at every place a store keeps one ---------------------------------------------------
_SITES = ("context", "delta", "call arguments", "call result", "read call", "payload")


def _write_at(run: _Run, site: str, value: Any) -> Callable[[], Future[Any]]:
    """The write that puts ``value`` at ``site`` of ``run`` (created already, unless site is context)."""
    store = run.store
    if site == "context":
        return lambda: store.create(run.record, {"v": value})
    if site == "delta":
        return lambda: store.commit(run.build(delta={"v": value}))
    if site == "call arguments":
        return lambda: store.record_call(run.run_id, run.epoch, _call_record(0, 0, arguments={"v": value}))
    if site == "call result":
        return lambda: store.record_call(run.run_id, run.epoch, _call_record(0, 0, result=value))
    if site == "read call":  # a read call's outcome rides with its step's commit
        return lambda: store.commit(run.build(calls=[_call_record(0, 0, effect="read", result=value)]))
    if site == "payload":
        return lambda: store.deliver(run.run_id, "event", value)
    raise AssertionError(site)


def _read_at(store: Store, run_id: str, site: str) -> Any:
    stored = _wait(store.load(run_id))
    if site == "context":
        return stored.context["v"]
    if site == "delta":
        return stored.steps[0].delta["v"]
    if site == "call arguments":
        args = stored.calls[0].arguments
        assert isinstance(args, dict)
        return args["v"]
    if site in ("call result", "read call"):
        return stored.calls[0].result
    if site == "payload":
        return stored.inbox[0].payload
    raise AssertionError(site)


def _untouched(store: Store, run: _Run, site: str) -> str | None:
    """Why the refused write at ``site`` left a trace, or None if it left none."""
    if site == "context":
        exc = _error_of(store.load, run.run_id)
        return None if isinstance(exc, RunNotFound) else f"the run was created anyway ({exc!r})"
    stored = _wait(store.load(run.run_id))
    if stored.steps or stored.calls or stored.inbox or stored.run.next_step:
        return "something of it was written"
    return None


def _probe(store: Store, clock: _Clock, site: str, value: Any, *, must_store: bool = False,
           must_refuse: bool = False) -> str | None:
    """Write ``value`` at ``site`` of a new run: it must come back exactly, or be refused with a clear
    error leaving no trace. What went wrong, or None."""
    run = _Run(store, f"probe-{next(_ids)}", clock)
    if site != "context":
        run.create()
    try:
        _wait(_write_at(run, site, value)())
    except _CLEAR as exc:
        if must_store:
            return f"refused ({type(exc).__name__}: {str(exc)[:200]})"
        return _untouched(store, run, site)
    except Exception as exc:
        return f"raised {type(exc).__name__} ({str(exc)[:200]}), not a clear error (StoreError, ValueError, TypeError)"
    if must_refuse:
        return "accepted: it must be refused"
    try:
        back = _read_at(store, run.run_id, site)
    except Exception as exc:
        return f"accepted, then loading the run raised {type(exc).__name__}: {str(exc)[:200]}"
    return None if _same(back, value) else "accepted, but read back different"


# --- a workflow for the end-to-end check -------------------------------------------------------
class _Crash(BaseException):
    """Stands for the process dying: the runner never catches it."""


class _Tally(Context):
    n: int = 0
    stamps: list[str] = Field(default_factory=list)


def _tally_workflow(effects: list[str], crash_after: set[int]) -> Any:
    wf = Workflow("conformance-tally", _Tally)

    @wf.tool(effect="idempotent")
    async def stamp(n: int, idempotency_key: str) -> str:
        effects.append(f"stamp {n}")
        return f"stamp-{n}"

    @wf.state(initial=True, reads=["n", "stamps"], writes=["n", "stamps"], tools=["stamp"])
    async def count(ctx: _Tally, tools: Any) -> None:
        got = await tools.call("stamp", n=ctx.n)
        if ctx.n in crash_after:
            crash_after.discard(ctx.n)
            raise _Crash
        ctx.stamps.append(got)
        ctx.n += 1

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("count", "count", guard=lambda c: c.n < 3, max_traversals=2)
    wf.transition("count", "done")
    return wf.compile()


# --- the suite -----------------------------------------------------------------------------------
_text = st.characters(codec="utf-8", exclude_characters="\x00")  # text only: no lone surrogates, no NUL
_json_leaf = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
              | st.floats(allow_nan=False, allow_infinity=False) | st.text(_text, max_size=6))
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(_text, max_size=3), inner, max_size=3), max_leaves=6)
_fields = st.sampled_from(["a", "b", "c", "d", "n"])


class StoreConformance:
    """The checks every :class:`~.Store` must pass. Subclass it as ``TestSomething`` and implement
    :meth:`make_store`; see the module's docstring."""

    persistent: ClassVar[bool] = True
    """Whether what the store holds survives ``close()`` and :meth:`reopen_store`."""

    known_failures: ClassVar[Mapping[str, str]] = {}
    """Tests expected to fail, by name (``"test_x"`` or ``"test_x[case]"``), with why: strict, so a
    fixed bug makes its test fail until the entry is removed."""

    def make_store(self, path: Path) -> Store:
        """A new, empty store for one test, at ``path`` (a file path in a fresh temporary folder)."""
        raise NotImplementedError(f"{type(self).__name__}: implement make_store(self, path) -> Store")

    def reopen_store(self, path: Path) -> Store:
        """The store made at ``path`` by :meth:`make_store`, opened again (after ``close()``, or
        beside the first instance, like a second process would)."""
        return self.make_store(path)

    def tamper(self, store: Store, run_id: str, kind: str, text: str) -> None:
        """Replace the stored JSON of one record of ``run_id`` by ``text``, as a hand edit or another
        program's bug would, and fix up any checksum the store keeps, so that only the store's JSON and
        model checks can catch it. ``kind``: ``"run"`` (its record), ``"step"`` (step 0),
        ``"snapshot"`` (the context at step 0), ``"call"`` (journal row step 0 call 0) or ``"inbox"``
        (event 1). Optional: the tamper tests skip without it."""
        raise NotImplementedError

    def stored_texts(self, store: Store) -> list[str | bytes]:
        """Every record as the store holds it (run, step, snapshot, journal and inbox rows), raw.
        Optional: the JSON-only test skips without it."""
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in cls.known_failures:
            base = name.split("[", 1)[0]
            if not base.startswith("test_") or not callable(getattr(cls, base, None)):
                raise TypeError(f"{cls.__name__}.known_failures names {name!r}, which is not a test of the suite")

    # --- fixtures ---------------------------------------------------------------------------------
    @pytest.fixture
    def store_path(self, tmp_path: Path) -> Path:
        """Where this test's store lives."""
        return tmp_path / "store.db"

    @pytest.fixture
    def store(self, store_path: Path) -> Iterator[Store]:
        """A new store, closed after the test."""
        store = self.make_store(store_path)
        assert isinstance(store, Store), f"make_store returned {type(store).__name__}, not a Store"
        try:
            yield store
        finally:
            store.close()

    @pytest.fixture(autouse=True)
    def _conformance_known_failure(self, request: pytest.FixtureRequest) -> None:
        node = request.node
        reason = self.known_failures.get(node.name) or self.known_failures.get(getattr(node, "originalname", ""))
        if reason:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))

    def _persistent(self) -> None:
        if not self.persistent:
            pytest.skip(f"{type(self).__name__}.persistent is False: the store keeps nothing once closed")

    # --- create and load ---------------------------------------------------------------------------
    def test_a_created_run_loads_back_as_written(self, store: Store) -> None:
        """create then load: the record, the empty path and the starting context come back exactly,
        as the records' models; load and claim return futures of a StoredRun."""
        run = _Run(store, "r-1", _Clock(), context={"n": 0, "topic": "tides", "notes": [1, 2.5, None, True]})
        assert isinstance(store.create(run.record, run.contexts[0]), Future)
        stored = run.load()
        assert isinstance(stored.run, RunRecord)
        assert stored.run.status is RunStatus.RUNNING
        assert stored.steps == []
        assert stored.calls == []
        assert stored.inbox == []
        assert stored.at_step == 0
        run.check(stored)

    def test_committed_records_validate_through_the_models(self, store: Store) -> None:
        """Every record written (run, steps, journal, inbox) loads back as the pydantic model of the
        dict the writer gave, field for field, and the StoredRun round-trips through its own JSON."""
        run = _Run(store, "r-models", _Clock())
        run.create()
        run.deliver("go", {"why": "test"})
        run.record_call(_call_record(0, 0, status="intent", effect="at_most_once", arguments={"to": "x"}))
        run.commit(calls=[_call_record(0, 1, effect="read", result=[1, "two"])], error="ValueError: shown")
        run.commit(status="waiting", wait={"state": "s", "event": "later", "deadline": _T0 + 60})
        stored = run.load()
        run.check(stored)
        assert StoredRun.model_validate_json(stored.model_dump_json()) == stored
        assert all(isinstance(e, InboxRecord) for e in stored.inbox)
        assert stored.run.wait is not None
        assert stored.run.wait.event == "later"

    def test_a_duplicate_run_id_is_refused_and_changes_nothing(self, store: Store) -> None:
        """create with a taken id raises RunExists (naming the run); the stored run is unchanged."""
        clock = _Clock()
        run = _Run(store, "dup", clock)
        run.create()
        run.commit()
        before = _everything(store, "dup")
        again = _Run(store, "dup", clock, context={"other": True})
        exc = _expect(RunExists, "create of a taken id", store.create, again.record, again.contexts[0])
        assert isinstance(exc, RunExists)
        assert exc.run_id == "dup"
        assert _everything(store, "dup") == before

    def test_unknown_run_ids_raise_run_not_found(self, store: Store) -> None:
        """load, claim, deliver, record_call and fork of an id the store does not hold raise
        RunNotFound (a StoreError and a LookupError) naming it."""
        _Run(store, "known", _Clock()).create()
        calls: dict[str, Callable[[], Future[Any]]] = {
            "load": lambda: store.load("nope"),
            "claim": lambda: store.claim("nope"),
            "deliver": lambda: store.deliver("nope", "go", None),
            "record_call": lambda: store.record_call("nope", 1, _call_record(0, 0)),
            "fork": lambda: store.fork("nope", 0, _run_record("fork-of-nope"), {}),
        }
        for what, call in calls.items():
            exc = _expect(RunNotFound, f"{what} of an unknown run", call)
            assert isinstance(exc, RunNotFound)
            assert isinstance(exc, LookupError)
            assert exc.run_id == "nope"
        _expect(RunNotFound, "the fork of an unknown run", store.load, "fork-of-nope")

    def test_a_run_id_that_is_not_a_string_is_refused(self, store: Store) -> None:
        """Every method taking a run id refuses one that is not a string (TypeError or ValueError),
        even when a run's id is its text ("5" for 5): it never reaches the database as another type."""
        clock = _Clock()
        run = _Run(store, "5", clock)
        run.create()
        before = _everything(store, "5")
        bads: tuple[Any, ...] = (5, None, b"5", 5.0)
        for bad in bads:
            _expect((TypeError, ValueError), f"load({bad!r})", store.load, bad)
            _expect((TypeError, ValueError), f"claim({bad!r})", store.claim, bad)
            _expect((TypeError, ValueError), f"deliver({bad!r}, ...)", store.deliver, bad, "go", None)
            _expect((TypeError, ValueError), f"record_call({bad!r}, ...)", store.record_call, bad, 1,
                    _call_record(0, 0))
            _expect((TypeError, ValueError), f"fork({bad!r}, ...)", store.fork, bad, 0,
                    _run_record(f"f-{next(_ids)}"), {})
        assert _everything(store, "5") == before
        _expect((TypeError, ValueError, RunNotFound), "load('')", store.load, "")
        _expect((TypeError, ValueError, RunNotFound), "claim('')", store.claim, "")
        _works(store, clock)

    # --- fencing and claims ------------------------------------------------------------------------
    @pytest.mark.parametrize("stale", ["older epoch", "newer epoch", "step again", "step skipped"])
    def test_a_fenced_commit_raises_run_fenced_and_writes_nothing(self, store: Store, stale: str) -> None:
        """A commit with an epoch other than the run's, or a step number other than its next step,
        raises RunFenced and writes nothing: not its step row, snapshot, journal rows, run record nor
        the inbox event it consumes. Valid commits then continue as if it never happened."""
        clock = _Clock()
        run = _Run(store, "fenced", clock)
        run.create()
        run.commit()
        run.commit()
        run.claim()
        seq = run.deliver("go", {"x": 1})
        before = _everything(store, "fenced")
        epoch, number = {"older epoch": (run.epoch - 1, 2), "newer epoch": (run.epoch + 1, 2),
                         "step again": (run.epoch, 1), "step skipped": (run.epoch, 3)}[stale]
        leak = run.build(number=number, epoch=epoch, delta={"leak": True}, snapshot={"leak": True},
                         calls=[_call_record(number, 0, effect="read", result="leak"),
                                _call_record(1, 9, effect="read", result="leak")], consume=seq)
        exc = _expect(RunFenced, f"a commit with {stale}", store.commit, leak)
        assert isinstance(exc, RunFenced)
        assert exc.run_id == "fenced"
        assert exc.step == number
        assert _everything(store, "fenced") == before, "the fenced commit wrote something"
        run.commit(consume=seq)
        run.commit()
        run.check()
        for k, context in enumerate(run.contexts):
            assert _same(run.load(at_step=k).context, context), f"context at step {k}: a fenced snapshot leaked"

    def test_a_commit_to_an_unknown_run_is_refused(self, store: Store) -> None:
        """A commit for a run the store does not hold raises RunFenced or RunNotFound; nothing is made."""
        run = _Run(store, "ghost", _Clock())
        _expect((RunFenced, RunNotFound), "a commit to an unknown run", store.commit, run.build())
        _expect(RunNotFound, "load of the ghost run", store.load, "ghost")

    def test_claim_raises_the_epoch_and_counts_restarts_of_a_running_run(self, store: Store) -> None:
        """claim of a running run raises its epoch by one; it counts one more restart only when the
        holder before had started the step (a committing worker has; a claimer has once it calls
        mark_started); it returns the run as load does; the previous epoch can no longer commit."""
        clock = _Clock()
        run = _Run(store, "claimed", clock)
        run.create()
        run.commit()
        loaded = run.load()
        first = run.claim()
        assert (first.run.epoch, first.run.restarts, first.run.started) == (2, 1, False)
        second = run.claim()  # the first claimer never started the step: no restart
        assert (second.run.epoch, second.run.restarts) == (3, 1)
        _expect(RunFenced, "mark_started by a superseded claimer", store.mark_started, run.run_id, 2)
        _wait(store.mark_started(run.run_id, 3))
        assert run.load().run.started is True
        third = run.claim()
        assert (third.run.epoch, third.run.restarts) == (4, 2)
        assert third.run.model_dump(exclude={"epoch", "restarts", "updated_at", "started"}) == \
            loaded.run.model_dump(exclude={"epoch", "restarts", "updated_at", "started"})
        second = third
        assert (second.steps, second.calls, second.context, second.at_step) == \
            (loaded.steps, loaded.calls, loaded.context, loaded.at_step)
        assert run.load().run == second.run
        for old in (1, 2, 3):
            _expect(RunFenced, f"a commit with epoch {old}", store.commit, run.build(epoch=old))
        run.commit()
        run.check()

    def test_a_commit_into_a_wait_takes_an_event_delivered_meanwhile(self, store: Store) -> None:
        """A step committing the run as waiting reads the inbox in the same transaction: when its
        event is there (delivered while the step ran), the run is stored running, not waiting, and
        the commit returns the event; other events do not count."""
        run = _Run(store, "busy", _Clock())
        run.create()
        run.deliver("other", {"n": 0})
        quiet = run.build(status="waiting", wait={"state": "s", "event": "go", "deadline": None}, snapshot=True)
        assert _wait(store.commit(quiet)) == []
        run.applied(quiet)
        assert run.load().run.status is RunStatus.WAITING
        claimed = _wait(store.claim_waiting(run.run_id))
        assert claimed is not None
        assert claimed.run.status is RunStatus.RUNNING
        run.epoch = claimed.run.epoch
        run.record = cast(RunRow, claimed.run.model_dump(mode="json"))
        seq = run.deliver("go", {"n": 1})
        commit = run.build(status="waiting", wait={"state": "s", "event": "go", "deadline": None}, snapshot=True)
        found = _wait(store.commit(commit))
        assert [(e.seq, e.event, e.payload) for e in found] == [(seq, "go", {"n": 1})]
        stored = run.load()
        assert stored.run.status is RunStatus.RUNNING
        assert stored.run.next_step == 2

    def test_suspend_takes_an_event_delivered_meanwhile_and_writes_nothing(self, store: Store) -> None:
        run = _Run(store, "early", _Clock())
        run.create()
        seq = run.deliver("go", {"n": 1})
        rec = _run_record(run.run_id, status="waiting", wait={"state": "s", "event": "go", "deadline": None})
        found = _wait(store.suspend(rec, 1, {"n": 0}))
        assert [e.seq for e in found] == [seq]
        assert run.load().run.status is RunStatus.RUNNING
        other = _run_record(run.run_id, status="waiting", wait={"state": "s", "event": "later", "deadline": None})
        assert _wait(store.suspend(other, 1, {"n": 0})) == []
        assert run.load().run.status is RunStatus.WAITING
        _expect(RunFenced, "a suspend with a stale epoch", store.suspend, other, 7, {"n": 0})

    def test_claim_waiting_claims_only_a_waiting_run_and_only_once(self, store: Store) -> None:
        """What a delivery or a wake-up does: a running or finished run is not taken (None), and of
        two claims of one waiting run exactly one gets it (the run is then running)."""
        run = _Run(store, "w1", _Clock())
        run.create()
        assert _wait(store.claim_waiting(run.run_id)) is None
        assert run.load().run.epoch == 1
        run.commit(status="waiting", wait={"state": "s", "event": "go", "deadline": None}, snapshot=True)
        futures = [store.claim_waiting(run.run_id) for _ in range(2)]
        got = [_wait(f) for f in futures]
        assert sum(g is not None for g in got) == 1
        taken = next(g for g in got if g is not None)
        assert (taken.run.status, taken.run.epoch, taken.run.restarts, taken.run.started) == \
            (RunStatus.RUNNING, 2, 0, False)
        _expect(RunNotFound, "claim_waiting of a ghost", store.claim_waiting, "ghost")

    def test_claim_of_a_waiting_run_raises_the_epoch_without_a_restart(self, store: Store) -> None:
        """A run committed in a wait state is claimed without counting a restart (it did not crash);
        its epoch is still raised, fencing the worker that had it."""
        run = _Run(store, "waiting", _Clock())
        run.create()
        run.commit(status="waiting", wait={"state": "s", "event": "go", "deadline": None})
        stored = run.claim()
        assert stored.run.status is RunStatus.WAITING
        assert (stored.run.epoch, stored.run.restarts) == (2, 0)
        _expect(RunFenced, "a commit with the waiting epoch", store.commit, run.build(epoch=1))
        run.commit()
        run.check()

    def test_claim_of_a_done_run_changes_nothing(self, store: Store) -> None:
        """A finished run is loaded by claim, not claimed: epoch and restarts stay as they were."""
        run = _Run(store, "finished", _Clock())
        run.create()
        run.commit(status="done", target="end", terminal="end", snapshot=True, reason="all good")
        before = _everything(store, "finished")
        stored = _wait(store.claim("finished"))
        assert stored.run.status is RunStatus.DONE
        assert (stored.run.epoch, stored.run.restarts) == (1, 0)
        assert stored.model_dump(mode="json") == before["stored"]
        assert _everything(store, "finished") == before

    # --- atomic commits ----------------------------------------------------------------------------
    def test_a_commit_writes_all_its_parts_together(self, store: Store) -> None:
        """A commit with a step row, a run record, a snapshot, journal rows and a consumed event:
        after it, every part is there."""
        run = _Run(store, "whole", _Clock())
        run.create()
        seq = run.deliver("go", "payload")
        run.commit(delta={"n": 1, "text": "é"}, snapshot=True, consume=seq,
                   calls=[_call_record(0, i, effect="read", result=i) for i in range(3)])
        stored = run.load()
        run.check(stored)
        assert stored.run.next_step == 1
        assert len(stored.calls) == 3

    def test_a_commit_failing_at_its_last_part_writes_nothing(self, store: Store) -> None:
        """A commit that fails on its last part (its event was consumed already) raises RunFenced and
        none of its other parts (step row, run record, snapshot, journal rows) are written."""
        run = _Run(store, "half", _Clock())
        run.create()
        seq = run.deliver("go", None)
        run.commit(consume=seq)
        before = _everything(store, "half")
        late = run.build(delta={"leak": 1}, snapshot={"leak": True}, consume=seq,
                         calls=[_call_record(1, 0, effect="read", result="leak")])
        _expect(RunFenced, "a commit consuming a consumed event", store.commit, late)
        assert _everything(store, "half") == before, "a part of the failed commit was written"
        run.commit()
        run.check()
        assert _same(run.load(at_step=2).context, run.contexts[2]), "the failed commit's snapshot leaked"

    def test_a_commit_with_a_bad_value_in_a_journal_row_writes_nothing(self, store: Store) -> None:
        """A commit whose third journal row holds a lone surrogate is refused with a clear error, and
        its step row, run record, snapshot and first journal rows are not written."""
        clock = _Clock()
        run = _Run(store, "bad-row", clock)
        run.create()
        run.commit()
        before = _everything(store, "bad-row")
        bad = run.build(snapshot=True, calls=[_call_record(1, 0, effect="read", result="fine"),
                                              _call_record(1, 1, effect="read", result="fine"),
                                              _call_record(1, 2, effect="read", result="bad \ud800")])
        _expect(_CLEAR, "a commit with a lone surrogate in a journal row", store.commit, bad)
        assert _everything(store, "bad-row") == before
        run.commit()
        run.check()
        _works(store, clock)

    def test_failed_commits_do_not_undo_others_submitted_with_them(self, store: Store) -> None:
        """Commits submitted together (no waiting in between, so a store may group them in one
        transaction): the fenced ones fail alone; the others are all committed."""
        clock = _Clock()
        runs = [_Run(store, f"group-{i}", clock) for i in range(12)]
        for r in runs:
            r.create()
        good, bad = [r.build() for r in runs], [r.build(epoch=7) for r in runs]
        futures = [(store.commit(g), store.commit(b)) for g, b in zip(good, bad, strict=True)]
        for r, g, (fg, fb) in zip(runs, good, futures, strict=True):
            _wait(fg)
            r.applied(g)
            _expect(RunFenced, "a fenced commit in a group", _itself, fb)
        for r in runs:
            r.check()

    def test_commits_submitted_without_waiting_apply_in_program_order(self, store: Store) -> None:
        """Steps of one run submitted back to back without waiting are all committed, in order."""
        run = _Run(store, "pipelined", _Clock())
        run.create()
        pending = []
        for _ in range(15):
            commit = run.build()
            pending.append(store.commit(commit))
            run.applied(commit)
        for f in pending:
            _wait(f)
        run.check()

    # --- context rebuild ---------------------------------------------------------------------------
    def test_snapshots_and_deltas_rebuild_the_context_at_every_step(self, store: Store) -> None:
        """For any sequence of deltas (fields written, fields set back to UNSET) and any snapshot
        cadence, load(at_step=k) gives exactly the context before step k, for every k (Hypothesis)."""

        @settings(max_examples=25, deadline=None, database=None)
        @given(initial=st.dictionaries(_fields, _json, max_size=4),
               steps=st.lists(st.tuples(st.dictionaries(_fields, _json, max_size=3),
                                        st.lists(_fields, max_size=2, unique=True)), max_size=10),
               every=st.integers(min_value=1, max_value=6), end=st.booleans())
        def rebuild(initial: dict[str, Any], steps: list[tuple[dict[str, Any], list[str]]], every: int,
                    end: bool) -> None:
            run = _Run(store, f"ctx-{next(_ids)}", _Clock(), context=initial)
            run.create()
            for i, (delta, unset) in enumerate(steps):
                last = i == len(steps) - 1
                run.commit(delta=delta, unset=[f for f in unset if f not in delta],
                           snapshot=(i + 1) % every == 0 or (last and end),
                           status="done" if last and end else "running", terminal="s" if last and end else None)
            for k, context in enumerate(run.contexts):
                stored = run.load(at_step=k)
                assert stored.at_step == k
                assert _same(stored.context, context), f"context at step {k} of {len(steps)}"
            run.check()

        rebuild()

    def test_the_tail_holds_what_continuing_a_run_needs(self, store: Store) -> None:
        """``load_tail`` gives the context, record, next step's journal rows and unconsumed events that
        ``load`` gives, and the steps from its ``first_step`` on; ``load_steps`` gives any range of the
        steps; ``claim_tail`` claims as ``claim`` does (the epoch raised), with at least the next step's
        journal rows and the unconsumed events (Hypothesis)."""

        @settings(max_examples=15, deadline=None, database=None)
        @given(steps=st.lists(st.tuples(st.dictionaries(_fields, _json, max_size=3),
                                        st.lists(_fields, max_size=2, unique=True)), min_size=1, max_size=12),
               every=st.integers(min_value=1, max_value=5), cut=st.integers(min_value=0, max_value=12),
               events=st.integers(min_value=0, max_value=2))
        def tail(steps: list[tuple[dict[str, Any], list[str]]], every: int, cut: int, events: int) -> None:
            run = _Run(store, f"tail-{next(_ids)}", _Clock(), context={"a": 1})
            run.create()
            for i, (delta, unset) in enumerate(steps):
                run.commit(delta=delta, unset=[f for f in unset if f not in delta], snapshot=(i + 1) % every == 0)
            for i in range(events):
                run.deliver("go", {"i": i})
            whole = run.load()
            got = _wait(store.load_tail(run.run_id))
            assert isinstance(got, StoredRun)
            assert got.run == whole.run
            assert _same(got.context, whole.context)
            first = got.first_step
            assert 0 <= first <= got.snapshot_at <= len(steps) or first == 0
            assert got.steps == whole.steps[first:], "the tail's steps are the run's from first_step on"
            n = whole.run.next_step
            assert [c for c in got.calls if c.step >= n] == [c for c in whole.calls if c.step >= n]
            assert ([e for e in got.inbox if e.consumed_step is None]
                    == [e for e in whole.inbox if e.consumed_step is None])
            k = min(cut, len(steps))
            assert _wait(store.load_steps(run.run_id, 0, k)) == whole.steps[:k]
            assert _wait(store.load_steps(run.run_id, k, len(steps))) == whole.steps[k:]
            claimed = _wait(store.claim_tail(run.run_id))
            assert claimed.run.epoch == whole.run.epoch + 1
            assert claimed.run.next_step == n
            assert [e.seq for e in claimed.inbox if e.consumed_step is None] == [
                e.seq for e in whole.inbox if e.consumed_step is None]
            assert run.load().run.epoch == claimed.run.epoch

        tail()

    def test_load_at_a_step_out_of_range_is_a_value_error(self, store: Store) -> None:
        """load(at_step=) outside 0..next_step raises ValueError (a non-integer: ValueError or
        TypeError); 0 and next_step themselves load."""
        run = _Run(store, "ranged", _Clock())
        run.create()
        run.commit()
        run.commit()
        for at in (-1, 3, 10**9):
            _expect(ValueError, f"load(at_step={at})", store.load, "ranged", at_step=at)
        odds: tuple[Any, ...] = (True, "1", 1.5)
        for odd in odds:
            _expect((ValueError, TypeError), f"load(at_step={odd!r})", store.load, "ranged", at_step=odd)
        assert _same(run.load(at_step=0).context, run.contexts[0])
        assert _same(run.load(at_step=2).context, run.contexts[2])

    # --- the journal -------------------------------------------------------------------------------
    def test_a_journal_row_is_overwritten_by_step_and_call(self, store: Store) -> None:
        """record_call of an intent, then of the outcome with the same (step, call): one row, the
        outcome. Rows of other calls and steps, and rows riding with commits, stay beside it."""
        run = _Run(store, "journal", _Clock())
        run.create()
        run.record_call(_call_record(0, 0, status="intent", effect="at_most_once", arguments={"a": 1}))
        run.record_call(_call_record(0, 1, status="failed", effect="idempotent"))
        run.check()
        run.record_call(_call_record(0, 0, status="done", effect="at_most_once", arguments={"a": 1},
                                     result={"ok": True}))
        run.commit(calls=[_call_record(0, 2, effect="read", result="r")])
        run.record_call(_call_record(1, 0, status="intent", effect="at_most_once"))
        stored = run.load()
        run.check(stored)
        assert [(c.step, c.call, str(c.status)) for c in sorted(stored.calls, key=lambda c: (c.step, c.call))] == \
            [(0, 0, "done"), (0, 1, "failed"), (0, 2, "done"), (1, 0, "intent")]

    def test_record_call_is_fenced_by_the_epoch(self, store: Store) -> None:
        """record_call with an epoch other than the run's raises RunFenced and writes nothing; after a
        claim the previous epoch is fenced and the new one records."""
        run = _Run(store, "journal-fence", _Clock())
        run.create()
        run.record_call(_call_record(0, 0, status="intent", effect="at_most_once"))
        run.claim()
        before = _everything(store, "journal-fence")
        for epoch in (1, 3):
            exc = _expect(RunFenced, f"record_call with epoch {epoch}", store.record_call, "journal-fence", epoch,
                          _call_record(0, 0, status="done", result="stale"))
            assert isinstance(exc, RunFenced)
            assert exc.run_id == "journal-fence"
        assert _everything(store, "journal-fence") == before
        run.record_call(_call_record(0, 0, status="done", effect="at_most_once", result="fresh"))
        run.check()

    # --- the inbox ---------------------------------------------------------------------------------
    def test_deliver_returns_increasing_sequence_numbers(self, store: Store) -> None:
        """Each delivery returns a sequence number above the previous one (from 1), and the inbox
        holds every event with its payload, unconsumed."""
        run = _Run(store, "inbox", _Clock())
        run.create()
        seqs = [run.deliver(f"e{i}", {"i": i, "list": [i] * i}) for i in range(6)]
        assert all(isinstance(s, int) and not isinstance(s, bool) for s in seqs)
        assert seqs[0] >= 1, seqs
        assert all(a < b for a, b in itertools.pairwise(seqs)), seqs
        stored = run.load()
        run.check(stored)
        assert all(e.consumed_step is None for e in stored.inbox)

    def test_an_event_is_consumed_exactly_once(self, store: Store) -> None:
        """A commit consuming an event takes it; a second commit consuming it (another worker, same
        epoch) raises RunFenced and writes nothing; an event never delivered, or delivered to another
        run, cannot be consumed either."""
        clock = _Clock()
        run, other = _Run(store, "consumer", clock), _Run(store, "bystander", clock)
        run.create()
        other.create()
        seq = run.deliver("go", 1)
        foreign = other.deliver("go", 2)
        run.commit(consume=seq)
        before = _everything(store, "consumer")
        _expect(RunFenced, "a second consumption of an event", store.commit, run.build(consume=seq))
        _expect(StoreError, "consuming an undelivered event", store.commit, run.build(consume=seq + 1000))
        if foreign not in run.events:
            _expect(StoreError, "consuming another run's event", store.commit, run.build(consume=foreign))
        assert _everything(store, "consumer") == before
        other.commit(consume=foreign)
        run.commit()
        run.check()
        other.check()

    def test_a_consumed_event_records_the_step_that_consumed_it(self, store: Store) -> None:
        """After a commit consumes an event, load shows that event's consumed_step as that step (a
        resumed run must know which events it has taken); the others stay unconsumed."""
        run = _Run(store, "consumed", _Clock())
        run.create()
        first, second = run.deliver("go", 1), run.deliver("go", 2)
        run.commit()
        run.commit(consume=first)
        consumed = {e.seq: e.consumed_step for e in run.load().inbox}
        assert consumed == {first: 1, second: None}, f"consumed_step by event: {consumed}"

    def test_deliver_to_a_finished_run_is_refused(self, store: Store) -> None:
        """A run that ended takes no more events: deliver raises a StoreError and writes nothing."""
        run = _Run(store, "ended", _Clock())
        run.create()
        run.commit(status="done", target="end", terminal="end", snapshot=True)
        before = _everything(store, "ended")
        _expect(StoreError, "deliver to a finished run", store.deliver, "ended", "go", {"late": True})
        assert _everything(store, "ended") == before

    def test_deliver_refuses_a_payload_that_is_not_json(self, store: Store) -> None:
        """NaN, infinities and Python objects (bytes, sets, objects) are not JSON: deliver refuses them
        with ValueError or TypeError before writing anything, and the inbox stays empty."""
        run = _Run(store, "picky", _Clock())
        run.create()
        for bad in (float("nan"), float("inf"), -float("inf"), {"x": [float("nan")]}, object(), b"bytes",
                    {1, 2}, 1j, _Unpicklable()):
            _expect((ValueError, TypeError), f"payload {bad!r}", store.deliver, "picky", "go", bad)
        assert run.load().inbox == []
        run.deliver("go", {"fine": [1, "2", None]})
        run.check()

    def test_an_event_name_that_is_not_a_string_is_refused(self, store: Store) -> None:
        """deliver with an event name that is not a string (5, None, bytes) raises TypeError or
        ValueError and writes nothing: the run still loads, its inbox empty."""
        run = _Run(store, "named", _Clock())
        run.create()
        bads: tuple[Any, ...] = (5, None, b"go")
        for bad in bads:
            _expect((TypeError, ValueError), f"event {bad!r}", store.deliver, "named", bad, {})
        run.check()

    # --- forks -------------------------------------------------------------------------------------
    def _forkable(self, store: Store, clock: _Clock) -> _Run:
        source = _Run(store, "source", clock)
        source.create()
        for i in range(4):
            source.record_call(_call_record(i, 0, status="done", result=f"call {i}"))
            source.commit(delta={"n": i + 1, f"f{i}": [i]}, snapshot=i == 1,
                          calls=[_call_record(i, 1, effect="read", result=i)])
        source.record_call(_call_record(4, 0, status="intent", effect="at_most_once"))
        source.deliver("go", "source only")
        return source

    @pytest.mark.parametrize("at", [0, 2, 4])
    def test_a_fork_copies_the_steps_and_journal_before_its_step(self, store: Store, at: int) -> None:
        """fork(source, at, run, context) makes a new run holding the source's steps and journal rows
        before step ``at`` only, the given context there, and the given record; the source is
        unchanged, and the fork then commits on its own."""
        clock = _Clock()
        source = self._forkable(store, clock)
        before = _everything(store, "source")
        fork = _Run(store, f"fork-{at}", clock, context=source.contexts[at])
        fork.record = _run_record(fork.run_id, next_step=at, parent="source", parent_step=at,
                                  updated_at=clock())
        fork.steps = source.steps[:at]
        fork.contexts = [*source.contexts[:at], source.contexts[at]]
        fork.calls = {k: c for k, c in source.calls.items() if k[0] < at}
        _wait(store.fork("source", at, fork.record, source.contexts[at]))
        stored = fork.load()
        fork.check(stored)
        assert stored.run.parent == "source"
        assert stored.run.parent_step == at
        assert _everything(store, "source") == before, "the fork changed its source"
        fork.commit(delta={"forked": True})
        fork.check()
        assert _everything(store, "source") == before

    def test_a_fork_rebuilds_the_context_at_every_step_before_the_fork_point(self, store: Store) -> None:
        """The steps a fork copied are its history: load(fork, at_step=k) for k before the fork point
        gives the source's context at k, like the source does."""
        clock = _Clock()
        source = self._forkable(store, clock)
        record = _run_record("fork-history", next_step=3, parent="source", parent_step=3)
        _wait(store.fork("source", 3, record, source.contexts[3]))
        for k in range(4):
            exc = _error_of(store.load, "fork-history", at_step=k)
            assert exc is None, f"load(fork, at_step={k}) raised {type(exc).__name__}: {str(exc)[:200]}"
            assert _same(_wait(store.load("fork-history", at_step=k)).context, source.contexts[k]), f"step {k}"

    def test_a_fork_to_a_taken_id_is_refused_and_changes_nothing(self, store: Store) -> None:
        """fork to the id of a run the store holds (another run, or the source itself) raises
        RunExists; both runs are unchanged."""
        clock = _Clock()
        source = self._forkable(store, clock)
        other = _Run(store, "taken", clock)
        other.create()
        before = {rid: _everything(store, rid) for rid in ("source", "taken")}
        for target in ("taken", "source"):
            exc = _expect(RunExists, f"fork to {target!r}", store.fork, "source", 2,
                          _run_record(target, next_step=2, parent="source", parent_step=2), source.contexts[2])
            assert isinstance(exc, RunExists)
            assert exc.run_id == target
        assert {rid: _everything(store, rid) for rid in ("source", "taken")} == before

    def test_a_fork_outside_the_source_steps_is_refused(self, store: Store) -> None:
        """fork at a step the source has not reached (or below 0) raises ValueError and makes no run:
        it would be a run claiming steps it does not hold."""
        clock = _Clock()
        source = self._forkable(store, clock)
        for at in (-1, source.next_step + 1, 50):
            record = _run_record(f"fork-at-{at}", next_step=max(at, 0), parent="source", parent_step=at)
            _expect(ValueError, f"fork at step {at}", store.fork, "source", at, record, {})
            _expect(RunNotFound, f"the fork at step {at}", store.load, f"fork-at-{at}")

    # --- listing -----------------------------------------------------------------------------------
    def test_list_runs_gives_the_newest_first_and_filters_by_workflow(self, store: Store) -> None:
        """list_runs() gives every run's record, the most recently updated first; list_runs(name)
        only the runs of that workflow; an unknown workflow or an empty store gives []."""
        clock = _Clock()
        assert _wait(store.list_runs()) == []
        runs = {rid: _Run(store, rid, clock, workflow=wf)
                for rid, wf in [("a", "alpha"), ("b", "beta"), ("c", "alpha"), ("d", "beta")]}
        for r in runs.values():
            r.create()

        def listed(workflow: str | None = None) -> list[str]:
            records = _wait(store.list_runs(workflow))
            assert all(isinstance(r, RunRecord) for r in records)
            assert all(r == RunRecord.model_validate(runs[r.run_id].record) for r in records)
            return [r.run_id for r in records]

        assert listed() == ["d", "c", "b", "a"]
        runs["a"].commit()
        runs["b"].commit(status="done", target="end", terminal="end")
        assert listed() == ["b", "a", "d", "c"]
        assert listed("alpha") == ["a", "c"]
        assert listed("beta") == ["b", "d"]
        assert listed("gamma") == []
        assert listed("al%") == listed("ALPHA") == listed("alpha ") == [], "the workflow filter is not exact"

    # --- persistence and closing -------------------------------------------------------------------
    def _populate(self, store: Store, clock: _Clock) -> list[_Run]:
        running = _Run(store, "p-running", clock, context={"n": 0, "text": "日本語 \U0001F600", "big": 2**80})
        running.create()
        seq = running.deliver("go", {"a": [1, 2]})
        running.record_call(_call_record(0, 0, status="intent", effect="at_most_once"))
        running.commit(consume=seq, snapshot=True, calls=[_call_record(0, 1, effect="read", result=0.1)])
        running.commit(delta={"n": 2, "x": "y" * 10_000}, unset=["text"])
        running.deliver("later", None)
        running.claim()
        waiting = _Run(store, "p-waiting", clock)
        waiting.create()
        waiting.commit(status="waiting", wait={"state": "s", "event": "go", "deadline": _T0 + 5})
        done = _Run(store, "p-done", clock)
        done.create()
        done.commit()
        done.commit(status="done", target="end", terminal="end", snapshot=True, reason="finished")
        _wait(store.fork("p-running", 1, _run_record("p-fork", next_step=1, parent="p-running", parent_step=1,
                                                     updated_at=clock()), running.contexts[1]))
        return [running, waiting, done]

    def test_close_and_reopen_keeps_everything(self, store: Store, store_path: Path) -> None:
        """Everything committed survives close and reopen: every run's record, path, journal, inbox,
        contexts at every step and the listing; and the runs go on where they were."""
        self._persistent()
        clock = _Clock()
        runs = self._populate(store, clock)
        ids = ["p-running", "p-waiting", "p-done", "p-fork"]
        before = {rid: _everything(store, rid) for rid in ids}
        listing = [r.model_dump() for r in _wait(store.list_runs())]
        store.close()
        reopened = self.reopen_store(store_path)
        try:
            assert {rid: _everything(reopened, rid) for rid in ids} == before
            assert [r.model_dump() for r in _wait(reopened.list_runs())] == listing
            running = runs[0]
            running.store = reopened
            running.commit()
            running.check()
        finally:
            reopened.close()

    def test_fencing_and_the_inbox_survive_a_reopen(self, store: Store, store_path: Path) -> None:
        """After close and reopen, an older epoch is still fenced, a consumed event still cannot be
        consumed again, and deliveries go on above the last sequence number."""
        self._persistent()
        clock = _Clock()
        run = _Run(store, "survivor", clock)
        run.create()
        seq = run.deliver("go", 1)
        run.commit(consume=seq)
        run.claim()
        store.close()
        reopened = self.reopen_store(store_path)
        try:
            run.store = reopened
            _expect(RunFenced, "a commit with the epoch before claim", reopened.commit, run.build(epoch=1))
            _expect(RunFenced, "consuming the event again", reopened.commit, run.build(consume=seq))
            assert run.deliver("go", 2) > seq
            run.commit()
            run.check()
        finally:
            reopened.close()

    def test_close_is_idempotent(self, store: Store) -> None:
        """close() twice, and leaving a ``with`` block after close(), are no-ops."""
        _Run(store, "closing", _Clock()).create()
        store.close()
        store.close()
        with store:
            pass

    def test_close_finishes_what_was_submitted(self, store: Store, store_path: Path) -> None:
        """Commits submitted and not waited for are finished by close(): their futures succeed, and
        (for a persistent store) they are there after reopening."""
        clock = _Clock()
        runs = [_Run(store, f"drain-{i}", clock) for i in range(5)]
        for r in runs:
            r.create()
        pending = []
        for _ in range(8):
            for r in runs:
                commit = r.build()
                pending.append(store.commit(commit))
                r.applied(commit)
        store.close()
        for f in pending:
            _wait(f)
        if self.persistent:
            reopened = self.reopen_store(store_path)
            try:
                for r in runs:
                    r.store = reopened
                    r.check()
            finally:
                reopened.close()

    def test_a_closed_store_refuses_every_call_with_a_store_error(self, store: Store) -> None:
        """After close(), every method raises StoreError (at once or from its future): never a
        database driver's error, never a hang."""
        run = _Run(store, "before-close", _Clock())
        run.create()
        store.close()
        calls: dict[str, Callable[[], Future[Any]]] = {
            "create": lambda: store.create(_run_record("after-close"), {}),
            "claim": lambda: store.claim("before-close"),
            "commit": lambda: store.commit(run.build()),
            "record_call": lambda: store.record_call("before-close", 1, _call_record(0, 0)),
            "load": lambda: store.load("before-close"),
            "list_runs": store.list_runs,
            "deliver": lambda: store.deliver("before-close", "go", None),
            "fork": lambda: store.fork("before-close", 0, _run_record("fork-after-close"), {}),
        }
        for what, call in calls.items():
            _expect(StoreError, f"{what} on a closed store", call)

    def test_a_write_takes_its_values_when_it_is_called(self, store: Store) -> None:
        """What is written is what the dicts held when the method was called: the caller may change
        or reuse them at once (before the future is done), and loaded values are the caller's own."""
        clock = _Clock()
        run = _Run(store, "snapshot-at-call", clock, context={"n": 0, "items": [1]})
        context = dict(run.contexts[0], items=[1])
        record = run.record.copy()
        created = store.create(record, context)
        context["items"].append("late")
        record["state"] = "changed"
        _wait(created)
        commit = run.build(delta={"n": 1, "items": [1, 2]}, calls=[_call_record(0, 0, effect="read", result=[0])])
        frozen = json.loads(json.dumps(commit))
        committed = store.commit(commit)
        commit["step"]["delta"]["items"].append("late")
        commit["calls"][0]["result"].append("late")
        commit["run"]["state"] = "changed"
        row = _call_record(1, 0, result={"v": [1]})
        recorded = store.record_call(run.run_id, run.epoch, row)
        row["result"]["v"].append("late")
        payload: dict[str, Any] = {"v": [1]}
        delivered = store.deliver(run.run_id, "go", payload)
        payload["v"].append("late")
        _wait(committed)
        _wait(recorded)
        run.applied(frozen)
        run.calls[1, 0] = _call_record(1, 0, result={"v": [1]})
        run.events[_wait(delivered)] = ("go", {"v": [1]})
        stored = run.load()
        run.check(stored)
        stored.context["items"].append("mine")
        run.check()

    def test_a_cancelled_request_is_done_wholly_or_not_at_all(self, store: Store) -> None:
        """A future cancelled before the store ran it (as asyncio does when the awaiting task is
        cancelled) is never written; one the store had started is written whole; the store serves on."""
        clock = _Clock()
        runs = [_Run(store, f"cancel-{i}", clock) for i in range(40)]
        for r in runs:
            r.create()
        futures = [(r, commit, store.commit(commit)) for r, commit in [(r, r.build()) for r in runs]]
        cancelled = {r.run_id for i, (r, _, f) in enumerate(futures) if i % 2 and f.cancel()}
        for r, commit, f in futures:
            if r.run_id in cancelled:
                assert f.cancelled()
            else:
                _wait(f)
                r.applied(commit)
            r.check()
        _works(store, clock)

    def test_many_requests_in_flight_at_once_all_complete(self, store: Store) -> None:
        """Over a thousand requests submitted without waiting (more than any one batch) all complete:
        every delivery gets its own increasing sequence number."""
        clock = _Clock()
        runs = [_Run(store, f"flood-{i}", clock) for i in range(3)]
        for r in runs:
            r.create()
        pending = [(r, i, store.deliver(r.run_id, "tick", i)) for i in range(400) for r in runs]
        for r, i, f in pending:
            r.events[_wait(f)] = ("tick", i)
        for r in runs:
            seqs = [s for s, _ in sorted(r.events.items(), key=lambda item: item[1][1])]
            assert all(a < b for a, b in itertools.pairwise(seqs))
            r.check()

    # --- concurrency -------------------------------------------------------------------------------
    def test_many_threads_committing_different_runs_all_land(self, store: Store) -> None:
        """Threads committing steps of their own runs at once (a store may group them): every commit
        lands, and each run's steps are exactly 0..n-1 with the right contexts."""
        clock = _Clock()
        lock = threading.Lock()

        def tick() -> float:
            with lock:
                return clock()

        threads, per_thread, steps = 8, 2, 8
        runs = [[_Run(store, f"t{t}-r{i}", clock) for i in range(per_thread)] for t in range(threads)]
        for group in runs:
            for r in group:
                r.clock = tick
                r.create()
        start = threading.Barrier(threads)

        def work(group: list[_Run]) -> None:
            start.wait(timeout=_TIMEOUT)
            for _ in range(steps):
                for r in group:
                    r.commit(calls=[_call_record(r.next_step, 0, effect="read", result=r.run_id)])

        with ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(work, group) for group in runs]:
                f.result(timeout=_TIMEOUT)
        for group in runs:
            for r in group:
                assert r.next_step == steps
                r.check()

    def test_two_workers_with_the_same_epoch_commit_each_step_once(self, store: Store) -> None:
        """Two workers holding one run with the same epoch race to commit each step: exactly one wins
        each step (the other gets RunFenced), and the store holds the winners' steps."""
        clock = _Clock()
        run = _Run(store, "race", clock)
        run.create()
        rounds = 10
        lock = threading.Lock()
        barrier = threading.Barrier(2)
        winners: dict[int, list[int]] = {n: [] for n in range(rounds)}
        commits = {(n, w): run.build(number=n, delta={"n": n + 1, "by": w}, state=f"w{w}")
                   for n in range(rounds) for w in (0, 1)}

        def worker(w: int) -> None:
            for n in range(rounds):
                barrier.wait(timeout=_TIMEOUT)
                try:
                    _wait(store.commit(commits[n, w]))
                except RunFenced:
                    continue
                with lock:
                    winners[n].append(w)

        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(worker, w) for w in (0, 1)]:
                f.result(timeout=_TIMEOUT)
        assert all(len(ws) == 1 for ws in winners.values()), winners
        for n in range(rounds):
            run.applied(commits[n, winners[n][0]])
        run.check()

    def test_two_instances_on_one_database_fence_each_other(self, store: Store, store_path: Path) -> None:
        """A second instance opened on the same database (another process) sees the first's commits;
        a step committed by one is fenced in the other, and a claim in one fences the other."""
        self._persistent()
        clock = _Clock()
        run = _Run(store, "shared", clock)
        run.create()
        second = self.reopen_store(store_path)
        try:
            step0 = run.build()
            _wait(store.commit(step0))
            _expect(RunFenced, "the same step from the second instance", second.commit, step0)
            run.applied(step0)
            run.check(_wait(second.load("shared")))
            run.store = second
            run.claim()
            _expect(RunFenced, "the first instance after a claim", store.commit, run.build(epoch=1))
            run.commit()
            run.store = store
            run.check()
        finally:
            second.close()

    # --- hostile values ----------------------------------------------------------------------------
    def test_huge_strings_round_trip(self, store: Store) -> None:
        """A 1 MB string (mixed scripts and emoji) comes back exactly from every place a value is
        kept: context, delta, call arguments and results, inbox payload."""
        clock = _Clock()
        huge = "tide é 日本 \U0001F600 \n" * (2**20 // 18)
        assert len(huge.encode()) >= 2**20
        problems = {site: p for site in _SITES if (p := _probe(store, clock, site, huge, must_store=True))}
        assert not problems, problems
        _works(store, clock)

    def test_deep_json_is_stored_exactly_or_refused(self, store: Store) -> None:
        """JSON nested 200 levels and more, at every place a value is kept: either it comes back
        exactly, or the write is refused with a clear error and leaves no trace; never accepted and
        then unloadable, never a dead writer."""
        clock = _Clock()
        problems: dict[str, str] = {}
        for depth in (200, 256, 1000, 5000):
            value = _nested(depth)
            for site in _SITES:
                problem = _probe(store, clock, site, value)
                if problem:
                    problems[f"{site} at depth {depth}"] = problem
            _works(store, clock)
        assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())

    def test_unicode_round_trips_exactly(self, store: Store) -> None:
        """Strings from every plane, combining marks, bidi controls, BOM, U+2028, noncharacters come
        back exactly, as values and as keys; NUL is stored exactly or refused clearly."""
        clock = _Clock()
        texts = ["", "é", "e\u0301", "日本語", "\U0001F600\u200d\U0001F4BB", "\u202eabc", "\ufeffbom", "\uffff",
                 "\U0010ffff", "\u2028\u2029", "tab\there\nline", '"quoted" \\ back', "\x7f\x1b"]
        value = {"list": texts, **{f"key {t}": t for t in texts}}
        problems = {site: p for site in _SITES if (p := _probe(store, clock, site, value, must_store=True))}
        nul = {"a\x00": "b\x00"}
        problems.update({f"NUL in {site}": p for site in _SITES if (p := _probe(store, clock, site, nul))})
        assert not problems, problems

    def test_lone_surrogates_are_refused_clearly(self, store: Store) -> None:
        """A lone surrogate is not Unicode text: wherever it appears (a value, a key, a run id, an
        event or workflow name), the write raises a clear error and leaves no trace."""
        clock = _Clock()
        problems: dict[str, str] = {}
        for bad in ("\ud800", "tail \udfff", "half \ud83d emoji"):
            for site in _SITES:
                if p := _probe(store, clock, site, {"v": bad}, must_refuse=True):
                    problems[f"{bad!r} as a value in {site}"] = p
            if p := _probe(store, clock, "context", {bad: 1}, must_refuse=True):
                problems[f"{bad!r} as a key"] = p
            for what, record in (("run id", _run_record(f"id {bad}")),
                                 ("workflow name", _run_record(f"wf-{next(_ids)}", workflow=bad))):
                exc = _error_of(store.create, record, {})
                if not isinstance(exc, _CLEAR):
                    problems[f"{bad!r} as a {what}"] = f"not refused clearly: {exc!r}"
                else:
                    rid = record["run_id"]
                    left = _error_of(store.load, rid)
                    if not isinstance(left, _CLEAR):
                        problems[f"{bad!r} as a {what}"] = f"refused, but load then gave {left!r}"
            run = _Run(store, f"ev-{next(_ids)}", clock)
            run.create()
            if not isinstance(_error_of(store.deliver, run.run_id, bad, None), _CLEAR):
                problems[f"{bad!r} as an event name"] = "not refused clearly"
            elif run.load().inbox:
                problems[f"{bad!r} as an event name"] = "refused, but written"
        _works(store, clock)
        assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())

    def test_odd_run_ids_are_kept_exactly_and_apart(self, store: Store) -> None:
        """Run ids that trip naive databases (LIKE wildcards, quotes, case, trailing spaces, numbers
        as text, slashes, non-Latin scripts) name distinct runs and come back exactly."""
        clock = _Clock()
        ids = ["%", "_", "a%", "a_", "a", "A", "a ", " a", "'; DROP TABLE runs; --", '"', "\\", "run/1", "..", "1",
               "01", "1.0", "NULL", "null", "日本", "\U0001F600", "tab\tid", "é", "e\u0301"]
        runs = [_Run(store, rid, clock, context={"id": rid}) for rid in ids]
        for r in runs:
            r.create()
        for r in runs:
            r.check()
        assert sorted(r.run_id for r in _wait(store.list_runs())) == sorted(ids)
        runs[0].commit()
        runs[0].check()
        runs[2].check()

    def test_very_long_run_ids_are_kept_exactly_or_refused(self, store: Store) -> None:
        """A run id of 1 000 and of 100 000 characters: either the run is created and works (commit,
        journal, inbox, fork, list) with its id exactly, or create refuses it clearly."""
        clock = _Clock()
        for length in (1_000, 100_000):
            rid = ("long-run-id-\u00e9-" * (length // 14 + 1))[:length]
            run = _Run(store, rid, clock)
            exc = _error_of(store.create, run.record, run.contexts[0])
            if exc is not None:
                assert isinstance(exc, _CLEAR), f"id of {length} chars: {exc!r}"
                _expect(RunNotFound, f"the refused id of {length} chars", store.load, rid)
                continue
            run.record_call(_call_record(0, 0))
            run.deliver("go", None)
            run.commit()
            run.check()
            assert rid in {r.run_id for r in _wait(store.list_runs())}
            fork = rid[:-1] + "!"
            _wait(store.fork(rid, 1, _run_record(fork, next_step=1, parent=rid, parent_step=1), run.contexts[1]))
            assert _wait(store.load(fork)).run.parent == rid
        _works(store, clock)

    # --- JSON only, damage detected -----------------------------------------------------------------
    def test_values_that_are_not_json_are_refused_not_pickled(self, store: Store) -> None:
        """Python objects with no JSON form (objects, bytes, sets, complex numbers, NaN) are refused
        with a clear error wherever they appear, before anything is written: a store never falls back
        to pickle or repr."""
        clock = _Clock()
        problems: dict[str, str] = {}
        for bad in (object(), b"\x80\x04pickle", {1, 2}, 2j, float("nan"), float("inf"), _Unpicklable()):
            for site in _SITES:
                if p := _probe(store, clock, site, {"v": bad}, must_refuse=True):
                    problems[f"{type(bad).__name__} in {site}"] = p
        _works(store, clock)
        assert not problems, problems

    def test_everything_stored_is_json(self, store: Store) -> None:
        """Every record the store holds (through ``stored_texts``) is JSON text, never a pickle."""
        clock = _Clock()
        self._populate(store, clock)
        try:
            texts = self.stored_texts(store)
        except NotImplementedError:
            pytest.skip("stored_texts() not given for this store")
        assert texts, "stored_texts() returned nothing"
        for raw in texts:
            assert isinstance(raw, (str, bytes)), f"a stored record is a {type(raw).__name__}"
            text = raw.decode() if isinstance(raw, bytes) else raw
            json.loads(text)

    def _tampered(self, store: Store, kind: str, text: Callable[[_Run], str]) -> str | None:
        """Tamper one record of a new run; what went wrong when loading it, or None."""
        run = _Run(store, f"tampered-{kind}-{next(_ids)}", _Clock(), context={"n": 0, "x": 1})
        run.create()
        run.deliver("go", {"x": 1})
        run.record_call(_call_record(0, 0, result={"x": 1}))
        run.commit(delta={"n": 1, "x": 2})
        try:
            self.tamper(store, run.run_id, kind, text(run))
        except NotImplementedError:
            pytest.skip("tamper() not given for this store")
        loads: dict[str, Callable[[], Future[Any]]] = {"load": lambda: store.load(run.run_id),
                                                       "claim": lambda: store.claim(run.run_id)}
        if kind == "run":
            loads["list_runs"] = store.list_runs
        for what, call in loads.items():
            exc = _error_of(call)
            if not isinstance(exc, StoreCorrupted):
                return f"{what} gave {exc!r}, not StoreCorrupted"
        return None

    def test_a_tampered_record_that_is_not_json_is_corrupted(self, store: Store) -> None:
        """A record replaced by text that is not JSON (its checksum fixed up) makes load, claim and
        list_runs raise StoreCorrupted: a damaged run never loads, as anything."""
        problems = {f"{kind} {text!r}": p for kind in _TAMPER_KINDS for text in ("{not json", "", '{"n": 1')
                    if (p := self._tampered(store, kind, functools.partial(_constant, text)))}
        _works(store, _Clock())
        assert not problems, problems

    def test_a_tampered_record_failing_its_model_is_corrupted(self, store: Store) -> None:
        """A record replaced by JSON that fails its model (a wrong type, a value out of range, an
        unknown field such as a class path, a snapshot that is not an object) raises StoreCorrupted."""
        def record(kind: str, change: dict[str, Any]) -> Callable[[_Run], str]:
            def text(run: _Run) -> str:
                base = {"run": run.record, "step": run.steps[0], "call": run.calls[0, 0],
                        "inbox": {"seq": 1, "event": "go", "payload": {"x": 1}, "at": _T0, "consumed_step": None},
                        }[kind]
                return json.dumps({**base, **change})
            return text

        cases: list[tuple[str, Callable[[_Run], str]]] = [
            ("run", lambda _r: "{}"), ("run", record("run", {"status": "sleeping"})),
            ("run", record("run", {"py/object": "os.system"})), ("run", lambda _r: "[]"),
            ("step", lambda _r: "{}"), ("step", record("step", {"delta": ["not", "an", "object"]})),
            ("step", record("step", {"number": -1})),
            ("snapshot", lambda _r: "[1, 2]"), ("snapshot", lambda _r: '"text"'), ("snapshot", lambda _r: "null"),
            ("call", lambda _r: "{}"), ("call", record("call", {"status": "maybe"})),
            ("inbox", lambda _r: "{}"), ("inbox", record("inbox", {"seq": 0})),
            ("inbox", record("inbox", {"__reduce__": "x"})),
        ]
        problems = {f"{kind} #{i}": p for i, (kind, text) in enumerate(cases)
                    if (p := self._tampered(store, kind, text))}
        _works(store, _Clock())
        assert not problems, problems

    def test_a_tampered_record_holding_nan_is_corrupted(self, store: Store) -> None:
        """NaN and Infinity are not JSON: the store refuses to write them, and a record tampered to
        hold them (its checksum fixed up) is StoreCorrupted, not loaded as a float."""
        def step_with(token: str) -> Callable[[_Run], str]:
            return lambda run: json.dumps({**run.steps[0], "delta": {"n": 1, "x": "TOKEN"}}).replace('"TOKEN"', token)

        cases: list[tuple[str, Callable[[_Run], str]]] = [
            ("snapshot", lambda _r: '{"n": 0, "x": NaN}'), ("snapshot", lambda _r: '{"n": 0, "x": -Infinity}'),
            ("step", step_with("NaN")), ("step", step_with("Infinity")),
        ]
        problems = {f"{kind} #{i}": p for i, (kind, text) in enumerate(cases)
                    if (p := self._tampered(store, kind, text))}
        assert not problems, problems

    def test_a_tampered_record_with_a_number_out_of_range_is_corrupted(self, store: Store) -> None:
        """Numbers a loader would choke on or a run would act on wrongly (issue 16): a step count of 10**12,
        an epoch of 2**63-1 (``epoch + 1`` overflows SQLite's integers), a negative or string count,
        token counts that are strings, negative or huge, timestamps 1e999 (JSON's way to write inf),
        sequence numbers that are strings: each raises StoreCorrupted, never KeyError, MemoryError,
        OverflowError or TypeError."""
        def record(kind: str, change: Callable[[dict[str, Any]], dict[str, Any]],
                   raw: tuple[str, str] | None = None) -> Callable[[_Run], str]:
            def text(run: _Run) -> str:
                base = {"run": run.record, "step": run.steps[0], "call": run.calls[0, 0],
                        "inbox": {"seq": 1, "event": "go", "payload": {"x": 1}, "at": _T0, "consumed_step": None},
                        }[kind]
                out = json.dumps(change(dict(base)))
                return out if raw is None else out.replace(json.dumps(raw[0]), raw[1])
            return text

        calls = {"provider": "p", "model": "m", "mode": "prompt", "purpose": "answer", "input_tokens": 1,
                 "output_tokens": 1, "latency": 0.5, "finish_reason": "stop", "attempt": 1}
        cases: list[tuple[str, Callable[[_Run], str]]] = [
            ("run", record("run", lambda r: {**r, "next_step": 10**12})),
            ("run", record("run", lambda r: {**r, "epoch": 2**63 - 1})),
            ("run", record("run", lambda r: {**r, "restarts": -1})),
            ("run", record("run", lambda r: {**r, "restarts": "2"})),
            ("run", record("run", lambda r: {**r, "max_steps": 2**64})),
            ("run", record("run", lambda r: {**r, "counters": {"actions_run": 1, "visits": {"s": "7"}}})),
            ("run", record("run", lambda r: {**r, "updated_at": "TIME"}, ("TIME", "1e999"))),
            ("step", record("step", lambda r: {**r, "model_calls": [{**calls, "input_tokens": "12"}]})),
            ("step", record("step", lambda r: {**r, "model_calls": [{**calls, "output_tokens": -5}]})),
            ("step", record("step", lambda r: {**r, "model_calls": [{**calls, "input_tokens": 2**70}]})),
            ("step", record("step", lambda r: {**r, "model_calls": [{**calls, "latency": "slow"}]})),
            ("step", record("step", lambda r: {**r, "started_at": "TIME"}, ("TIME", "-1e999"))),
            ("call", record("call", lambda r: {**r, "at": "TIME"}, ("TIME", "1e400"))),
            ("call", record("call", lambda r: {**r, "step": "0"})),
            ("inbox", record("inbox", lambda r: {**r, "seq": "1"})),
            ("inbox", record("inbox", lambda r: {**r, "at": True})),
        ]
        problems = {f"{kind} #{i}": p for i, (kind, text) in enumerate(cases)
                    if (p := self._tampered(store, kind, text))}
        _works(store, _Clock())
        assert not problems, problems

    # --- with the runner ---------------------------------------------------------------------------
    def test_a_workflow_crashes_and_resumes_on_this_store(self, store: Store) -> None:
        """End to end with the runner: a run that crashes after a journaled tool call resumes from the
        store, does not repeat the call, ends like a crash-free run, and is listed; resuming the ended
        run returns its result."""
        effects: list[str] = []
        compiled = _tally_workflow(effects, crash_after={1})
        with pytest.raises(_Crash):
            compiled.run_sync(_Tally(), store=store, run_id="tally")
        middle = _wait(store.load("tally"))
        assert middle.run.status is RunStatus.RUNNING
        assert middle.run.next_step == 1
        result = compiled.resume_sync("tally", store=store)
        assert result.terminal == "done"
        assert result.context.n == 3
        assert result.context.stamps == ["stamp-0", "stamp-1", "stamp-2"]
        assert effects == ["stamp 0", "stamp 1", "stamp 2"], "a journaled call was made again"
        stored = _wait(store.load("tally"))
        assert stored.run.status is RunStatus.DONE
        assert [s.number for s in stored.steps] == [0, 1, 2]
        assert _same(stored.context, result.context.model_dump(mode="json"))
        assert [r.run_id for r in compiled.runs(store)] == ["tally"]
        again = compiled.resume_sync("tally", store=store)
        assert again.context == result.context


def _itself(future: Future[T]) -> Future[T]:
    return future


def _constant(text: str, _run: _Run) -> str:
    return text


class _Unpicklable:
    """An object a careless store would pickle or repr."""

    def __reduce__(self) -> tuple[Any, ...]:
        raise AssertionError("the store tried to pickle a value")

    def __repr__(self) -> str:
        return "<_Unpicklable>"
