"""Issue 21: a run stored under one version of a workflow, then resumed, delivered to, woken, forked
or migrated under another, either continues as the new workflow says or raises IncompatibleRun with
the expected code, and then the store is byte-for-byte as it was; never a raw exception
(ValidationError, KeyError, RunError...), never an effect made twice.

Every case stores a run under ``flow()`` (version 0) at a drawn point, then builds ``flow(change)``,
the same workflow with one kind of change, and goes at the run with it. A crash is a ``Crash``
(a BaseException: never routed, the step undone in memory, the store left as a killed process
leaves it). ``dump()`` reads every table of the SQLite file through its own ``sqlite3``
connection, and the ``<db>-intents`` file, before and after each refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import io
import json
import sqlite3
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from statemachine_agent import UNSET, Context, Workflow
from statemachine_agent.cli import main
from statemachine_agent.clock import FakeClock
from statemachine_agent.errors import EffectOutcomeUnknown, IncompatibleRun
from statemachine_agent.result import Outcome
from statemachine_agent.stores import MemoryStore, RunStatus, SQLiteStore


class Crash(BaseException):
    """Stands for the process dying: never routed, never caught by the runner."""


# --- the workflow and its versions ---------------------------------------------------------------
class Approval(BaseModel):
    ok: bool


class ApprovalV2(BaseModel):
    ok: bool
    amount: int


class ApprovalV3(BaseModel):
    ok: bool
    note: str = ""  # a new optional field: every V1 payload validates


class Ctx(Context):
    n: int = 0
    limit: int = 2
    tags: list[str] = Field(default_factory=list)
    approval: Approval = UNSET
    receipt: str = UNSET


class CtxRequired(Ctx):
    region: str  # a new required field: a stored context has no value for it


class CtxTyped(Context):
    n: int = 0
    limit: int = 2
    tags: int = 0  # was list[str]
    approval: Approval = UNSET
    receipt: str = UNSET


class CtxOptional(Ctx):
    note: str = "none"  # a new optional field with a default: safe


class CtxExtra(Ctx):
    extra: str = UNSET  # written by prep from now on, read by pay: a stored run past prep lacks it


class CtxV3(Context):
    n: int = 0
    limit: int = 2
    tags: list[str] = Field(default_factory=list)
    approval: ApprovalV3 = UNSET
    receipt: str = UNSET


class CtxNoTags(Context):
    n: int = 0
    limit: int = 2
    approval: Approval = UNSET
    receipt: str = UNSET  # tags is gone: stored runs wrote it


class CtxV2(Context):
    n: int = 0
    limit: int = 2
    tags: list[str] = Field(default_factory=list)
    approval: ApprovalV2 = UNSET
    receipt: str = UNSET


TIMEOUT = 100.0


@dataclasses.dataclass
class World:
    """What outlives a process: the effects the charge tool made (by key), and where to crash."""

    effects: Counter[str] = dataclasses.field(default_factory=Counter)
    crash: set[str] = dataclasses.field(default_factory=set)
    """``prep1`` (prep's second visit, before it writes), ``pay`` (pay, before its call),
    ``inside`` (inside the tool, after the effect), ``after`` (pay, after the call returned)."""

    def hit(self, where: str) -> None:
        if where in self.crash:
            self.crash.discard(where)
            raise Crash(where)


CHANGES = (
    "none", "other_name", "wait_removed", "wait_renamed", "wait_plain", "event_renamed", "ctx_required",
    "ctx_typed", "ctx_optional", "unset_read", "visits_lowered", "visits_equal", "visits_raised",
    "traversals_lowered", "steps_lowered", "tool_read", "tool_idempotent", "tool_renamed", "payload_v2",
    "prep_renamed", "done_renamed", "state_added", "guard_changed", "description_changed", "field_removed",
    "tool_moved", "timeout_changed", "payload_optional", "result_type",
)


def flow(world: World, change: str = "none") -> Any:
    """The order workflow (``change="none"``: version 0, the one runs are stored under), or it with
    one change. prep loops while n < limit (a bounded loop: visits and traversals to count), then
    the wait ``approve`` for event ``approval``, then ``pay`` makes an at_most_once charge."""
    assert change in CHANGES, change
    model: Any = {"ctx_required": CtxRequired, "ctx_typed": CtxTyped, "ctx_optional": CtxOptional,
                  "unset_read": CtxExtra, "payload_v2": CtxV2, "field_removed": CtxNoTags,
                  "payload_optional": CtxV3}.get(change, Ctx)
    wf: Any = Workflow("other" if change == "other_name" else "order", model,
                       max_steps=1 if change == "steps_lowered" else None)
    prep_name = "setup" if change == "prep_renamed" else "prep"
    wait_name = "confirm" if change == "wait_renamed" else "approve"
    event = "approved" if change == "event_renamed" else "approval"
    tool_name = "charge_card" if change in ("tool_renamed", "tool_moved") else "charge"
    effect = {"tool_read": "read", "tool_idempotent": "idempotent"}.get(change, "at_most_once")
    max_visits = {"visits_lowered": 1, "visits_equal": 2, "visits_raised": 9}.get(change, 3)

    def prep(ctx: Any) -> None:
        world.hit(f"prep{ctx.n}")
        if change == "ctx_typed":
            ctx.tags = ctx.tags + 1
        elif change != "field_removed":
            ctx.tags = [*ctx.tags, f"p{ctx.n}"]
        if change == "unset_read":
            ctx.extra = "x"
        ctx.n = ctx.n + 1

    writes = ["n", "tags", "extra"] if change == "unset_read" else ["n"] if change == "field_removed" else ["n", "tags"]
    wf.add_state(prep_name, prep, initial=True, reads=writes[:2], writes=writes, max_visits=max_visits,
                 description="prepares (changed)" if change == "description_changed" else "prepares")

    def effect_of(amount: int, key: str) -> str:
        world.effects[key] += 1
        world.hit("inside")
        return f"receipt-{amount}"

    def charge_number(amount: int) -> int:  # result_type: the tool returns a number now
        effect_of(amount, f"charge-{amount}")
        return amount

    if change == "result_type":
        wf.tool(charge_number, name=tool_name, effect=effect)
    elif effect == "idempotent":
        def charge_i(amount: int, idempotency_key: str) -> str:
            return effect_of(amount, f"charge-{amount}")
        wf.tool(charge_i, name=tool_name, effect=effect)
    else:
        def charge(amount: int) -> str:
            return effect_of(amount, f"charge-{amount}")
        wf.tool(charge, name=tool_name, effect=effect)
    if change == "tool_moved":  # charge is still a tool of the workflow, but pay no longer declares it
        wf.tool(charge, name="charge", effect=effect)

    async def pay(ctx: Any, tools: Any) -> None:
        world.hit("pay")
        ctx.receipt = str(await tools.call(tool_name, amount=ctx.n))
        world.hit("after")

    pay_reads = ["n"] + (["extra"] if change == "unset_read" else [])
    if change != "wait_removed":
        pay_reads.append("approval")
    wf.add_state("pay", pay, reads=pay_reads, writes=["receipt"], tools=[tool_name])
    if change == "state_added":
        wf.add_state("notify", lambda ctx: None, reads=["receipt"])
    wf.terminal("finished" if change == "done_renamed" else "done")
    if change not in ("wait_removed", "wait_plain"):
        wf.terminal("rejected", outcome="failure")
        wf.terminal("expired", outcome="failure")
    wf.terminal("unknown", outcome="failure")

    loop_bound = 1 if change == "traversals_lowered" else 3
    if change == "wait_removed":
        wf.transition(prep_name, prep_name, guard=lambda c: c.n < c.limit, max_traversals=loop_bound)
        wf.transition(prep_name, "pay")
    else:
        payload = {"payload_v2": ApprovalV2, "payload_optional": ApprovalV3}.get(change, Approval)
        if change == "wait_plain":
            def approve(ctx: Any) -> None:
                ctx.approval = Approval(ok=True)
            wf.add_state(wait_name, approve, writes=["approval"])
            wf.transition(wait_name, "pay")
        else:
            wf.wait(wait_name, event=event, payload=payload, writes=["approval"],
                    timeout=TIMEOUT / 10 if change == "timeout_changed" else TIMEOUT, on_timeout="expired")
            ok = (lambda c: c.approval.ok is True) if change == "guard_changed" else (lambda c: c.approval.ok)
            wf.transition(wait_name, "pay", guard=wf.guard(ok, name="approved", reads=["approval"]))
            wf.transition(wait_name, "rejected")
        wf.transition(prep_name, prep_name, guard=lambda c: c.n < c.limit, max_traversals=loop_bound)
        wf.transition(prep_name, wait_name)
    if change == "state_added":
        wf.transition("pay", "notify")
        wf.transition("notify", "done")
    else:
        wf.transition("pay", "finished" if change == "done_renamed" else "done")
    wf.on_error("pay", EffectOutcomeUnknown, "unknown")
    return wf.compile()


# --- stored points ---------------------------------------------------------------------------------
POINTS = ("waiting", "waiting3", "crash_prep", "queued", "crash_pay", "crash_inside", "crash_after", "done")


def store_point(store: Any, world: World, point: str, *, run_id: str = "r", clock: FakeClock | None = None,
                limit: int | None = None) -> None:
    """Store run ``run_id`` under version 0 at ``point``:

    ``waiting`` / ``waiting3``: waiting in ``approve`` after 2 / 3 visits of prep (``limit``);
    ``crash_prep``: crashed in prep's last visit (running, in prep); ``queued``: that, with an ``approval``
    event delivered meanwhile (unconsumed); ``crash_pay``: approved, crashed in pay before its call;
    ``crash_inside``: crashed inside the at_most_once charge, after its effect (an open intent);
    ``crash_after``: crashed in pay after the charge returned (a done journal row); ``done``: ended.
    """
    v0 = flow(world)
    clock = clock if clock is not None else FakeClock(0.0)
    limit = limit if limit is not None else 3 if point == "waiting3" else 2
    ctx = Ctx(limit=limit)
    if point in ("crash_prep", "queued"):
        world.crash.add(f"prep{limit - 1}")  # the last visit of prep
        with pytest.raises(Crash):
            v0.run_sync(ctx, store=store, run_id=run_id, clock=clock)
        if point == "queued":
            assert v0.deliver_sync(run_id, "approval", {"ok": True}, store=store, clock=clock) is None
        return
    paused = v0.run_sync(ctx, store=store, run_id=run_id, clock=clock)
    assert paused.waiting == "approval", paused
    if point in ("waiting", "waiting3"):
        return
    crash = {"crash_pay": "pay", "crash_inside": "inside", "crash_after": "after"}.get(point)
    if crash is not None:
        world.crash.add(crash)
        with pytest.raises(Crash):
            v0.deliver_sync(run_id, "approval", {"ok": True}, store=store, clock=clock)
        return
    assert point == "done", point
    assert v0.deliver_sync(run_id, "approval", {"ok": True}, store=store, clock=clock).terminal == "done"


# --- the store, byte for byte ------------------------------------------------------------------------
def dump(path: Path) -> dict[str, Any]:
    """Every table of the SQLite file at ``path``, all rows sorted, read through a connection of
    its own (the store under test keeps its own open), and the intent log's bytes."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        out: dict[str, Any] = {"schema": sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"
                                                             ).fetchall(), key=repr)}
        for t in tables:
            out[t] = sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
    finally:
        conn.close()
    intents = Path(f"{path}-intents")
    out["-intents"] = intents.read_bytes() if intents.exists() else None
    return out


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed, table by table (empty: nothing)."""
    return [f"{k}: {len(before.get(k) or ())} rows -> {len(after.get(k) or ())} rows, "
            f"removed {sorted(set(before.get(k) or ()) - set(after.get(k) or ()), key=repr)[:3]}, "
            f"added {sorted(set(after.get(k) or ()) - set(before.get(k) or ()), key=repr)[:3]}"
            if isinstance(before.get(k) or after.get(k), list) else f"{k} changed"
            for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]


# --- stored runs, made once and copied for each case -----------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Template:
    path: Path
    effects: Counter[str]


_TEMPLATES: dict[tuple[str, int | None], Template] = {}
_TEMPLATE_DIR: list[Path] = []
_ALL: list[Template] = []


@pytest.fixture(scope="module", autouse=True)
def _template_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The templates of this module live in a pytest temporary directory."""
    _TEMPLATE_DIR[:] = [tmp_path_factory.mktemp("i21-templates")]
    _TEMPLATES.clear()
    _ALL.clear()
    yield
    _TEMPLATES.clear()
    _ALL.clear()


def template(point: str, limit: int | None = None) -> Template:
    """A closed store file holding run ``r`` at ``point`` (made on first use, then reused)."""
    key = (point, limit)
    if key not in _TEMPLATES:
        path = _TEMPLATE_DIR[0] / f"{point}-{limit}.db"
        world = World()
        with SQLiteStore(path, synchronous="NORMAL") as store:
            store_point(store, world, point, limit=limit)
        assert not Path(f"{path}-wal").exists()
        _TEMPLATES[key] = Template(path, Counter(world.effects))
    return _TEMPLATES[key]


def copy_of(point: str, where: Path, *, limit: int | None = None) -> tuple[Path, World]:
    """A fresh copy of the stored ``point`` in directory ``where``, and a World that remembers the
    effects made before the crash (so a count of 2 means the effect was made again)."""
    t = template(point, limit)
    path = where / "runs.db"
    path.write_bytes(t.path.read_bytes())
    return path, World(effects=Counter(t.effects))


def codes_of(exc: IncompatibleRun) -> set[str]:
    return {str(p.code) for p in exc.problems}


def refused(path: Path, action: Any, code: str, world: World | None = None) -> IncompatibleRun:
    """``action()`` must raise IncompatibleRun listing ``code`` and leave the store file (every table
    and the intent log) as it was, and make no effect. Any other exception goes through as it is."""
    before = dump(path)
    effects = Counter(world.effects) if world is not None else None
    caught: IncompatibleRun | None = None
    out: Any = None
    try:
        out = action()
    except IncompatibleRun as exc:
        caught = exc
    if caught is None:
        pytest.fail(f"accepted (returned {out!r:.300}); expected IncompatibleRun [{code}]")
    assert code in codes_of(caught), f"refused with {sorted(codes_of(caught))}, not {code!r}:\n{caught}"
    assert caught.run_id in str(caught)
    changed = diff(before, dump(path))
    assert changed == [], f"the refusal changed the store: {changed}"
    if world is not None:
        assert world.effects == effects, "a refused resume made an effect"
    return caught


def terminals(compiled: Any) -> set[str]:
    return {name for name, plan in compiled.plans.items() if plan.terminal}


def events(compiled: Any) -> set[str]:
    return {plan.wait.event for plan in compiled.plans.values() if plan.wait is not None}


def assert_continued(compiled: Any, result: Any, world: World) -> None:
    """Accepted: the run ended in a terminal of the new workflow, or waits in one of its waits;
    no effect was made twice."""
    if result.outcome is Outcome.WAITING:
        assert result.waiting in events(compiled), result
    else:
        assert result.terminal in terminals(compiled), result
    assert all(n <= 1 for n in world.effects.values()), world.effects


def resume(compiled: Any, path: Path, *, clock: FakeClock | None = None, **options: Any) -> Any:
    with SQLiteStore(path, synchronous="NORMAL") as store:
        return compiled.resume_sync("r", store=store, clock=clock or FakeClock(1.0), **options)


# --- 1. regression cases: one per kind of change x stored point ----------------------------------------------
REFUSED = [
    # a waiting run is checked like a crashed one
    ("waiting", "wait_removed", "resume-unknown-state"),
    ("waiting", "wait_renamed", "resume-unknown-state"),
    ("waiting", "wait_plain", "resume-wait-changed"),
    ("waiting", "event_renamed", "resume-wait-changed"),
    ("waiting", "ctx_required", "resume-bad-context"),
    ("waiting", "ctx_typed", "resume-bad-context"),
    ("waiting", "unset_read", "resume-unset-read"),
    ("waiting", "prep_renamed", "resume-counters"),
    ("waiting", "other_name", "resume-other-workflow"),
    # lowered bounds: strictly over is refused
    ("waiting", "visits_lowered", "resume-over-bound"),     # max_visits 3 -> 1 after 2 visits
    ("waiting3", "visits_equal", "resume-over-bound"),      # 3 -> 2 after 3 visits
    ("waiting3", "traversals_lowered", "resume-over-bound"),  # prep_to_prep taken twice, now at most once
    ("waiting", "steps_lowered", "resume-over-bound"),      # 2 steps run, bound now 1
    ("crash_pay", "visits_lowered", "resume-over-bound"),
    ("crash_pay", "steps_lowered", "resume-over-bound"),
    # crashed runs
    ("crash_prep", "ctx_required", "resume-bad-context"),
    ("crash_prep", "ctx_typed", "resume-bad-context"),
    ("crash_prep", "prep_renamed", "resume-unknown-state"),
    ("crash_prep", "other_name", "resume-other-workflow"),
    ("crash_pay", "wait_removed", "resume-counters"),
    ("crash_pay", "unset_read", "resume-unset-read"),
    ("crash_pay", "payload_v2", "resume-bad-context"),      # the stored approval is no ApprovalV2
    # journal rows of the step the run takes next
    ("crash_inside", "tool_read", "resume-effect-changed"),
    ("crash_inside", "tool_idempotent", "resume-effect-changed"),
    ("crash_inside", "tool_renamed", "resume-unknown-tool"),
    ("crash_after", "tool_renamed", "resume-unknown-tool"),
    ("crash_after", "tool_read", "resume-effect-changed"),
    ("crash_inside", "tool_moved", "resume-unknown-tool"),   # still a tool, no longer declared by pay
    ("crash_after", "result_type", "resume-result-changed"),  # the journaled result is no int
    ("waiting", "field_removed", "resume-bad-context"),      # the run wrote a field the model lacks
    ("done", "field_removed", "resume-bad-context"),
    # queued, unconsumed events
    ("queued", "payload_v2", "resume-bad-event"),
    ("queued", "event_renamed", "resume-bad-event"),
    ("queued", "wait_removed", "resume-bad-event"),
    ("queued", "wait_plain", "resume-bad-event"),
    # ended runs
    ("done", "ctx_typed", "resume-bad-context"),
    ("done", "ctx_required", "resume-bad-context"),
    ("done", "payload_v2", "resume-bad-context"),
    ("done", "done_renamed", "resume-unknown-state"),
    ("done", "other_name", "resume-other-workflow"),
]


@pytest.mark.parametrize(("point", "change", "code"), REFUSED, ids=[f"{p}-{c}" for p, c, _ in REFUSED])
def test_resume_under_an_unfitting_change_is_refused_and_changes_nothing(
        tmp_path: Path, point: str, change: str, code: str) -> None:
    """resume raises IncompatibleRun with the change's code; every table and the intent log are
    as they were; no tool ran."""
    path, world = copy_of(point, tmp_path)
    changed = flow(world, change)
    refused(path, lambda: resume(changed, path), code, world)


ACCEPTED = [
    # (point, change, how it ends: a terminal, or "wait:<event>")
    ("waiting", "none", "wait:approval"),
    ("waiting", "state_added", "wait:approval"),
    ("waiting", "ctx_optional", "wait:approval"),
    ("waiting", "guard_changed", "wait:approval"),
    ("waiting", "description_changed", "wait:approval"),
    ("waiting", "visits_raised", "wait:approval"),
    ("waiting", "visits_equal", "wait:approval"),          # 2 visits, max_visits now 2: equal is fine
    ("waiting", "traversals_lowered", "wait:approval"),    # taken once, now at most once
    ("waiting", "payload_v2", "wait:approval"),            # nothing queued under the old model
    ("waiting", "tool_read", "wait:approval"),
    ("waiting", "timeout_changed", "wait:approval"),
    ("crash_pay", "tool_moved", "done"),
    ("crash_pay", "result_type", "done"),                  # nothing journaled yet under the old type
    ("crash_inside", "result_type", "unknown"),            # an intent has no result to check
    ("crash_prep", "wait_renamed", "wait:approval"),       # it reaches the renamed wait as it is now
    ("crash_prep", "wait_removed", "done"),
    ("crash_prep", "unset_read", "wait:approval"),         # prep writes the new field before pay reads it
    ("crash_prep", "steps_lowered", "any"),                # 1 step run, bound 1: equal is fine
    ("queued", "none", "done"),
    ("queued", "wait_renamed", "done"),                    # the queued event is the renamed wait's
    ("queued", "payload_optional", "done"),                # the queued V1 payload validates as V3
    ("done", "payload_optional", "done"),
    ("crash_pay", "tool_read", "done"),                    # no journal row yet: the new effect class applies
    ("crash_pay", "tool_renamed", "done"),
    ("crash_pay", "state_added", "done"),
    ("crash_pay", "done_renamed", "finished"),
    ("crash_inside", "none", "unknown"),                   # the open intent: EffectOutcomeUnknown, never again
    ("crash_inside", "state_added", "unknown"),
    ("crash_after", "none", "done"),
    ("done", "state_added", "done"),
    ("done", "unset_read", "done"),
]


@pytest.mark.parametrize(("point", "change", "ends"), ACCEPTED, ids=[f"{p}-{c}" for p, c, _ in ACCEPTED])
def test_resume_under_a_fitting_change_continues_as_the_new_workflow_says(
        tmp_path: Path, point: str, change: str, ends: str) -> None:
    """Safe changes are accepted: the run continues and ends (or waits) as the new workflow says,
    and an at_most_once effect is never made twice."""
    path, world = copy_of(point, tmp_path)
    changed = flow(world, change)
    result = resume(changed, path)
    assert_continued(changed, result, world)
    if ends.startswith("wait:"):
        assert (result.outcome, result.waiting) == (Outcome.WAITING, ends[5:])
    elif ends != "any":
        assert result.terminal == ends, result
    if ends == "done" and point != "done":
        assert world.effects["charge-2"] == 1  # made once, whichever process made it


# --- deliver: checked before the event is committed, whatever the run's status -----------------------------
DELIVER_REFUSED = [
    # (point, change, event delivered, payload, code)
    ("waiting", "wait_renamed", "approval", {"ok": True}, "resume-unknown-state"),
    ("waiting", "event_renamed", "approved", {"ok": True}, "resume-wait-changed"),
    ("waiting", "ctx_typed", "approval", {"ok": True}, "resume-bad-context"),
    ("waiting", "ctx_required", "approval", {"ok": True}, "resume-bad-context"),
    ("waiting", "visits_lowered", "approval", {"ok": True}, "resume-over-bound"),
    ("waiting", "unset_read", "approval", {"ok": True}, "resume-unset-read"),
    ("crash_prep", "ctx_typed", "approval", {"ok": True}, "resume-bad-context"),
    ("crash_prep", "prep_renamed", "approval", {"ok": True}, "resume-unknown-state"),
    ("crash_pay", "visits_lowered", "approval", {"ok": True}, "resume-over-bound"),
    ("crash_inside", "tool_read", "approval", {"ok": True}, "resume-effect-changed"),
    ("crash_inside", "tool_renamed", "approval", {"ok": True}, "resume-unknown-tool"),
    ("queued", "payload_v2", "approval", {"ok": True, "amount": 3}, "resume-bad-event"),
]


@pytest.mark.parametrize("case", DELIVER_REFUSED, ids=[f"{p}-{c}" for p, c, *_ in DELIVER_REFUSED])
def test_deliver_under_an_unfitting_change_leaves_no_inbox_row(
        tmp_path: Path, case: tuple[str, str, str, dict[str, Any], str]) -> None:
    """deliver checks the run against the workflow it is given before it commits the event, for a
    waiting run and for a crashed (running) one alike: refused, no inbox row, nothing changed."""
    point, change, event, payload, code = case
    path, world = copy_of(point, tmp_path)
    changed = flow(world, change)
    with SQLiteStore(path, synchronous="NORMAL") as store:
        inbox = len(store.load("r").result().inbox)
        exc = refused(path, lambda: changed.deliver_sync("r", event, payload, store=store, clock=FakeClock(1.0)),
                      code, world)
        assert "nothing was delivered" in str(exc)
        assert len(store.load("r").result().inbox) == inbox


def test_deliver_under_a_fitting_change_to_a_crashed_run_is_queued_and_taken_once(tmp_path: Path) -> None:
    """A crashed run that fits the new workflow (its wait renamed, the run still before it) takes a
    delivered event when it gets there: deliver returns None, resume ends the run, the event consumed once."""
    path, world = copy_of("crash_prep", tmp_path)
    changed = flow(world, "wait_renamed")
    with SQLiteStore(path, synchronous="NORMAL") as store:
        assert changed.deliver_sync("r", "approval", {"ok": True}, store=store, clock=FakeClock(1.0)) is None
        result = changed.resume_sync("r", store=store, clock=FakeClock(1.0))
        stored = store.load("r").result()
    assert result.terminal == "done" and "confirm" in [s.state for s in result.path]
    assert [e.consumed_step is not None for e in stored.inbox] == [True]
    assert world.effects["charge-2"] == 1


def test_deliver_of_a_v2_payload_to_a_waiting_run_under_the_v2_model_continues_it(tmp_path: Path) -> None:
    """A waiting run with nothing queued fits a new payload model: the V2 event is taken."""
    path, world = copy_of("waiting", tmp_path)
    changed = flow(world, "payload_v2")
    with SQLiteStore(path, synchronous="NORMAL") as store:
        result = changed.deliver_sync("r", "approval", {"ok": True, "amount": 9}, store=store, clock=FakeClock(1.0))
    assert result is not None and result.terminal == "done"
    assert result.context.approval == ApprovalV2(ok=True, amount=9)


# --- ended runs ---------------------------------------------------------------------------------------------
def test_an_ended_run_returns_its_result_under_a_safe_change_and_is_refused_under_a_bad_context(
        tmp_path: Path) -> None:
    """resume of an ended run gives its stored result when it still validates, and IncompatibleRun
    (never a raw ValidationError) when its context no longer does."""
    path, world = copy_of("done", tmp_path)
    again = resume(flow(world, "ctx_optional"), path)
    assert (again.terminal, again.context.receipt, again.context.note) == ("done", "receipt-2", "none")
    refused(path, lambda: resume(flow(world, "ctx_typed"), path), "resume-bad-context", world)


# --- migrate= ---------------------------------------------------------------------------------------------
def _renamed(point: Any, old: str, new: str) -> Any:
    """``point`` with state ``old`` renamed ``new`` everywhere (state, visits, transition names)."""
    return point.model_copy(update={
        "state": new if point.state == old else point.state,
        "visits": {new if k == old else k: v for k, v in point.visits.items()},
        "traversals": {k.replace(old, new): v for k, v in point.traversals.items()}})


def _fix_prep(point: Any) -> Any:
    return _renamed(point, "prep", "setup")


def _bad_migrations() -> list[tuple[str, Any]]:
    def negative(point: Any) -> Any:
        return _fix_prep(point).model_copy(update={"visits": {"setup": -1}})

    def raising(point: Any) -> Any:
        raise ValueError("this migration is broken")

    def other_id(point: Any) -> Any:
        return _fix_prep(point).model_copy(update={"run_id": "someone-else"})

    def still_unfit(point: Any) -> Any:
        return point  # unchanged: still in a state the workflow lacks

    def negative_steps(point: Any) -> Any:
        return _fix_prep(point).model_copy(update={"actions_run": -3})

    def negative_traversal(point: Any) -> Any:
        fixed = _fix_prep(point)
        return fixed.model_copy(update={"traversals": {k: -v for k, v in fixed.traversals.items()}})

    return [("negative visits", negative), ("raises", raising), ("returns None", lambda p: None),
            ("returns a dict", lambda p: _fix_prep(p).model_dump()), ("another run_id", other_id),
            ("still unfit", still_unfit), ("negative steps", negative_steps),
            ("negative traversals", negative_traversal)]


@pytest.mark.parametrize(("name", "migrate"), _bad_migrations(), ids=[n for n, _ in _bad_migrations()])
@pytest.mark.parametrize("point", ["crash_prep", "waiting"])
def test_a_migration_that_raises_or_returns_garbage_is_refused_and_writes_nothing(
        tmp_path: Path, point: str, name: str, migrate: Any) -> None:
    """migrate= output is checked like a stored run: a migration that raises, returns no ResumePoint,
    changes run_id, or returns counters that are negative is IncompatibleRun [resume-bad-migration]
    (the migration named, never its own exception), and nothing is written."""
    path, world = copy_of(point, tmp_path)
    changed = flow(world, "prep_renamed")
    exc = refused(path, lambda: resume(changed, path, migrate=migrate), "resume-bad-migration", world)
    if name == "still unfit":
        assert "resume-unknown-state" in codes_of(exc) or "resume-counters" in codes_of(exc)
    if name.startswith("negative"):
        assert "resume-counters" in codes_of(exc)


def _pending(point: Any, **update: Any) -> Any:
    """``point`` with each journal row of its next step changed by ``update``."""
    return point.model_copy(update={"calls": [_replace(c, **update) for c in point.calls]})


def _replace(item: Any, **update: Any) -> Any:
    if isinstance(item, BaseModel):
        return item.model_copy(update=update)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.replace(item, **update)
    return {**item, **update}


def test_migrate_renames_a_state_and_the_store_holds_the_migrated_run(tmp_path: Path) -> None:
    """A crashed run in a renamed state, migrated: it continues and ends as the new workflow says,
    and the run's record holds the migrated counters (no name of the old state)."""
    path, world = copy_of("crash_prep", tmp_path)
    changed = flow(world, "prep_renamed")
    result = resume(changed, path, migrate=_fix_prep)
    assert result.outcome is Outcome.WAITING and result.waiting == "approval"
    with SQLiteStore(path, synchronous="NORMAL") as store:
        stored = store.load("r").result()
    assert stored.run.counters.visits == {"setup": 2} and "prep" not in str(stored.run.counters.traversals)
    with SQLiteStore(path, synchronous="NORMAL") as store:
        done = changed.deliver_sync("r", "approval", {"ok": True}, store=store, clock=FakeClock(1.0))
    assert done is not None and done.terminal == "done" and world.effects["charge-2"] == 1


def test_migrate_fills_a_new_required_field(tmp_path: Path) -> None:
    path, world = copy_of("crash_prep", tmp_path)
    changed = flow(world, "ctx_required")
    result = resume(changed, path,
                    migrate=lambda p: p.model_copy(update={"context": {**p.context, "region": "eu"}}))
    assert result.outcome is Outcome.WAITING and result.context.region == "eu"
    with SQLiteStore(path, synchronous="NORMAL") as store:
        assert changed.check_runs(store) == []  # the store holds the migrated context


def test_migrate_converts_a_changed_type(tmp_path: Path) -> None:
    path, world = copy_of("crash_pay", tmp_path)
    changed = flow(world, "ctx_typed")
    result = resume(changed, path,
                    migrate=lambda p: p.model_copy(update={"context": {**p.context, "tags": len(p.context["tags"])}}))
    assert result.terminal == "done" and result.context.tags == 2 and world.effects["charge-2"] == 1


def test_migrate_brings_visits_within_a_lowered_bound(tmp_path: Path) -> None:
    path, world = copy_of("crash_pay", tmp_path)
    changed = flow(world, "visits_lowered")
    result = resume(changed, path, migrate=lambda p: p.model_copy(update={"visits": {**p.visits, "prep": 1}}))
    assert result.terminal == "done"
    with SQLiteStore(path, synchronous="NORMAL") as store:
        assert store.load("r").result().run.counters.visits["prep"] == 1


def test_migrate_brings_traversals_within_a_lowered_bound_then_the_timeout_fires(tmp_path: Path) -> None:
    """A waiting run whose deadline passed, migrated: the wait times out as the new workflow says."""
    path, world = copy_of("waiting3", tmp_path)
    changed = flow(world, "traversals_lowered")
    late = FakeClock(TIMEOUT + 5)
    result = resume(changed, path, clock=late,
                    migrate=lambda p: p.model_copy(update={"traversals": {**p.traversals, "prep_to_prep": 1}}))
    assert result.terminal == "expired"
    with SQLiteStore(path, synchronous="NORMAL") as store:
        assert store.load("r").result().run.counters.traversals["prep_to_prep"] == 1


def test_migrate_lets_a_wait_made_plain_run_as_a_plain_state(tmp_path: Path) -> None:
    """waiting_for=None: the state that was a wait runs as the new workflow says."""
    path, world = copy_of("waiting", tmp_path)
    changed = flow(world, "wait_plain")
    result = resume(changed, path, migrate=lambda p: p.model_copy(update={"waiting_for": None}))
    assert result.terminal == "done" and result.context.approval == Approval(ok=True)
    assert world.effects["charge-2"] == 1


def test_migrate_renames_a_queued_event(tmp_path: Path) -> None:
    path, world = copy_of("queued", tmp_path)
    changed = flow(world, "event_renamed")
    result = resume(changed, path, migrate=lambda p: p.model_copy(
        update={"inbox": [_replace(e, event="approved") for e in p.inbox]}))
    assert result.terminal == "done" and world.effects["charge-2"] == 1


def test_migrate_rewrites_a_queued_payload_to_the_new_model(tmp_path: Path) -> None:
    path, world = copy_of("queued", tmp_path)
    changed = flow(world, "payload_v2")
    result = resume(changed, path, migrate=lambda p: p.model_copy(
        update={"inbox": [_replace(e, payload={**e.payload, "amount": 7}) for e in p.inbox]}))
    assert result.terminal == "done" and result.context.approval == ApprovalV2(ok=True, amount=7)


def test_migrate_drops_a_queued_event_which_stays_unconsumed(tmp_path: Path) -> None:
    """An event no wait of the new workflow takes may be dropped: the run is not offered it (it
    waits, stored as waiting, so a delivery can continue it) and the store keeps it unconsumed.
    One that a wait takes may not be dropped (the store would hand it to the wait anyway):
    refused, writing nothing."""
    path, world = copy_of("queued", tmp_path)
    before = dump(path)
    with pytest.raises(IncompatibleRun) as refused:
        resume(flow(world, "payload_v2"), path, migrate=lambda p: p.model_copy(update={"inbox": []}))
    assert "resume-bad-migration" in codes_of(refused.value) and "change its payload" in str(refused.value)
    assert diff(before, dump(path)) == []
    changed = flow(world, "event_renamed")  # the queued 'approval' is taken by no wait now
    result = resume(changed, path, migrate=lambda p: p.model_copy(update={"inbox": []}))
    assert result.outcome is Outcome.WAITING and result.waiting == "approved"
    with SQLiteStore(path, synchronous="NORMAL") as store:
        stored = store.load("r").result()
        assert [e.consumed_step for e in stored.inbox] == [None]
        assert stored.run.status is RunStatus.WAITING  # not "running" with no worker


def test_migrate_renames_the_tool_of_an_open_intent_which_is_still_never_run_again(tmp_path: Path) -> None:
    path, world = copy_of("crash_inside", tmp_path)
    changed = flow(world, "tool_renamed")
    result = resume(changed, path, migrate=lambda p: _pending(p, tool="charge_card"))
    assert result.terminal == "unknown" and world.effects["charge-2"] == 1


def test_migrate_renames_the_tool_of_a_done_row_which_answers_the_call(tmp_path: Path) -> None:
    path, world = copy_of("crash_after", tmp_path)
    changed = flow(world, "tool_renamed")
    result = resume(changed, path, migrate=lambda p: _pending(p, tool="charge_card"))
    assert result.terminal == "done" and result.context.receipt == "receipt-2"
    assert world.effects["charge-2"] == 1


@pytest.mark.parametrize("how", ["effect", "drop"])
def test_migrate_says_an_open_intent_may_run_again(tmp_path: Path, how: str) -> None:
    """The one way an at_most_once call is made again: migrate= says so, by giving its row the
    tool's new effect class or dropping it. Then the call is made once more, and the run ends."""
    path, world = copy_of("crash_inside", tmp_path)
    changed = flow(world, "tool_read")
    fix = ((lambda p: _pending(p, effect="read")) if how == "effect"
           else (lambda p: p.model_copy(update={"calls": []})))
    result = resume(changed, path, migrate=fix)
    assert result.terminal == "done" and world.effects["charge-2"] == 2


# --- wake_due: a refused run is skipped, the others are woken -------------------------------------------------
def rows_of(snapshot: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The rows of ``snapshot`` (a dump) that belong to ``run_id`` (their first column)."""
    return {t: [r for r in rows if r and r[0] == run_id] for t, rows in snapshot.items()
            if t.startswith("sma_") and t != "sma_meta" and isinstance(rows, list)}


@pytest.mark.parametrize(("change", "limit"), [("visits_lowered", 2), ("traversals_lowered", 3),
                                             ("steps_lowered", 2)])
def test_wake_due_skips_the_refused_run_and_wakes_the_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, change: str, limit: int) -> None:
    """Three runs wait; under the new workflow one of them (b, which looped more) is over a lowered
    bound. wake_due continues the two that fit (their timeout passed: they expire as the new workflow
    says) and leaves the refused one exactly as it was, every row of it, still due."""
    world = World()
    v0 = flow(world)
    clock = FakeClock(0.0)
    path = tmp_path / "runs.db"
    with SQLiteStore(path, synchronous="NORMAL") as store:
        for run_id, n in (("a", 1), ("b", limit), ("c", 1)):
            assert v0.run_sync(Ctx(limit=n), store=store, run_id=run_id, clock=clock).waiting == "approval"
        changed = flow(world, change)
        clock.advance(TIMEOUT + 1)
        before = dump(path)
        woken = changed.wake_due_sync(store, clock=clock)
        after = dump(path)
        assert [e.run_id for e in changed.check_runs(store)] == ["b"]
        b = store.load("b").result().run
    assert sorted((r.run_id, r.terminal) for r in woken) == [("a", "expired"), ("c", "expired")]
    assert rows_of(before, "b") == rows_of(after, "b")
    assert b.status is RunStatus.WAITING
    assert world.effects == Counter()
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "'b'" in r.getMessage()]
    assert len(said) == 1 and "resume-over-bound" in said[0], said  # logged, with its reason


# --- fork under a changed workflow ----------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "code"), [("ctx_typed", "resume-bad-context"),
                                              ("visits_lowered", "resume-over-bound"),
                                              ("wait_renamed", "resume-unknown-state"),
                                              ("other_name", "resume-other-workflow")])
def test_fork_under_an_unfitting_change_is_refused_and_makes_no_run(tmp_path: Path, change: str, code: str) -> None:
    """A fork from before step 2 (the run waiting in approve, prep visited twice) under a workflow
    that point does not fit: IncompatibleRun, no new run, nothing changed."""
    path, world = copy_of("done", tmp_path)
    changed = flow(world, change)
    with SQLiteStore(path, synchronous="NORMAL") as store:
        refused(path, lambda: changed.fork_sync("r", at_step=2, store=store, new_run_id="f", clock=FakeClock(1.0)),
                code, world)
        assert [r.run_id for r in store.list_runs().result()] == ["r"]


def test_fork_under_a_fitting_change_runs_as_the_new_workflow_says(tmp_path: Path) -> None:
    """The same fork under a safe change waits in approve; a patch that fixes a changed type is
    accepted too; and a fork is no waiting run: under a wait made a plain state it runs that state."""
    path, world = copy_of("done", tmp_path)
    with SQLiteStore(path, synchronous="NORMAL") as store:
        forked = flow(world, "state_added").fork_sync("r", at_step=2, store=store, new_run_id="f1",
                                                      clock=FakeClock(1.0))
        patched = flow(world, "ctx_typed").fork_sync("r", at_step=2, store=store, new_run_id="f2",
                                                     patch={"tags": 2}, clock=FakeClock(1.0))
        plain = flow(world, "wait_plain").fork_sync("r", at_step=2, store=store, new_run_id="f3",
                                                    clock=FakeClock(1.0))
    assert (plain.terminal, plain.context.approval) == ("done", Approval(ok=True))
    assert (forked.outcome, forked.waiting) == (Outcome.WAITING, "approval")
    assert (patched.outcome, patched.waiting, patched.context.tags) == (Outcome.WAITING, "approval", 2)


# --- MemoryStore: the same refusals, nothing changed -------------------------------------------------------------
def _memory_state(store: Any, run_id: str) -> Any:
    stored = store.load(run_id).result()
    return (stored.model_dump(exclude={"run": {"updated_at"}}) | {"updated_at": stored.run.updated_at},
            [r.model_dump() for r in store.list_runs().result()])


@pytest.mark.parametrize(("point", "change", "code"), [("waiting", "wait_renamed", "resume-unknown-state"),
                                                       ("waiting", "ctx_typed", "resume-bad-context"),
                                                       ("crash_inside", "tool_read", "resume-effect-changed"),
                                                       ("crash_inside", "tool_renamed", "resume-unknown-tool"),
                                                       ("queued", "payload_v2", "resume-bad-event")])
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_refusals_in_the_store_that_stored_the_run_change_nothing(
        tmp_path: Path, kind: str, point: str, change: str, code: str) -> None:
    """The refusals in the very store (still open) the run crashed in: a MemoryStore (compared
    record by record), and a SQLiteStore whose intent log still holds the open intent (compared
    byte for byte, the ``<db>-intents`` file included)."""
    world = World()
    path = tmp_path / "runs.db"
    with MemoryStore() if kind == "memory" else SQLiteStore(path, synchronous="NORMAL") as store:
        store_point(store, world, point)
        changed = flow(world, change)
        effects = Counter(world.effects)
        before = _memory_state(store, "r")
        if kind == "sqlite":
            if point == "crash_inside":
                assert Path(f"{path}-intents").read_bytes()  # the intent is in the log
            refused(path, lambda: changed.resume_sync("r", store=store, clock=FakeClock(1.0)), code, world)
            if point in ("waiting", "crash_inside"):
                refused(path, lambda: changed.deliver_sync("r", "approval", {"ok": True}, store=store,
                                                           clock=FakeClock(1.0)), code, world)
        else:
            with pytest.raises(IncompatibleRun) as info:
                changed.resume_sync("r", store=store, clock=FakeClock(1.0))
            assert code in codes_of(info.value)
            if point in ("waiting", "crash_inside"):
                with pytest.raises(IncompatibleRun) as info:
                    changed.deliver_sync("r", "approval", {"ok": True}, store=store, clock=FakeClock(1.0))
                assert code in codes_of(info.value)
        assert _memory_state(store, "r") == before
        assert world.effects == effects


# --- 4. check_runs agrees with resume ---------------------------------------------------------------------------
def template_all() -> Template:
    """One closed store holding a run at every point, each under the point's name."""
    if not _ALL:
        path = _TEMPLATE_DIR[0] / "all.db"
        world = World()
        with SQLiteStore(path, synchronous="NORMAL") as store:
            for point in POINTS:
                store_point(store, world, point, run_id=point)
        _ALL.append(Template(path, Counter(world.effects)))
    return _ALL[0]


@pytest.mark.parametrize("change", CHANGES)
def test_check_runs_lists_exactly_the_runs_resume_refuses_with_the_same_codes(tmp_path: Path, change: str) -> None:
    """compiled.check_runs(store) reads only, and lists a run iff resume (without migrate=) refuses
    it, with the same codes."""
    path = tmp_path / "runs.db"
    path.write_bytes(template_all().path.read_bytes())
    world = World()
    changed = flow(world, change)
    with SQLiteStore(path, synchronous="NORMAL") as store:
        before = dump(path)
        listed = {e.run_id: codes_of(e) for e in changed.check_runs(store)}
        assert diff(before, dump(path)) == [], "check_runs wrote to the store"
        if change == "other_name":
            assert listed == {}  # it looks at its own workflow's runs only
            return
        got: dict[str, set[str]] = {}
        for point in POINTS:
            try:
                changed.resume_sync(point, store=store, clock=FakeClock(1.0))
            except IncompatibleRun as exc:
                got[point] = codes_of(exc)
    assert listed == got


# --- 3. the property ------------------------------------------------------------------------------------------
EITHER = "either"
"""The design leaves it open (an ended run's counters under a changed graph): either verdict is
fine, but a refusal still changes nothing and nothing else may be raised."""


def expected(stored: Any, change: str) -> str | None:
    """The code resume must refuse ``stored`` with under ``flow(change)``, None when it must be
    accepted (the rules of docs/durability.md and issue 21, from what the store holds)."""
    r = stored.run
    c = r.counters
    ended = r.status is RunStatus.DONE
    waiting = r.status is RunStatus.WAITING
    queued = [e for e in stored.inbox if e.consumed_step is None]
    pending = [k for k in stored.calls if k.step >= r.next_step]
    if change == "other_name":
        return "resume-other-workflow"
    if change in ("ctx_required", "ctx_typed", "field_removed") or (
            change == "payload_v2" and "approval" in r.written):
        return "resume-bad-context"
    if ended:
        if change == "done_renamed":
            return "resume-unknown-state"
        if change in ("wait_removed", "wait_renamed", "prep_renamed", "visits_lowered", "visits_equal",
                      "traversals_lowered", "steps_lowered"):
            return EITHER
        return None
    if change == "prep_renamed":
        return "resume-unknown-state" if r.state == "prep" else "resume-counters"
    if change in ("wait_removed", "wait_renamed"):
        if waiting:
            return "resume-unknown-state"
        if r.state != "prep":
            return "resume-counters"  # it visited approve, and took prep_to_approve
        return "resume-bad-event" if queued and change == "wait_removed" else None
    if change in ("wait_plain", "event_renamed"):
        if waiting:
            return "resume-wait-changed"
        return "resume-bad-event" if queued else None
    if change == "unset_read":
        return "resume-unset-read" if r.state != "prep" else None
    if pending and change in ("tool_renamed", "tool_moved"):
        return "resume-unknown-tool"
    if pending and change in ("tool_read", "tool_idempotent"):
        return "resume-effect-changed"
    if change == "result_type" and any(k.status == "done" for k in pending):
        return "resume-result-changed"  # the journaled "receipt-2" is no int
    if change == "payload_v2" and queued:
        return "resume-bad-event"
    max_visits = {"visits_lowered": 1, "visits_equal": 2, "visits_raised": 9}.get(change, 3)
    if (c.visits.get("prep", 0) > max_visits
            or c.traversals.get("prep_to_prep", 0) > (1 if change == "traversals_lowered" else 3)
            or (change == "steps_lowered" and c.actions_run > 1)):
        return "resume-over-bound"
    return None


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(point=st.sampled_from(POINTS), change=st.sampled_from(CHANGES), limit=st.integers(1, 3),
       op=st.sampled_from(["resume", "deliver"]), late=st.booleans())
def test_property_a_changed_workflow_continues_the_run_or_refuses_it_changing_nothing(
        point: str, change: str, limit: int, op: str, late: bool) -> None:
    """A run stored at a drawn point (waiting, crashed mid-step, crashed inside an at_most_once call,
    with a queued event, ended), a drawn change: resume (or deliver the event the new workflow
    waits for) either continues the run to a terminal of the new workflow (or a wait of it), or
    raises IncompatibleRun whose codes include the expected one, the store file unchanged. Never
    another exception; the at_most_once charge is never made twice. ``late``: the clock is past
    the wait's deadline (a waiting run is ready, and is claimed if it fits)."""
    if point in ("waiting3", "crash_pay", "crash_inside", "crash_after", "done"):
        limit = 3 if point == "waiting3" else 2
    with tempfile.TemporaryDirectory() as tmp:
        path, world = copy_of(point, Path(tmp), limit=limit)
        changed = flow(world, change)
        clock = FakeClock(TIMEOUT + 5 if late else 1.0)
        with SQLiteStore(path, synchronous="NORMAL") as store:
            want = expected(store.load("r").result(), change)
            if op == "deliver" and events(changed) and point != "done":  # an ended run takes no event
                event = sorted(events(changed))[0]

                def action() -> Any:
                    return changed.deliver_sync("r", event, {"ok": True, "amount": 1}, store=store, clock=clock)
            else:
                def action() -> Any:
                    return changed.resume_sync("r", store=store, clock=clock)
            before = dump(path)
            caught: IncompatibleRun | None = None
            try:
                result = action()
            except IncompatibleRun as exc:
                caught = exc
            if caught is not None:
                assert want is not None, f"refused, expected to continue:\n{caught}"
                if want != EITHER:
                    assert want in codes_of(caught), f"expected [{want}]:\n{caught}"
                assert diff(before, dump(path)) == []
                assert world.effects == template(point, limit).effects
                return
            assert want in (None, EITHER), f"accepted, expected IncompatibleRun [{want}]: {result!r:.400}"
            if result is None:  # delivered to a run not waiting: it takes it when resumed
                assert op == "deliver"
                result = changed.resume_sync("r", store=store, clock=clock)
            assert_continued(changed, result, world)


# --- migrating a waiting run: the store holds what migrate made -------------------------------------------------
def test_migrate_of_a_waiting_run_to_a_renamed_wait_is_stored_so_a_plain_delivery_continues_it(
        tmp_path: Path) -> None:
    """A waiting run migrated into the renamed wait waits there; the store holds the migrated run,
    so a delivery (which takes no migrate=) under the new workflow continues it to done."""
    path, world = copy_of("waiting", tmp_path)
    changed = flow(world, "wait_renamed")
    paused = resume(changed, path, migrate=lambda p: _renamed(p, "approve", "confirm"))
    assert (paused.outcome, paused.waiting) == (Outcome.WAITING, "approval")
    with SQLiteStore(path, synchronous="NORMAL") as store:
        assert changed.check_runs(store) == []
        done = changed.deliver_sync("r", "approval", {"ok": True}, store=store, clock=FakeClock(2.0))
    assert done is not None and done.terminal == "done" and world.effects["charge-2"] == 1


def test_migrate_of_a_waiting_run_to_a_renamed_event_is_stored_so_a_plain_delivery_continues_it(
        tmp_path: Path) -> None:
    path, world = copy_of("waiting", tmp_path)
    changed = flow(world, "event_renamed")
    paused = resume(changed, path, migrate=lambda p: p.model_copy(update={"waiting_for": "approved"}))
    assert (paused.outcome, paused.waiting) == (Outcome.WAITING, "approved")
    with SQLiteStore(path, synchronous="NORMAL") as store:
        assert changed.check_runs(store) == []
        done = changed.deliver_sync("r", "approved", {"ok": True}, store=store, clock=FakeClock(2.0))
    assert done is not None and done.terminal == "done"


def test_migrate_of_a_waiting_run_with_a_new_required_field_is_stored(tmp_path: Path) -> None:
    path, world = copy_of("waiting", tmp_path)
    changed = flow(world, "ctx_required")
    paused = resume(changed, path,
                    migrate=lambda p: p.model_copy(update={"context": {**p.context, "region": "eu"}}))
    assert (paused.outcome, paused.waiting, paused.context.region) == (Outcome.WAITING, "approval", "eu")
    with SQLiteStore(path, synchronous="NORMAL") as store:
        done = changed.deliver_sync("r", "approval", {"ok": True}, store=store, clock=FakeClock(2.0))
    assert done is not None and done.terminal == "done" and done.context.region == "eu"


# --- reopen: the same check --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("point", "change", "code"), [("waiting", "wait_renamed", "resume-unknown-state"),
                                                       ("crash_inside", "tool_read", "resume-effect-changed"),
                                                       ("queued", "payload_v2", "resume-bad-event"),
                                                       ("done", "ctx_typed", "resume-bad-context")])
def test_reopen_under_an_unfitting_change_is_refused_and_changes_nothing(
        tmp_path: Path, point: str, change: str, code: str) -> None:
    path, world = copy_of(point, tmp_path)
    changed = flow(world, change)

    async def reopen() -> Any:
        with SQLiteStore(path, synchronous="NORMAL") as store:
            return await changed.reopen("r", store=store, clock=FakeClock(1.0))

    refused(path, lambda: asyncio.run(reopen()), code, world)


# --- the version fingerprint ------------------------------------------------------------------------------------
SHAPE_CHANGES = ("wait_removed", "wait_renamed", "wait_plain", "event_renamed", "ctx_required", "ctx_typed",
                 "ctx_optional", "unset_read", "visits_lowered", "visits_equal", "visits_raised",
                 "traversals_lowered", "steps_lowered", "tool_read", "tool_idempotent", "tool_renamed", "payload_v2",
                 "prep_renamed", "done_renamed", "state_added", "field_removed", "tool_moved", "timeout_changed",
                 "payload_optional")


def test_the_fingerprint_is_stable_and_moves_with_every_change_of_shape(tmp_path: Path) -> None:
    """Two compiles of one declaration share a fingerprint, which each stored run carries; every
    change of states, transitions, bounds, waits (event and payload schema), tools (and effects) or
    the context schema gives another."""
    v0 = flow(World())
    assert flow(World()).fingerprint == v0.fingerprint
    path, _ = copy_of("waiting", tmp_path)
    with SQLiteStore(path, synchronous="NORMAL") as store:
        assert store.load("r").result().run.fingerprint == v0.fingerprint
    same = [c for c in SHAPE_CHANGES if flow(World(), c).fingerprint == v0.fingerprint]
    assert same == []


def test_a_state_added_on_the_path_does_not_fail_a_run_on_the_old_step_budget(tmp_path: Path) -> None:
    """Adding a state is a safe change: a run stored under version 0 (whose default step budget was
    version 0's static bound, 5) that takes the longest path of the new workflow (6 steps) ends as
    the new workflow says, in done, not in a failure terminal for 'max_steps of 5 reached'."""
    path, world = copy_of("waiting3", tmp_path)
    changed = flow(world, "state_added")
    assert (flow(World()).max_steps, changed.max_steps) == (5, 6)
    with SQLiteStore(path, synchronous="NORMAL") as store:
        result = changed.deliver_sync("r", "approval", {"ok": True}, store=store, clock=FakeClock(1.0))
    assert result is not None
    assert (result.terminal, result.reason) == ("done", None)
    assert [s.state for s in result.path][-2:] == ["pay", "notify"]


# --- the command line: the same check, nothing written ---------------------------------------------------------
WAIT_RENAMED = flow(World(), "wait_renamed")
"""Version 0 with its wait renamed, for the command line (``test_resume_changes:WAIT_RENAMED``)."""
TOOL_READ = flow(World(), "tool_read")
CTX_OPTIONAL = flow(World(), "ctx_optional")


@pytest.mark.parametrize("command", ["resume", "deliver", "fork", "wake"])
def test_the_cli_refuses_a_run_the_new_workflow_does_not_fit_and_writes_nothing(tmp_path: Path, command: str) -> None:
    """``runs resume/deliver/fork`` say why (every problem, exit 2) and ``runs wake`` skips the run;
    the store file is as it was, byte for byte."""
    if command in ("resume", "deliver"):
        # Waiting, its deadline far in the future on any wall clock: the not-ready path, where the
        # check used to be skipped (the command line resumes on the system clock).
        path = tmp_path / "runs.db"
        with SQLiteStore(path, synchronous="NORMAL") as store:
            store_point(store, World(), "waiting", clock=FakeClock(1e12))
    else:  # wake: the deadline (t=100) passed long ago, so the run is due; fork: from the ended run
        path, _ = copy_of("waiting" if command == "wake" else "done", tmp_path)
    target = "test_resume_changes:WAIT_RENAMED"
    argv = {"resume": ["runs", "resume", target, "r"],
            "deliver": ["runs", "deliver", target, "r", "approval", "--payload", '{"ok": true}'],
            "fork": ["runs", "fork", target, "r", "--at-step", "2"],
            "wake": ["runs", "wake", target]}[command] + ["--store", str(path)]
    before = dump(path)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    assert "Traceback" not in err.getvalue()
    if command == "wake":
        assert code in (0, 1), (code, out.getvalue(), err.getvalue())
    else:
        assert code == 2, (code, out.getvalue(), err.getvalue())
        assert "resume-unknown-state" in err.getvalue() and "'approve'" in err.getvalue()
    assert diff(before, dump(path)) == []


@pytest.mark.parametrize("how", ["added", "renumbered"])
def test_a_migration_that_invents_a_queued_event_is_refused_and_writes_nothing(tmp_path: Path, how: str) -> None:
    """migrate= may rename, rewrite or drop a queued event: they are the store's inbox rows. An
    event the store does not hold (a new one, or one given another seq) was never delivered: the
    migration is refused [resume-bad-migration] before anything is written, never a run that
    takes it, commits steps and then stops on RunFenced, left running with no worker."""
    point = "crash_prep" if how == "added" else "queued"
    path, world = copy_of(point, tmp_path)
    changed = flow(world, "ctx_required")

    def migrate(p: Any) -> Any:
        context = {**p.context, "region": "eu"}
        if how == "added":
            invented = p.model_validate({**p.model_dump(), "inbox": [{"seq": 999, "event": "approval",
                                                                        "payload": {"ok": True}}]}).inbox
        else:
            invented = [_replace(e, seq=e.seq + 998) for e in p.inbox]
        return p.model_copy(update={"context": context, "inbox": invented})

    refused(path, lambda: resume(changed, path, migrate=migrate), "resume-bad-migration", world)


def test_a_waiting_run_migrated_to_a_renamed_wait_keeps_its_deadline(tmp_path: Path) -> None:
    """The timeout is counted from when the run entered the wait (docs/durability.md): a run that
    entered ``approve`` at t=0 (deadline t=100), migrated at t=50 into the same wait renamed
    ``confirm``, still times out at t=100, not at t=150: a deploy does not lengthen a person's
    window. The same holds for a migration that keeps the state (a new required field)."""
    path, world = copy_of("waiting", tmp_path)
    changed = flow(world, "wait_renamed")
    paused = resume(changed, path, clock=FakeClock(50.0), migrate=lambda p: _renamed(p, "approve", "confirm"))
    assert paused.outcome is Outcome.WAITING
    with SQLiteStore(path, synchronous="NORMAL") as store:
        wait = store.load("r").result().run.wait
        assert wait is not None and (wait.state, wait.deadline) == ("confirm", TIMEOUT)
        woken = changed.wake_due_sync(store, clock=FakeClock(TIMEOUT + 1))
    assert [(r.run_id, r.terminal) for r in woken] == [("r", "expired")]
    (tmp_path / "same").mkdir()
    path2, world2 = copy_of("waiting", tmp_path / "same")
    required = flow(world2, "ctx_required")
    resume(required, path2, clock=FakeClock(50.0),
           migrate=lambda p: p.model_copy(update={"context": {**p.context, "region": "eu"}}))
    with SQLiteStore(path2, synchronous="NORMAL") as store:
        wait = store.load("r").result().run.wait
    assert wait is not None and wait.deadline == TIMEOUT


@pytest.mark.parametrize("change", ["wait_renamed", "tool_read", "ctx_optional"])
def test_runs_check_lists_what_check_runs_lists_and_writes_nothing(tmp_path: Path, change: str) -> None:
    """``statemachine-agent runs check --json MODULE:OBJECT --store DB``: every run the new version
    would refuse, with the codes check_runs (and so resume) gives; exit 1 if any, 0 if none; the
    store file is as it was."""
    path = tmp_path / "runs.db"
    path.write_bytes(template_all().path.read_bytes())
    target = change.upper()
    with SQLiteStore(path, readonly=True) as store:
        expected_runs = {e.run_id: codes_of(e) for e in globals()[target].check_runs(store)}
    before = dump(path)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["runs", "check", "--json", f"test_resume_changes:{target}", "--store", str(path)])
    assert diff(before, dump(path)) == []
    listed = {r["run_id"]: {p["code"] for p in r["problems"]} for r in json.loads(out.getvalue())}
    assert listed == expected_runs
    assert code == (1 if expected_runs else 0), err.getvalue()
    assert (change == "ctx_optional") == (not listed)


def test_an_async_migration_is_awaited_or_refused_leaving_no_coroutine_behind(tmp_path: Path) -> None:
    """``async def migrate(point)`` is an easy slip: it is either awaited (and the run continues),
    or refused [resume-bad-migration] writing nothing, and never leaves a coroutine that was never
    awaited (a RuntimeWarning at garbage collection, far from the call)."""
    path, world = copy_of("crash_prep", tmp_path)
    changed = flow(world, "prep_renamed")

    async def migrate(point: Any) -> Any:
        return _fix_prep(point)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = dump(path)
        refusal: IncompatibleRun | None = None
        try:
            result = resume(changed, path, migrate=migrate)
        except IncompatibleRun as exc:
            refusal = exc
        if refusal is not None:
            assert "resume-bad-migration" in codes_of(refusal)
            assert diff(before, dump(path)) == []
        else:
            assert result.outcome is Outcome.WAITING
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
