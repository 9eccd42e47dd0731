"""Adversarial review of deliveries, waits, wake-ups, replay and restarts (issue 16, groups 1, 2, 4).

Real SQLite files throughout; the kill test runs real processes (tests/adversarial_worker.py) and
SIGKILLs them at drawn wall-clock moments.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, SecretStr

from statemachine_agent import UNSET, Budget, Context, FakeClock, Outcome, Workflow
from statemachine_agent.errors import (
    EffectOutcomeUnknown,
    IncompatibleRun,
    NondeterminismError,
    RunError,
    ToolResultError,
)
from statemachine_agent.events import BudgetExhausted, RunStarted
from statemachine_agent.secrets import FernetSecrets, SecretUnreadable
from statemachine_agent.stores import MemoryStore, RunStatus, SQLiteStore

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import adversarial_worker  # noqa: E402


class Approval(BaseModel):
    ok: bool


class Order(Context):
    approval: Approval | None = None
    receipt: str = ""


def approval_flow(effects: list[str]) -> Any:
    """approve (initial wait) -> pay (at_most_once charge) -> done | unknown."""
    wf = Workflow("adv", Order)

    def charge(run: str) -> str:
        effects.append(run)
        return f"receipt {run}"

    wf.tool(charge, effect="at_most_once")
    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], initial=True)

    @wf.state(reads=["approval"], writes=["receipt"], tools=["charge"])
    async def pay(ctx: Order, tools: Any) -> None:
        ctx.receipt = await tools.call("charge", run="r")

    wf.terminal("done")
    wf.terminal("unknown", outcome="failure")
    wf.transition("approve", "pay")
    wf.transition("pay", "done")
    wf.on_error("pay", EffectOutcomeUnknown, "unknown")
    return wf.compile()


def test_a_resumed_run_at_its_wait_is_not_taken_by_a_waker_or_a_delivery(tmp_path: Path) -> None:
    """``resume`` claims a waiting run whose event is in its inbox (its deliverer died after
    committing the event). While the resumer is live (here: held in its RunStarted hook, before its
    first commit), a ``wake_due`` and a second delivery must not claim the run from under it (G5):
    the resumer finishes in ``done``, nobody gets ``RunFenced``, the charge happens once."""
    effects: list[str] = []
    compiled = approval_flow(effects)

    async def scenario() -> tuple[Any, Any, Any]:
        store = SQLiteStore(tmp_path / "runs.db")
        try:
            paused = await compiled.run(Order(), store=store, run_id="r")
            assert paused.waiting == "approval"
            await asyncio.wrap_future(store.deliver("r", "approval", {"ok": True}))  # its deliverer died here
            inside, go = asyncio.Event(), asyncio.Event()

            async def hold(event: Any) -> None:
                if isinstance(event, RunStarted):
                    inside.set()
                    await go.wait()

            resumer = asyncio.ensure_future(compiled.resume("r", store=store, hooks=[hold]))
            await inside.wait()
            woken = await compiled.wake_due(store)
            delivered = await compiled.deliver("r", "approval", {"ok": False}, store=store)
            go.set()
            return await resumer, woken, delivered
        finally:
            store.close()

    result, woken, delivered = asyncio.run(scenario())
    assert (result.terminal, woken, delivered) == ("done", [], None)
    assert effects == ["r"]
    with SQLiteStore(tmp_path / "runs.db") as store:
        stored = store.load("r").result()
    assert stored.run.status is RunStatus.DONE
    assert [e.consumed_step for e in stored.inbox] == [0, None]


# --- cancellation at every await ------------------------------------------------------------------
def busy_flow(effects: list[str], *, initial_wait: bool = False) -> Any:
    """work -> approve (wait, timeout 1 h) -> pay (at_most_once) -> done | unknown | expired; with
    ``initial_wait`` the run starts in ``approve``."""
    wf = Workflow("adv_cancel", Order)

    def charge(run: str) -> str:
        effects.append(run)
        return f"receipt {run}"

    wf.tool(charge, effect="at_most_once")

    async def work(ctx: Order) -> None:
        await asyncio.sleep(0)

    if not initial_wait:
        wf.state(work, initial=True, reads=[], writes=[])
        wf.transition("work", "approve")

    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], timeout=3600,
            on_timeout="expired", initial=initial_wait)

    @wf.state(reads=["approval"], writes=["receipt"], tools=["charge"])
    async def pay(ctx: Order, tools: Any) -> None:
        ctx.receipt = await tools.call("charge", run="r")

    wf.terminal("done")
    wf.terminal("unknown", outcome="failure")
    wf.terminal("expired", outcome="failure")
    wf.transition("approve", "pay")
    wf.transition("pay", "done")
    wf.on_error("pay", EffectOutcomeUnknown, "unknown")
    return wf.compile()


async def _cancel_after(coro: Any, yields: int) -> Any:
    """Run ``coro`` as a task and cancel it after ``yields`` turns of the loop (if still running):
    its result, or ``None`` when it was cancelled."""
    task = asyncio.ensure_future(coro)
    for _ in range(yields):
        if task.done():
            break
        await asyncio.sleep(0)
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return None


async def _settle(compiled: Any, store: Any) -> Any:
    """What a supervisor does: resume the run if stored running, deliver the approval if it waits
    with nothing to take, wake it if it can go on; until it ends."""
    for _ in range(6):
        stored = await asyncio.wrap_future(store.load("r"))
        run = stored.run
        if run.status is RunStatus.DONE:
            return await compiled.resume("r", store=store)
        if run.status is RunStatus.RUNNING:
            await compiled.resume("r", store=store)
        elif not any(e.consumed_step is None for e in stored.inbox):
            await compiled.deliver("r", "approval", {"ok": True}, store=store)
        else:
            await compiled.wake_due(store)
    raise AssertionError(f"run r did not end: {run}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["run", "run-object", "deliver", "wake"]), yields=st.integers(0, 40),
       initial_wait=st.booleans())
def test_a_cancelled_run_delivery_or_wake_up_loses_and_doubles_nothing(tmp_path: Path, where: str,
                                                                        yields: int, initial_wait: bool) -> None:
    """``task.cancel()`` landing at any await of a run entering its wait, of a delivery, or of a
    wake-up; then the run is continued (the same Run object again, or from the store): it ends in
    ``done`` with one charge, or (only when the cancel left an intent without an outcome) in
    ``unknown``, with at most one (a cancel while the sync charge runs abandons its thread, which may
    still charge); never ``expired`` (its timeout is an hour away), the event consumed once."""
    effects: list[str] = []
    compiled = busy_flow(effects, initial_wait=initial_wait)
    path = tmp_path / f"{where}-{yields}-{initial_wait}.db"
    path.unlink(missing_ok=True)

    async def scenario() -> Any:
        store = SQLiteStore(path)
        try:
            if where in ("run", "run-object"):
                run = compiled.start(Order(), store=store, run_id="r")
                first = await _cancel_after(run.run_to_end(), yields)
                if first is None and where == "run-object":
                    try:  # the same object again: it waits, or says to continue from the store
                        first = await run.run_to_end()
                    except RunError as exc:
                        message = str(exc)
                        assert "compiled.resume(" in message, message
                if first is not None:
                    assert first.waiting == "approval", first
                if not [r for r in compiled.runs(store) if r.run_id == "r"]:  # cancelled before it was stored
                    await compiled.run(Order(), store=store, run_id="r")
            else:
                paused = await compiled.run(Order(), store=store, run_id="r")
                assert paused.waiting == "approval"
                if where == "deliver":
                    await _cancel_after(compiled.deliver("r", "approval", {"ok": True}, store=store), yields)
                else:
                    await asyncio.wrap_future(store.deliver("r", "approval", {"ok": True}))
                    await _cancel_after(compiled.wake_due(store), yields)
            result = await _settle(compiled, store)
            stored = await asyncio.wrap_future(store.load("r"))
            return result, stored
        finally:
            store.close()

    result, stored = asyncio.run(scenario())
    assert len(effects) <= 1
    intents = [c for c in stored.calls if c.tool == "charge"]
    if result.terminal == "unknown":
        assert [str(c.status) for c in intents] == ["intent"]
    else:
        assert (result.terminal, effects, result.context.receipt) == ("done", ["r"], "receipt r")
    assert sum(e.consumed_step is not None for e in stored.inbox) == 1
    assert [s.number for s in stored.steps] == list(range(len(stored.steps)))


class _CancellingClock(FakeClock):
    """A fake clock that cancels the task reading it, at its ``at``-th reading of wall time: the
    cancel lands on the next await, deterministically."""

    def __init__(self, at: int) -> None:
        super().__init__(1000.0)
        self.readings, self.at = 0, at

    def wall(self) -> float:
        self.readings += 1
        if self.readings == self.at:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
        return super().wall()


@pytest.mark.parametrize("initial_wait", [True, False])
def test_a_run_cancelled_while_it_is_stored_as_waiting_still_waits_when_run_again(tmp_path: Path,
                                                                                  initial_wait: bool) -> None:
    """The cancel lands on the await that stores the run as waiting. Running the same Run object
    again must pause it at the wait (its timeout is an hour away), not time the wait out at once;
    then a delivery finishes it."""
    effects: list[str] = []
    compiled = busy_flow(effects, initial_wait=initial_wait)

    async def scenario() -> tuple[Any, Any]:
        store = SQLiteStore(tmp_path / "runs.db")
        try:
            clock = _CancellingClock(at=2)  # 1: the deadline is set; 2: checked, then the suspend's await
            run = compiled.start(Order(), store=store, run_id="r", clock=clock)
            with pytest.raises(asyncio.CancelledError):
                await run.run_to_end()
            assert clock.readings >= 2
            try:
                again = await run.run_to_end()
            except RunError as exc:  # the cancel landed on a step's commit: the store says where it is
                message = str(exc)
                assert not initial_wait and "compiled.resume(" in message, message
                again = await compiled.resume("r", store=store, clock=clock)
            done = await compiled.deliver("r", "approval", {"ok": True}, store=store, clock=clock)
            return again, done
        finally:
            store.close()

    again, done = asyncio.run(scenario())
    assert (again.terminal, again.waiting) == ("approve", "approval")
    assert (done.terminal, effects) == ("done", ["r"])


# --- SIGKILLs at random moments of processes delivering and waking at once -----------------------
def _collect(effects: Path) -> dict[str, list[tuple[str, int]]]:
    lines: dict[str, list[tuple[str, int]]] = {}
    if effects.exists():
        for line in effects.read_text().splitlines():
            what, name, pid = line.split()
            lines.setdefault(name, []).append((what, int(pid)))
    return lines


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(delays=st.lists(st.floats(0.0, 0.35), min_size=3, max_size=3), seed=st.integers(0, 2**16))
def test_workers_killed_at_random_moments_lose_and_double_nothing(tmp_path_factory: Any, delays: list[float],
                                                                  seed: int) -> None:
    """Three processes deliver approvals and call ``wake_due`` on the same file at once, each
    SIGKILLed at a drawn wall-clock moment (or finishing first); then a supervisor resumes every
    run stored as running, delivers to those still waiting, and wakes the rest. Every run ends in
    ``done`` with its charge made once, or in ``unknown`` only when a killed process was inside
    that charge (between its intent and its outcome); an effect made by a process that was not
    killed always ends in ``done``; each event is consumed at most once; steps are contiguous."""
    tmp = tmp_path_factory.mktemp("kill")
    db, effects = tmp / "runs.db", tmp / "effects"
    ev, to = adversarial_worker.make(str(effects), timeout=False), adversarial_worker.make(str(effects), timeout=True)
    ev_runs, to_runs = [f"e{i}" for i in range(12)], [f"t{i}" for i in range(6)]
    with SQLiteStore(db) as store:
        for r in ev_runs:
            assert ev.run_sync(adversarial_worker.Job(name=r), store=store, run_id=r).waiting == "approval"
        for r in to_runs:  # entered at fake time 0: deadline 10 s, long past on the wall clock
            paused = to.run_sync(adversarial_worker.Job(name=r), store=store, run_id=r, clock=FakeClock(0.0))
            assert paused.waiting == "approval"
    procs = [subprocess.Popen([sys.executable, str(HERE / "adversarial_worker.py"), str(db), str(effects),
                               str(seed + i), *ev_runs], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(len(delays))]
    killed: set[int] = set()
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.stderr
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        t0 = time.monotonic()
        for delay, p in sorted(zip(delays, procs, strict=True), key=lambda x: x[0]):
            time.sleep(max(0.0, t0 + delay - time.monotonic()))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in procs:
            _, err = p.communicate(timeout=60)
            if p.returncode == -signal.SIGKILL:
                killed.add(p.pid)
            else:
                assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    with SQLiteStore(db) as store:
        for _ in range(4):  # the supervisor
            for rec in store.list_runs().result():
                flow = ev if rec.workflow == "chaos_ev" else to
                if rec.status is RunStatus.RUNNING:
                    flow.resume_sync(rec.run_id, store=store)
                elif rec.status is RunStatus.WAITING and rec.workflow == "chaos_ev":
                    flow.deliver_sync(rec.run_id, "approval", {"ok": True}, store=store)
            ev.wake_due_sync(store)
            to.wake_due_sync(store)
        runs = {r: store.load(r).result() for r in ev_runs + to_runs}
    lines = _collect(effects)
    for r, stored in runs.items():
        assert stored.run.status is RunStatus.DONE, (r, stored.run)
        made = [pid for what, pid in lines.get(r, []) if what == "effect"]
        started = [pid for what, pid in lines.get(r, []) if what == "start"]
        assert len(made) <= 1 and len(started) <= 1, (r, lines.get(r))
        if stored.run.terminal == "unknown":
            # the documented route: only when the call's process died between intent and outcome
            assert killed and all(pid in killed for pid in started), (r, started, killed)
        else:
            assert stored.run.terminal == "done", (r, stored.run)
            assert len(made) == 1, (r, lines.get(r))
            assert stored.context["receipt"] == f"receipt {r}"
        if made and made[0] not in killed:
            assert stored.run.terminal == "done", (r, made, killed)
        consumed = [e.consumed_step for e in stored.inbox if e.consumed_step is not None]
        assert len(consumed) == len(set(consumed)) <= 1, (r, stored.inbox)
        assert [s.number for s in stored.steps] == list(range(len(stored.steps))), r


# --- restart counting -------------------------------------------------------------------------------
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(superseded=st.lists(st.integers(0, 3), min_size=4, max_size=4))
def test_a_step_that_really_crashes_every_time_ends_after_max_step_restarts_plus_one_attempts(
        tmp_path_factory: Any, superseded: list[int]) -> None:
    """``boom`` SIGKILLs its process every time it runs (first in the process that delivers the
    approval, then in processes that resume). Between attempts, claims that never start the step
    (claimers that died at once) are made: they count no restart. The run ends in its failure
    terminal with the MAX_STEP_RESTARTS budget after exactly max_step_restarts + 1 real attempts."""
    tmp = tmp_path_factory.mktemp("restarts")
    db, attempts = tmp / "runs.db", tmp / "attempts"
    flow = adversarial_worker.crasher(str(attempts), kill=False)
    with SQLiteStore(db) as store:
        assert flow.run_sync(adversarial_worker.Job(), store=store, run_id="c").waiting == "approval"
    worker = [sys.executable, str(HERE / "adversarial_worker.py"), "--crash", str(db), str(attempts)]
    budgets: list[Any] = []
    result = None
    for n, claims in enumerate(superseded):
        with SQLiteStore(db) as store:
            for _ in range(claims):
                store.claim("c").result()
        done = subprocess.run([*worker, "deliver" if n == 0 else "resume"], capture_output=True, text=True, check=False,
                              timeout=60)
        if done.returncode != -signal.SIGKILL:
            break
    with SQLiteStore(db) as store:
        result = flow.resume_sync("c", store=store, hooks=[budgets.append])
    real = attempts.read_text().splitlines()
    assert len(real) == 3 + 1, real
    assert (result.terminal, result.outcome) == ("failed", Outcome.FAILURE)
    assert [e.budget for e in budgets if isinstance(e, BudgetExhausted)] == [Budget.MAX_STEP_RESTARTS]


# --- replay ----------------------------------------------------------------------------------------
class Reminded(Context):
    approval: Approval | None = None
    reminders: int = 0


def reminder_flow() -> Any:
    """approve (wait, timeout 60 s) -> done; on timeout -> remind -> approve again."""
    wf = Workflow("reminded", Reminded)
    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], initial=True, timeout=60,
            on_timeout="remind")

    @wf.state(reads=["reminders"], writes=["reminders"], max_visits=5)
    def remind(ctx: Reminded) -> None:
        ctx.reminders += 1

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("approve", "done")
    wf.transition("remind", "approve")
    return wf.compile()


@settings(max_examples=10, deadline=None)
@given(timeouts=st.integers(1, 3), extra=st.booleans())
def test_a_wait_that_timed_out_before_its_event_came_replays_without_divergence(timeouts: int,
                                                                                 extra: bool) -> None:
    """The wait times out ``timeouts`` times (woken by ``wake_due``) before the approval is
    delivered. The event is in the inbox from the start of a replay, but the record says the wait
    timed out at first: a replay with unchanged code follows the record, not the inbox.
    ``extra``: a second approval is delivered with the first, and is never consumed."""
    compiled = reminder_flow()
    clock = FakeClock(0.0)
    with MemoryStore() as store:
        assert compiled.run_sync(Reminded(), store=store, run_id="w", clock=clock).waiting == "approval"
        for _ in range(timeouts):
            clock.advance(61)
            [woken] = compiled.wake_due_sync(store, clock=clock)
            assert woken.waiting == "approval"
        if extra:  # its deliverer died before continuing the run: the next delivery finds two events
            store.deliver("w", "approval", {"ok": True}).result()
        done = compiled.deliver_sync("w", "approval", {"ok": False}, store=store, clock=clock)
        assert (done.terminal, done.context.reminders) == ("done", timeouts)
        report = compiled.replay_sync("w", store=store)
    assert report.ok, str(report)
    assert report.matched == report.recorded == 2 * timeouts + 1


# --- secrets: a tool that returns one ---------------------------------------------------------------
CANARY = "sk-CANARY-7f3a9"


class Crash(BaseException):
    """A process dying mid-step (not an Exception: nothing routes it)."""


class Unkeyed(Context):
    approval: Approval | None = None
    seen: str = ""


class Keyed(Unkeyed):
    token: SecretStr = UNSET  # type: ignore[assignment]


def token_flow(effect: str, crash: list[bool], *, keyed: bool = True) -> Any:
    """approve (wait, timeout 60 s, timing out into ``fetch`` too) -> fetch (a tool that returns a
    SecretStr; the process dies once right after the call) -> done. ``keyed``: the context keeps
    the token (a secret field), else only its digest."""
    wf = Workflow("keyed", Keyed if keyed else Unkeyed)

    def issue_token(idempotency_key: str = "") -> SecretStr:
        return SecretStr(CANARY)

    def issue(amount: int) -> SecretStr:
        return SecretStr(CANARY)

    if effect == "idempotent":
        wf.tool(issue_token, effect="idempotent", name="issue")
    else:
        wf.tool(issue, effect=effect)
    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], initial=True, timeout=60,
            on_timeout="fetch")

    @wf.state(reads=[], writes=["token", "seen"] if keyed else ["seen"], tools=["issue"])
    async def fetch(ctx: Any, tools: Any) -> None:
        token = await tools.call("issue") if effect == "idempotent" else await tools.call("issue", amount=1)
        if crash and crash.pop():
            raise Crash
        if keyed:
            ctx.token = token
        ctx.seen = hashlib.sha256(token.get_secret_value().encode()).hexdigest()

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("approve", "fetch")
    wf.transition("fetch", "done")
    if effect == "at_most_once":
        wf.on_error("fetch", EffectOutcomeUnknown, "failed")
    return wf.compile()


@pytest.mark.parametrize("effect", ["read", "idempotent", "at_most_once"])
def test_a_secret_a_tool_returns_is_journaled_encrypted_and_read_back_after_a_crash(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, effect: str) -> None:
    """A tool returns a SecretStr; the process dies right after the call; the run is woken by
    ``wake_due`` and resumed. The resumed step (journal answer for idempotent and at_most_once,
    a new call for read) and the replay see the real value, never the mask; the canary is in no
    store file (``-intents`` included), log line at DEBUG, event or result dict."""
    caplog.set_level(logging.DEBUG, logger="statemachine_agent")
    events: list[Any] = []
    compiled = token_flow(effect, [True])
    clock = FakeClock(0.0)
    db = tmp_path / "runs.db"
    expected = hashlib.sha256(CANARY.encode()).hexdigest()
    outputs: list[str] = []
    with SQLiteStore(db, secrets=FernetSecrets(FernetSecrets.generate_key())) as store:
        assert compiled.run_sync(Keyed(), store=store, run_id="k", clock=clock).waiting == "approval"
        clock.advance(61)
        with pytest.raises(Crash):
            compiled.wake_due_sync(store, clock=clock, hooks=[events.append])
        done = compiled.resume_sync("k", store=store, clock=clock, hooks=[events.append])
        assert (done.terminal, done.context.seen) == ("done", expected)
        assert done.context.token.get_secret_value() == CANARY
        report = compiled.replay_sync("k", store=store)
        assert report.ok, str(report)
        outputs += [str(report), json.dumps(done.to_dict(), default=str), repr(done)]
        outputs.append(repr(store.load("k").result()))
        files = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    outputs += [repr(e) for e in events] + [f"{r.getMessage()} {r.args!r}" for r in caplog.records]
    files += b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert CANARY.encode() not in files
    assert not [o for o in outputs if CANARY in o]


def test_a_secret_result_without_a_codec_is_refused_naming_the_tool(tmp_path: Path) -> None:
    """Without a codec the store could only keep the mask: the call's result is refused with a
    ToolResultError naming the tool, and the run fails instead of going on with the mask."""
    compiled = token_flow("read", [], keyed=False)
    clock = FakeClock(0.0)
    with SQLiteStore(tmp_path / "runs.db") as store:
        compiled.run_sync(Unkeyed(), store=store, run_id="k", clock=clock)
        clock.advance(61)
        [failed] = compiled.wake_due_sync(store, clock=clock)  # the unrouted error ended the run
        assert isinstance(failed.error, ToolResultError) and failed.terminal == "failed"
        stored = store.load("k").result()
    last = stored.steps[-1]
    assert (stored.run.terminal, last.error_type) == ("failed", ToolResultError.__name__)
    assert "'issue'" in (last.error or "") and "codec" in (last.error or "")
    assert CANARY not in str(stored)


# --- wake-ups -----------------------------------------------------------------------------------------
class Named(Context):
    name: str = ""
    approval: Approval | None = None
    done: bool = False


def fragile_flow() -> Any:
    """approve (wait, timeout 60 s into ``work``) -> work (raises ValueError, routed nowhere, for
    runs named ``bad*``) -> done."""
    wf = Workflow("fragile", Named)
    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], initial=True, timeout=60,
            on_timeout="work")

    @wf.state(reads=["name"], writes=["done"])
    def work(ctx: Named) -> None:
        if ctx.name.startswith("bad"):
            raise ValueError(f"{ctx.name} cannot work")
        ctx.done = True

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("approve", "work")
    wf.transition("work", "done")
    return wf.compile()


def test_wake_due_goes_on_with_the_other_runs_when_one_raises_an_unrouted_error() -> None:
    """One woken run's state raises an error no transition routes (the run ends in ``failed``): the
    same ``wake_due`` still wakes every other due run, and returns each result."""
    compiled = fragile_flow()
    clock = FakeClock(0.0)
    names = ["bad-1", "good-1", "bad-2", "good-2"]
    with MemoryStore() as store:
        for name in names:
            assert compiled.run_sync(Named(name=name), store=store, run_id=name, clock=clock).waiting
        clock.advance(61)
        results = compiled.wake_due_sync(store, clock=clock)
        stored = {n: store.load(n).result().run for n in names}
    assert sorted((r.run_id, r.terminal) for r in results) == [
        ("bad-1", "failed"), ("bad-2", "failed"), ("good-1", "done"), ("good-2", "done")]
    assert {n: (r.status, r.terminal) for n, r in stored.items()} == {
        n: (RunStatus.DONE, "failed" if n.startswith("bad") else "done") for n in names}


# --- replay over drawn workflows ----------------------------------------------------------------------
class Script(Context):
    i: int = 0
    log: list[str] = Field(default_factory=list)
    go: Approval | None = None


OPS = st.sampled_from(["read", "read!", "idem", "idem!", "amo", "amo!", "amo-crash", "model", "model!"])


def script_flow(script: list[list[str]], reconcile: str, *, swap: bool = False) -> Any:
    """``act`` runs visit ``i``'s ops (``!``: the call fails once with LookupError, routed to
    ``recover``; ``amo-crash``: the process dies once inside the at_most_once call, after its
    effect), then waits at ``gate`` (event or 60 s timeout) before the next visit. ``reconcile``:
    the at_most_once tool has none (the unknown route), one that answers, or one that raises
    (LookupError, routed). ``swap``: the same code with each visit's calls in reverse order."""
    failed: set[tuple[int, int]] = set()
    wf = Workflow("scripted", Script)

    def once(i: int, k: int) -> bool:
        if (i, k) in failed:
            return False
        failed.add((i, k))
        return True

    def look(i: int, k: int) -> str:
        if script[i][k].endswith("!") and once(i, k):
            raise LookupError(f"look {i} {k}")
        return f"look {i} {k}"

    def bump(i: int, k: int, idempotency_key: str) -> str:
        if script[i][k].endswith("!") and once(i, k):
            raise LookupError(f"bump {i} {k}")
        return f"bump {i} {k}"

    def settle(arguments: dict[str, Any], key: str) -> str:
        if reconcile == "raise":
            raise LookupError(f"no record of {key}")
        return f"settled {arguments['i']} {arguments['k']}"

    def pay(i: int, k: int) -> str:
        if script[i][k] == "amo!" and once(i, k):
            raise LookupError(f"pay {i} {k}")
        if script[i][k] == "amo-crash" and once(i, k):
            raise Crash
        return f"pay {i} {k}"

    wf.tool(look)
    wf.tool(bump, effect="idempotent")
    wf.tool(pay, effect="at_most_once", reconcile=None if reconcile == "none" else settle)

    @wf.state(initial=True, reads=["i", "log"], writes=["i", "log"], tools=["look", "bump", "pay"], max_visits=60)
    async def act(ctx: Script, tools: Any) -> None:
        ops = list(enumerate(script[ctx.i]))
        for k, op in reversed(ops) if swap else ops:
            if op.startswith("read"):
                out = await tools.call("look", i=ctx.i, k=k)
            elif op.startswith("idem"):
                out = await tools.call("bump", i=ctx.i, k=k)
            elif op.startswith("amo"):
                out = await tools.call("pay", i=ctx.i, k=k)
            else:
                async def model(i: int = ctx.i, k: int = k, fail: bool = op.endswith("!")) -> Any:
                    if fail and once(i, k):
                        raise LookupError(f"model {i} {k}")
                    return {"text": f"model {i} {k}"}
                out = (await tools.journaled("model:test", model))["text"]
            ctx.log.append(out)
        ctx.i += 1

    wf.wait("gate", event="go", payload=Approval, writes=["go"], timeout=60, on_timeout="act")

    @wf.state(reads=[], writes=[], max_visits=60)
    def recover(ctx: Script) -> None:
        pass

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("act", "done", guard=lambda c: c.i >= len(script))
    wf.transition("act", "gate")
    wf.transition("gate", "act", max_traversals=60)
    wf.transition("recover", "act", max_traversals=60)
    wf.on_error("act", LookupError, "recover")
    wf.on_error("act", EffectOutcomeUnknown, "recover")
    return wf.compile()


@settings(max_examples=25, deadline=None)
@example(script=[["read", "amo-crash"], ["model!", "idem"]], reconcile="none", delivers=[False, True, True])
@example(script=[["amo-crash", "model"]], reconcile="answer", delivers=[True, True, True])
@example(script=[["idem", "amo-crash"], ["amo!"]], reconcile="raise", delivers=[False, False, False])
@given(script=st.lists(st.lists(OPS, min_size=1, max_size=3), min_size=1, max_size=3),
       reconcile=st.sampled_from(["none", "answer", "raise"]), delivers=st.lists(st.booleans(), min_size=3,
                                                                                  max_size=3))
def test_replay_of_drawn_runs_never_diverges_and_a_swapped_call_order_is_named(
        script: list[list[str]], reconcile: str, delivers: list[bool]) -> None:
    """Runs of drawn scripts (read, idempotent and at_most_once tools, model calls through
    ``tools.journaled``, each maybe failing once and routed, at_most_once calls interrupted by a
    crash with and without ``reconcile``, waits taken by an event or by a timeout woken by
    ``wake_due``) replay with unchanged code without divergence; the same code calling a step's
    tools in another order diverges, as a NondeterminismError naming the step and the call."""
    compiled = script_flow(script, reconcile)
    clock = FakeClock(0.0)
    with MemoryStore() as store:
        result = resume_loop(lambda: compiled.run_sync(Script(), store=store, run_id="s", clock=clock),
                             lambda: compiled.resume_sync("s", store=store, clock=clock))
        for deliver in delivers * 4:
            if result.waiting is None:
                break
            if deliver:
                nxt = lambda: compiled.deliver_sync("s", "go", {"ok": True}, store=store, clock=clock)  # noqa: E731
            else:
                clock.advance(61)
                nxt = lambda: compiled.wake_due_sync(store, clock=clock)[0]  # noqa: E731
            result = resume_loop(nxt, lambda: compiled.resume_sync("s", store=store, clock=clock))
        assert result.terminal == "done", result
        report = compiled.replay_sync("s", store=store)
        assert report.ok, str(report)
        assert report.matched == report.recorded == len(result.path)
        stored = store.load("s").result()
        swapped = script_flow(script, reconcile, swap=True).replay_sync("s", store=store)
    first = [c.tool for c in stored.calls if c.step == 0]
    if len(set(first)) > 1 and list(reversed(first)) != first and stored.steps[0].error is None:
        assert swapped.diverged_at == 0 and swapped.call == 0, str(swapped)
        error = swapped.error
        assert isinstance(error, NondeterminismError) and (error.step, error.call) == (0, 0)
        assert "step 0 call 0" in str(error)


def resume_loop(first: Any, again: Any) -> Any:
    """``first()``, then ``again()`` after every simulated crash."""
    try:
        return first()
    except Crash:
        pass
    for _ in range(10):
        try:
            return again()
        except Crash:
            continue
    raise AssertionError("did not finish in 10 resumes")


def test_a_delivery_under_a_workflow_the_waiting_run_does_not_fit_stores_nothing() -> None:
    """``deliver`` with a changed workflow the waiting run cannot continue under (its wait state
    renamed) raises IncompatibleRun before the event is committed: the inbox stays empty, so the
    delivery made again with the right workflow is the run's only event."""
    effects: list[str] = []
    compiled = approval_flow(effects)
    wf = Workflow("adv", Order)
    wf.wait("confirm", event="approval", payload=Approval, writes=["approval"], initial=True)

    @wf.state(reads=["approval"], writes=["receipt"])
    def pay(ctx: Order) -> None:
        ctx.receipt = "other"

    wf.terminal("done")
    wf.terminal("unknown", outcome="failure")
    wf.transition("confirm", "pay")
    wf.transition("pay", "done")
    changed = wf.compile()
    with MemoryStore() as store:
        assert compiled.run_sync(Order(), store=store, run_id="r").waiting == "approval"
        with pytest.raises(IncompatibleRun, match=r"(?s)deliver takes no migrate=.*'approve'"):
            changed.deliver_sync("r", "approval", {"ok": False}, store=store)
        assert store.load("r").result().inbox == []
        done = compiled.deliver_sync("r", "approval", {"ok": True}, store=store)
        stored = store.load("r").result()
    assert (done.terminal, done.context.approval, effects) == ("done", Approval(ok=True), ["r"])
    assert [(e.payload, e.consumed_step) for e in stored.inbox] == [({"ok": True}, 0)]


@pytest.mark.parametrize("other", ["no codec", "another key"])
def test_a_journaled_secret_result_that_does_not_open_is_refused_before_the_run_is_claimed(
        tmp_path: Path, other: str) -> None:
    """After a crash right after an idempotent call that returned a secret, resuming (or replaying)
    through a store without the codec, or with another key, raises SecretUnreadable before anything
    changes: the run is not claimed and does not end in failure; the right key then finishes it."""
    compiled = token_flow("idempotent", [True], keyed=False)
    clock = FakeClock(0.0)
    db = tmp_path / "runs.db"
    key = FernetSecrets.generate_key()
    with SQLiteStore(db, secrets=FernetSecrets(key)) as store:
        compiled.run_sync(Unkeyed(), store=store, run_id="k", clock=clock)
        clock.advance(61)
        with pytest.raises(Crash):
            compiled.wake_due_sync(store, clock=clock)
        before = store.load("k").result().run
    codec = None if other == "no codec" else FernetSecrets(FernetSecrets.generate_key())
    with SQLiteStore(db, secrets=codec) as wrong:
        with pytest.raises(SecretUnreadable, match="'issue'"):
            compiled.resume_sync("k", store=wrong, clock=clock)
        with pytest.raises(SecretUnreadable, match="'issue'"):
            compiled.replay_sync("k", store=wrong)
        after = wrong.load("k").result().run
    assert (after.status, after.epoch, after.next_step) == (before.status, before.epoch, before.next_step)
    with SQLiteStore(db, secrets=FernetSecrets(key)) as store:
        done = compiled.resume_sync("k", store=store, clock=clock)
    assert (done.terminal, done.context.seen) == ("done", hashlib.sha256(CANARY.encode()).hexdigest())


def test_a_bad_option_to_wake_due_or_deliver_raises_before_the_run_is_claimed() -> None:
    """A bad option fails every run the same way: ``wake_due`` and ``deliver`` raise the error
    naming it before claiming anything (or committing the event), and the runs stay waiting for a
    call with good options, not stored as running with no worker."""
    compiled = fragile_flow()
    clock = FakeClock(0.0)
    with MemoryStore() as store:
        for name in ("good-1", "good-2", "good-3"):
            compiled.run_sync(Named(name=name), store=store, run_id=name, clock=clock)
        with pytest.raises(ValueError, match="max_steps"):
            compiled.deliver_sync("good-3", "approval", {"ok": True}, store=store, clock=clock, max_steps="many")
        assert store.load("good-3").result().inbox == []
        clock.advance(61)
        with pytest.raises(ValueError, match="max_steps"):
            compiled.wake_due_sync(store, clock=clock, max_steps="many")
        assert {r.status for r in compiled.runs(store)} == {RunStatus.WAITING}
        assert [r.terminal for r in compiled.wake_due_sync(store, clock=clock)] == ["done", "done", "done"]
