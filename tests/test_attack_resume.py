"""Attacks on resume under a changed workflow (issue 21): hostile ``migrate=`` outputs.

Each test is a finding: it states what should happen (an ``IncompatibleRun`` coded
``resume-bad-migration``, every table and the ``-intents`` file as they were, no effect run twice)
for one way a migration can hand back a point that only looks fine. The stored runs and the
workflows are tests/resume_examples.py's ticket flow (triage -> approve, a wait -> charge, an
at_most_once ``pay`` -> done).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field
from resume_examples import PAID, SignedApproval, SignedTicket, Ticket2, TicketPlus, dump, flow, stored

from statemachine_agent import Context, ResumePoint, Workflow
from statemachine_agent.errors import IncompatibleRun
from statemachine_agent.stores import SQLiteStore


def _calls(point: ResumePoint, **update: Any) -> ResumePoint:
    """``point`` with every journal row of its interrupted step changed by ``update``."""
    return point.model_copy(update={"calls": [c.model_copy(update=update) for c in point.calls]})


def _refused_cleanly(path: Path, new: Any, migrate: Callable[[ResumePoint], ResumePoint]) -> IncompatibleRun:
    """Resume the run ``t-1`` at ``path`` under ``new`` with ``migrate``: it must be refused as
    ``resume-bad-migration``, leave every table as it was, and run no effect."""
    PAID.clear()
    with SQLiteStore(path) as store:
        before = dump(path)
        try:
            new.resume_sync("t-1", store=store, migrate=migrate)
        except IncompatibleRun as exc:
            refused = exc
        else:
            raise AssertionError(f"the migration was accepted; effects run: {PAID}")
        after = dump(path)
    assert after == before, "the refusal changed the store"
    assert PAID == [], "the refusal ran an effect"
    assert "resume-bad-migration" in {p.code for p in refused.problems}, refused
    return refused


@pytest.fixture
def in_pay(tmp_path: Path) -> Path:
    """A store holding ``t-1`` killed inside its at_most_once ``pay`` call: an open intent at step 4."""
    path = tmp_path / "runs.db"
    PAID.clear()
    with SQLiteStore(path) as store:
        stored("in-pay", store)
    assert PAID == ["pay 3"]
    return path


# --- a journal row's call index below 0 ------------------------------------------------------------
def test_a_migration_giving_a_journal_row_a_negative_call_index_is_refused_and_writes_nothing(in_pay: Path) -> None:
    """Found: ``JournalCall.call`` takes any int, so ``call=-1`` passes the ResumePoint check; the
    journal's own CallRecord (``call >= 0``) then raises a raw pydantic ValidationError from inside
    resume, after the run was claimed (sma_runs' epoch went from 2 to 3). Should: be refused as
    resume-bad-migration (a call index counts from 0) before anything is written."""
    _refused_cleanly(in_pay, flow(effect="idempotent"),
                     lambda p: _calls(p, call=-1, effect="idempotent"))


# --- a journal row moved off the interrupted step / call -------------------------------------------
@pytest.mark.parametrize("move", ["step", "call"])
def test_a_migration_moving_an_open_intent_to_another_step_or_call_is_refused(in_pay: Path, move: str) -> None:
    """Found: a migration that renames the tool of the open at_most_once intent (the documented fix
    for a renamed tool) and also moves the row to step ``next_step + 1`` (or call index 99) is
    accepted, with ``effect`` still ``at_most_once`` and ``status`` still ``intent``. The row no
    longer matches the call, so the call is made again: ``pay`` runs a second time (PAID == ['pay 3',
    'pay 3']) and the original intent row is overwritten with the new call's ``done``. A moved row is
    not one of the documented changes (rename, effect, outcome, drop): like an inbox event with a seq
    it did not get, it should be refused as resume-bad-migration, nothing written, nothing paid."""
    def migrate(p: ResumePoint) -> ResumePoint:
        where = {"step": p.next_step + 1} if move == "step" else {"call": 99}
        return _calls(p, tool="pay_card", **where)

    _refused_cleanly(in_pay, flow(tool="pay_card"), migrate)


# --- a migrated context the store cannot keep -------------------------------------------------------
class Ok(BaseModel):
    ok: bool


class Bag(Context):
    data: Any = None
    notes: dict[str, Any] = Field(default_factory=dict)


def bag(event: str) -> Any:
    """One wait for ``event`` (initial) -> done: version 1 waits for ``e``, version 2 for ``e2``."""
    wf = Workflow("bag", Bag)
    wf.wait("w", event=event, payload=Ok, writes=["data"], initial=True)
    wf.terminal("done")
    wf.terminal("no", outcome="failure")
    wf.transition("w", "done", guard=lambda c: True)
    wf.transition("w", "no")
    return wf.compile()


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


class Hostile:
    """Every dunder a check might call raises."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__")

    def __hash__(self) -> int:
        raise RuntimeError("__hash__")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__")


UNSTORABLE: dict[str, Callable[[], dict[str, Any]]] = {
    "an object": lambda: {"data": object()},
    "an object whose __eq__, __hash__ and __repr__ raise": lambda: {"notes": {"k": Hostile()}},
    "non-UTF-8 bytes": lambda: {"data": b"\xff\xfe"},
    "a lone surrogate": lambda: {"data": "\ud800"},
    "an int of 5001 digits": lambda: {"data": 10**5000},
    "lists nested 10,000 deep": lambda: {"data": _nested(10_000)},
    "a dict value nested 10,000 deep": lambda: {"notes": {"k": _nested(10_000)}},
}


@pytest.fixture
def waiting_bag(tmp_path: Path) -> Path:
    path = tmp_path / "runs.db"
    with SQLiteStore(path) as store:
        bag("e").run_sync(Bag(), store=store, run_id="t-1")
    return path


@pytest.mark.parametrize("what", list(UNSTORABLE))
def test_a_migration_putting_an_unstorable_value_in_the_context_is_refused_and_writes_nothing(
        waiting_bag: Path, what: str) -> None:
    """Found: a migrated context is validated (an ``Any`` field takes anything) and scanned for NaN,
    but not tried as JSON; the value fails only when the run is written: a raw TypeError ("cannot be
    stored as JSON"), ValueError (int digits limit) or UnicodeEncodeError escapes resume, and the
    store has changed (the run claimed). Should: resume-bad-migration naming the field, nothing written."""
    update = UNSTORABLE[what]()

    def migrate(p: ResumePoint) -> ResumePoint:
        return p.model_copy(update={"context": {**p.context, **update}, "waiting_for": "e2"})

    _refused_cleanly(waiting_bag, bag("e2"), migrate)


CYCLE = '''
import sys
sys.path[:0] = {paths!r}
from test_attack_resume import Bag, bag
from statemachine_agent.errors import IncompatibleRun
from statemachine_agent.stores import SQLiteStore

loop: list = []
loop.append(loop)
with SQLiteStore({db!r}) as store:
    try:
        bag("e2").resume_sync("t-1", store=store, migrate=lambda p: p.model_copy(
            update={{"context": {{**p.context, "data": loop}}, "waiting_for": "e2"}}))
    except IncompatibleRun as exc:
        print(" ".join(sorted(p.code for p in exc.problems)))
'''


def test_a_migration_putting_a_cyclic_list_in_the_context_is_refused_not_hung(waiting_bag: Path) -> None:
    """Found: a migrated context holding a list that contains itself hangs resume for good:
    ``first_non_finite`` (context.py) walks it with a stack and no memory of what it visited, and
    never ends (memory grows all the while). Should: resume-bad-migration at once, nothing written.
    (Run in a child process, which a hang cannot take down with the suite.)"""
    before = dump(waiting_bag)
    paths = [str(Path(__file__).parent), *sys.path]
    script = CYCLE.format(paths=paths, db=str(waiting_bag))
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=10,
                              check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError("resume with a cyclic context was still running after 10 s") from None
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resume-bad-migration" in done.stdout.split()
    assert dump(waiting_bag) == before


# --- check_runs and resume agree ---------------------------------------------------------------------
CHANGES = st.fixed_dictionaries({}, optional={
    "context": st.sampled_from([Ticket2, SignedTicket, TicketPlus]),
    "wait": st.just("review"),
    "event": st.just("approved"),
    "payload": st.just(SignedApproval),
    "retries": st.integers(1, 5),
    "retry": st.just(False),
    "tool": st.just("pay_card"),
    "effect": st.sampled_from(["read", "idempotent"]),
    "reads_note": st.just(True),
    "extra_tool": st.just(True),
    "timeout": st.just(3600.0),
    "any_approval": st.just(True),
    "numbered": st.just(True),
}).filter(lambda c: not {"numbered", "effect"} <= set(c)).filter(  # the numbered tool is at_most_once only
    # A SignedTicket holds a SignedApproval: with the Approval payload the changed workflow is broken for
    # any run that takes the event (its wait's write raises), which is no verdict on resuming.
    lambda c: c.get("context") is not SignedTicket or "payload" in c)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["waiting", "in-pay", "after-pay", "early-event"]), change=CHANGES)
def test_check_runs_refuses_exactly_what_resume_refuses_with_the_same_codes(
        tmp_path_factory: pytest.TempPathFactory, kind: str, change: dict[str, Any]) -> None:
    """For a drawn stored point and a drawn combination of changes, ``check_runs`` lists the run
    iff ``resume`` refuses it, with the same codes; a refusal writes nothing, and no effect runs twice."""
    path = tmp_path_factory.mktemp("agree") / "runs.db"
    PAID.clear()
    with SQLiteStore(path) as store:
        stored(kind, store)
    paid = list(PAID)
    new = flow(**change)
    with SQLiteStore(path) as store:
        listed = {r.run_id: {p.code for p in r.problems} for r in new.check_runs(store)}
        before = dump(path)
        try:
            new.resume_sync("t-1", store=store)
        except IncompatibleRun as exc:
            refused: set[str] | None = {p.code for p in exc.problems}
            assert dump(path) == before, "the refusal changed the store"
        else:
            refused = None
    assert listed.get("t-1") == refused, (listed, refused)
    assert len(PAID) <= max(len(paid), 1) and PAID[:len(paid)] == paid, PAID


# --- a migrated queued event the store cannot keep ---------------------------------------------------
class Crash(BaseException):
    """Stands for the process dying (never routed)."""


CRASH_NEXT: list[bool] = []


class Anything(BaseModel):
    data: Any = None


class Inbox(Context):
    n: int = 0
    got: Anything | None = None


def inbox_flow(event: str) -> Any:
    """start -> w (waits for ``event``, its payload written to ``got``) -> done."""
    wf = Workflow("inbox", Inbox)

    def start(ctx: Inbox) -> None:
        if CRASH_NEXT:
            CRASH_NEXT.clear()
            raise Crash
        ctx.n += 1

    wf.add_state("start", start, initial=True, reads=["n"], writes=["n"])
    wf.wait("w", event=event, payload=Anything, writes=["got"])
    wf.terminal("done")
    wf.terminal("no", outcome="failure")
    wf.transition("start", "w")
    wf.transition("w", "done", guard=lambda c: True)
    wf.transition("w", "no")
    return wf.compile()


@pytest.fixture
def queued(tmp_path: Path) -> Path:
    """``t-1`` of ``inbox_flow("e")`` killed in its first step, with event ``e`` ({"data": 1}) queued."""
    path = tmp_path / "runs.db"
    v1 = inbox_flow("e")
    with SQLiteStore(path) as store:
        CRASH_NEXT.append(True)
        with pytest.raises(Crash):
            v1.run_sync(Inbox(), store=store, run_id="t-1")
        v1.deliver_sync("t-1", "e", {"data": 1}, store=store)
    return path


@pytest.mark.parametrize("data", [[float("nan")], {"x": float("inf")}, "\ud800", 10**5000],
                         ids=["NaN", "infinity", "a lone surrogate", "an int of 5001 digits"])
def test_a_migration_putting_an_unstorable_value_in_a_queued_payload_is_refused(queued: Path, data: Any) -> None:
    """Found: ``deliver`` refuses a payload holding NaN ("not a finite number ... nothing was
    delivered"), but a migration that renames the queued event and puts NaN in its payload is
    accepted: the run continues on ``[nan]`` and ends ``done`` with it, while the store keeps ``null``
    (the stored history is not what the run computed). A lone surrogate or an over-long int escapes as
    a raw UnicodeEncodeError / ValueError after the run was claimed. Should: resume-bad-migration
    naming the event, nothing written, as for a context."""
    def migrate(p: ResumePoint) -> ResumePoint:
        return p.model_copy(update={"inbox": [e.model_copy(update={"event": "e2", "payload": {"data": data}})
                                              for e in p.inbox]})

    _refused_cleanly(queued, inbox_flow("e2"), migrate)


# --- a journal row's result a migration records -------------------------------------------------------
@pytest.mark.parametrize("result", ["\ud800", {"$secret_result": "not a token"}],
                         ids=["a lone surrogate", "a forged secret marker"])
def test_a_migration_recording_an_unusable_result_for_an_open_intent_is_refused(
        in_pay: Path, result: Any) -> None:
    """Found: recording the outcome of the open intent (``status="done"`` with a ``result``, a
    documented migration) passes the check with a result the journal cannot use: a lone surrogate
    (fits ``str``, cannot be written as UTF-8) or a dict shaped like a sealed secret
    (``{"$secret_result": ...}``, which the result check skips). resume then raises a raw
    UnicodeEncodeError after the run was claimed, or SecretUnreadable with the run committed as
    ended in its failure terminal 'rejected' (a migration ended the run). Should:
    resume-bad-migration (or resume-result-changed), nothing written, the call never run again."""
    _refused_cleanly(in_pay, flow(tool="pay_card"),
                     lambda p: _calls(p, tool="pay_card", status="done", result=result))
