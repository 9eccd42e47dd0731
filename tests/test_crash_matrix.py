"""The crash matrix: durable runs killed with SIGKILL at every kind of point, then resumed.

tests/crash_worker.py runs one workflow (fetch -> charge_card -> notify -> tally, twice: a read,
an idempotent and an at_most_once tool) in a process of its own and kills itself where its
schedule says: around a journal intent, inside a tool after its effect, around a journal outcome,
inside a step's commit transaction, right after a commit, in the middle of an action. A schedule
is one kill point per launch; the run is launched again, each time in a fresh process, until a
launch ends normally. Between launches the store is read from a *copy* of its files (the
database and its WAL, as the killed process left them), so that reading never checkpoints or
changes what the next launch finds.

What every run is checked for (the guarantees of docs/durability.md):

* G1: a committed step is never lost: every image after a kill holds the steps committed before it,
  the step a ``step_committed`` kill followed included, and the run's context there equals the
  crash-free run's context at that step;
* G2: uncommitted writes are never visible: a step killed inside its commit transaction, a journal
  row killed before its commit and an action killed between two writes leave nothing behind;
* G3: a journaled call is never executed again: a key with a DONE row (or of a committed step)
  never gains an effect line in a later launch;
* G4: an interrupted read or idempotent call runs again with the same key, an interrupted
  at_most_once call never: it ends in the route for EffectOutcomeUnknown;
* G6: the run stays within the checker's bound (``compiled.max_steps``) across resumes, and a
  step restarted more than ``max_step_restarts`` times fails the run.

G5 (one committer per step) is the two-process test at the end.

The store lives in /dev/shm when there is one: a kill -9 loses no page cache, so durability
against it does not depend on fsync, and a RAM disk spares each launch its fsync waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from crash_worker import KINDS, LOOPS, STATE_TOOL, TOOLS, Job, build
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachine_agent.runner import run_blocking
from statemachine_agent.stores import CallStatus, RunStatus, SQLiteStore

WORKER = Path(__file__).with_name("crash_worker.py")
RUN = "r"
LAUNCH_TIMEOUT = 120.0  # a safety net only: a launch takes well under a second
KILLED = -signal.SIGKILL
FENCED = 3
MAX_STEP_RESTARTS = 3
STALE_REOPEN = (
    "statemachine_agent/_durable.py reopen(): the state, context and counters of the resumed run come from "
    "the load made before store.claim(), its path and next step from the claim: a step another worker "
    "commits between the two is run again under the next number (its tool calls too, with new keys)")


def scratch() -> Path:
    """A fresh directory for one example (Hypothesis and the tmp_path fixture do not mix)."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="sma-crash-", dir=base))


# --- the reference: the same workflow, crash-free, in this process -----------------------------
@dataclass(frozen=True)
class Reference:
    max_steps: int
    path: list[tuple[str, str, str, str]]
    """(state, target, transition, kind) of every step."""
    before: list[dict[str, Any]]
    """The context's JSON before each step, and after the last (index len(path))."""
    keys: dict[str, tuple[str, int]]
    """The call key of every tool call, with its tool and step."""
    terminal: str


def _reference() -> Reference:
    effects: list[tuple[str, str, int]] = []
    compiled = build(RUN, effect=lambda tool, key, step: effects.append((tool, key, step)))
    run = compiled.start(Job(), run_id=RUN)
    before = [run.context.model_dump(mode="json")]
    path = []

    async def drive() -> None:
        async for step in run:
            path.append((step.state, step.target, step.transition, str(step.kind)))
            before.append(run.context.model_dump(mode="json"))

    run_blocking(drive())
    assert run.result is not None
    return Reference(compiled.max_steps, path, before, {key: (tool, step) for tool, key, step in effects},
                     run.result.terminal)


REF = _reference()


def test_the_reference_run_is_what_the_matrix_assumes() -> None:
    """The crash-free run: 8 steps, one call per tool state, each key named after its step."""
    assert REF.terminal == "done"
    assert len(REF.path) == 4 * LOOPS
    assert REF.max_steps >= len(REF.path)
    assert sorted(REF.keys) == sorted(f"{RUN}/{s}/0" for s, (st_, *_) in enumerate(REF.path) if st_ in STATE_TOOL)
    for key, (tool, step) in REF.keys.items():
        assert STATE_TOOL[REF.path[step][0]] == tool and key == f"{RUN}/{step}/0"


# --- launching the worker ----------------------------------------------------------------------
@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def kill(self) -> dict[str, Any] | None:
        """Where the worker killed itself (its last ``KILL`` line), if it did."""
        notes = [line[5:] for line in self.stderr.splitlines() if line.startswith("KILL ")]
        return json.loads(notes[-1]) if notes else None

    @property
    def result(self) -> dict[str, Any]:
        return json.loads(self.stdout.strip().splitlines()[-1])


Launcher = Callable[[list[str]], Outcome]


def exec_launch(argv: list[str]) -> Outcome:
    """A new interpreter per launch: ``python tests/crash_worker.py ...``."""
    proc = subprocess.run([sys.executable, str(WORKER), *argv], capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT, check=False)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


class ForkServer:
    """``crash_worker.py --serve``: a fresh forked process per launch, without paying the imports
    each time (the Hypothesis matrix launches hundreds of processes)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(WORKER), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.dir = scratch()
        self.n = 0

    def __call__(self, argv: list[str]) -> Outcome:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.n += 1
        out, err = self.dir / f"{self.n}.out", self.dir / f"{self.n}.err"
        self.proc.stdin.write(json.dumps({"argv": argv, "out": str(out), "err": str(err)}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], LAUNCH_TIMEOUT)
        assert ready, f"the fork server did not answer within {LAUNCH_TIMEOUT} s"
        line = self.proc.stdout.readline()
        assert line, f"the fork server died (exit {self.proc.wait()})"
        outcome = Outcome(json.loads(line)["returncode"], out.read_text(), err.read_text())
        out.unlink()
        err.unlink()
        return outcome

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=LAUNCH_TIMEOUT)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def forks() -> Iterator[ForkServer]:
    server = ForkServer()
    yield server
    server.close()


# --- what a launch left behind -------------------------------------------------------------------
@dataclass
class Image:
    """The store (read from a copy of its files) and the effect log after a launch."""

    status: RunStatus
    next_step: int
    epoch: int
    restarts: int
    steps: list[Any]
    calls: dict[tuple[int, int], Any]
    context: dict[str, Any]
    counters: Any
    max_steps: int
    effects: Counter[str] = field(default_factory=Counter)

    def done_keys(self) -> set[str]:
        return {c.key for c in self.calls.values() if c.status is CallStatus.DONE}

    def frozen_keys(self) -> set[str]:
        """Keys no later launch may run again: journaled DONE, or of a step already committed."""
        return self.done_keys() | {k for k, (_, step) in REF.keys.items() if step < self.next_step}


def read_effects(path: Path) -> tuple[Counter[str], list[tuple[str, str, int]]]:
    lines = []
    if path.exists():
        for line in path.read_text().splitlines():
            tool, key, step = line.split()
            lines.append((tool, key, int(step)))
    return Counter(key for _, key, _ in lines), lines


def read_image(db: Path, effects: Path) -> Image | None:
    """The store as the last launch left it, read from a copy (reading never changes the original)."""
    if not db.exists():
        return None
    copy = Path(tempfile.mkdtemp(dir=db.parent)) / db.name
    try:
        for suffix in ("", "-wal"):
            src = Path(str(db) + suffix)
            if src.exists():
                shutil.copyfile(src, str(copy) + suffix)
        conn = sqlite3.connect(copy)
        try:
            if conn.execute("SELECT count(*) FROM sma_runs WHERE run_id=?", (RUN,)).fetchone()[0] == 0:
                return None
            numbers = [r[0] for r in conn.execute("SELECT number FROM sma_steps WHERE run_id=? ORDER BY number",
                                                  (RUN,))]
        finally:
            conn.close()
        with SQLiteStore(copy) as store:
            stored = store.load(RUN).result()
    finally:
        shutil.rmtree(copy.parent)
    assert numbers == list(range(stored.run.next_step)), f"step rows {numbers}, next_step {stored.run.next_step}"
    r = stored.run
    return Image(r.status, r.next_step, r.epoch, r.restarts, stored.steps, {(c.step, c.call): c for c in stored.calls},
                 stored.context, r.counters, r.max_steps, read_effects(effects)[0])


@dataclass
class Launch:
    schedule: list[dict[str, Any]]
    pre: Image | None
    outcome: Outcome
    post: Image | None


def drive(schedule: list[dict[str, Any]], launch: Launcher, where: Path) -> list[Launch]:
    """Launch the worker with each kill point in turn, then without, until a launch ends normally."""
    db, effects = where / "runs.db", where / "effects.log"
    launches: list[Launch] = []
    pre = None
    for i in range(len(schedule) + 1):
        mine = schedule[i:i + 1]
        outcome = launch([str(db), str(effects), RUN, json.dumps(mine)])
        post = read_image(db, effects)
        launches.append(Launch(mine, pre, outcome, post))
        if outcome.returncode == 0:
            return launches
        assert outcome.returncode == KILLED and outcome.kill is not None, (
            f"launch {i} (kill point {mine}) exited {outcome.returncode}:\n{outcome.stderr[-3000:]}")
        assert outcome.kill["at"] == mine[0]["at"]
        pre = post
    raise AssertionError(f"the run did not end after {len(launches)} launches: {schedule}")


# --- the checks ----------------------------------------------------------------------------------
def ref_step(s: Any) -> tuple[str, str, str, str]:
    return (s.state, s.target, s.transition, s.kind)


def expected_end(launches: list[Launch]) -> tuple[str, int]:
    """Which terminal the run must end in, and at which step: decided by the store as the launch
    that committed the terminal step found it."""
    t = next(i for i, la in enumerate(launches) if la.post is not None and la.post.status is RunStatus.DONE)
    pre = launches[t].pre
    if pre is None:
        return REF.terminal, len(REF.path)
    k = pre.next_step
    if pre.restarts + 1 > MAX_STEP_RESTARTS:
        return "failed", k
    intent = pre.calls.get((k, 0))
    if intent is not None and intent.status is CallStatus.INTENT:
        return "unknown", k
    return REF.terminal, len(REF.path)


def check_image(image: Image) -> None:
    """A running run's image: a prefix of the crash-free run, with its context (G1, G2)."""
    n = image.next_step
    assert [ref_step(s) for s in image.steps] == REF.path[:n]
    assert image.context == REF.before[n], f"context at step {n}"
    assert image.counters.actions_run == n <= REF.max_steps
    assert image.max_steps == REF.max_steps
    for (step, call), c in image.calls.items():
        tool, ref_step_of_key = REF.keys[c.key]
        assert (c.tool, c.step, c.call, c.effect) == (tool, ref_step_of_key, 0, TOOLS[tool])
        assert (step, call) == (c.step, c.call)
        if step < n:
            assert c.status is CallStatus.DONE, f"a committed step's call {c.key} is {c.status}"
        else:
            assert step == n, f"journal row {c.key} beyond the next step {n}"


def check_kill(la: Launch) -> None:
    """What the kill point says was (not) committed is what the store holds (G1, G2)."""
    note, post = la.outcome.kill, la.post
    assert note is not None and post is not None
    start = 0 if la.pre is None else la.pre.next_step
    at, n = note["at"], note["n"]
    if at == "step_uncommitted":
        assert note["step"] == start + n - 1 == post.next_step, note
    elif at == "step_committed":
        assert note["step"] + 1 == start + n == post.next_step, note
    elif at in ("intent_uncommitted", "intent_committed", "outcome_uncommitted", "outcome_committed"):
        row = post.calls.get((note["step"], note["call"]))
        status = None if row is None else row.status
        assert post.next_step == note["step"]
        if at == "intent_uncommitted":
            assert status is None
        elif at == "intent_committed":
            assert status is CallStatus.INTENT
        elif at == "outcome_uncommitted":
            assert status is (CallStatus.INTENT if TOOLS[note["tool"]] == "at_most_once" else None)
        else:
            assert status is CallStatus.DONE
    elif at == "effect":
        assert post.next_step == note["step"] and note["key"] not in post.done_keys()
    else:
        assert at == "mid_action"
        assert REF.path[post.next_step][0] == note["tool"], (note, post.next_step)


def check_run(launches: list[Launch]) -> dict[str, Any]:
    """Every guarantee over one schedule's launches; the facts the table test asserts on."""
    final = launches[-1]
    assert final.outcome.returncode == 0 and final.post is not None
    terminal, k = expected_end(launches)
    result = final.outcome.result
    image = final.post
    # The end: the crash-free run's, or the routes a crash may force.
    assert image.status is RunStatus.DONE and result["terminal"] == terminal, (terminal, result["reason"])
    n = len(image.steps)
    assert n == k + (terminal != REF.terminal)
    assert [ref_step(s) for s in image.steps[:k]] == REF.path[:k]
    if terminal == REF.terminal:
        assert result["context"] == image.context == REF.before[-1]
    else:
        last = image.steps[-1]
        assert result["context"] == image.context == REF.before[k]
        if terminal == "unknown":
            assert (last.state, last.target, last.kind, last.error_type) == (
                "notify", "unknown", "error", "EffectOutcomeUnknown")
        else:
            assert (last.state, last.kind, last.ran) == (REF.path[k][0], "fail", False)
            assert f"max_step_restarts={MAX_STEP_RESTARTS}" in (result["reason"] or "")
    assert [[s.number, s.state, s.target, s.transition, s.kind, s.ran] for s in image.steps] == result["path"]
    # G6: within the bound, across resumes.
    assert image.counters.actions_run == sum(s.ran for s in image.steps) <= REF.max_steps
    assert n <= REF.max_steps + 1 and image.max_steps == REF.max_steps
    assert image.counters.traversals.get("tally_to_fetch", 0) <= LOOPS - 1
    # Per launch: images, kill points, restarts, epochs, effects.
    counts: Counter[str] = Counter()
    interrupted: Counter[str] = Counter()
    for i, la in enumerate(launches):
        pre, post = la.pre, la.post
        assert post is not None
        before = Counter() if pre is None else pre.effects
        delta = post.effects - before
        assert all(v == 1 for v in delta.values()), f"launch {i} ran a call twice: {delta}"
        if post.status is RunStatus.RUNNING:
            check_image(post)
        if la.outcome.returncode == KILLED:
            check_kill(la)
        if pre is None:
            assert post.restarts == 0 and post.epoch == 1
        elif pre.status is RunStatus.DONE:  # resuming an ended run changes nothing
            assert (post.epoch, post.restarts, post.next_step) == (pre.epoch, pre.restarts, pre.next_step)
        else:
            assert post.epoch == pre.epoch + 1  # each resume claims the run
            committed = post.next_step > pre.next_step
            assert post.restarts == (0 if committed else pre.restarts + 1), (i, pre.restarts, post.restarts)
        if pre is not None:
            frozen = pre.frozen_keys()
            assert not frozen & set(delta), f"G3: launch {i} ran journaled calls {frozen & set(delta)} again"
            intents = {c.key for c in pre.calls.values() if c.status is CallStatus.INTENT}
            assert not intents & set(delta), f"G4: launch {i} ran at_most_once calls {intents & set(delta)} again"
        for key in delta:
            tool, _ = REF.keys[key]  # every effect is a call the crash-free run makes, with its key
            counts[key] += 1
            if key not in post.frozen_keys():
                interrupted[key] += 1
    effects = image.effects
    assert effects == counts
    done = image.done_keys()
    for key in done:
        assert effects[key] == 1 + interrupted[key], f"{key}: ran {effects[key]}, interrupted {interrupted[key]}"
    for key, (tool, _) in REF.keys.items():
        if TOOLS[tool] == "at_most_once":
            assert effects[key] <= 1, f"G4: at_most_once call {key} ran {effects[key]} times"
            if effects[key] and key not in done:
                assert terminal in ("unknown", "failed"), f"{key} was interrupted, yet the run ended {terminal}"
    ran_calls = {f"{RUN}/{s.number}/0" for s in image.steps if s.ran and s.state in STATE_TOOL
                 and s.kind == "transition"}
    assert done == ran_calls, (done, ran_calls)
    return {"terminal": terminal, "effects": effects, "interrupted": interrupted, "launches": len(launches),
            "kills": [la.outcome.kill for la in launches if la.outcome.kill]}


# --- the matrix -----------------------------------------------------------------------------------
def point(at: str, n: int, tool: str | None = None) -> dict[str, Any]:
    return {"at": at, "n": n, "tool": tool}


kill_points = st.one_of(
    st.builds(point, st.sampled_from(["step_uncommitted", "step_committed"]), st.integers(1, 4 * LOOPS)),
    st.builds(point, st.just("mid_action"), st.integers(1, 4 * LOOPS)),
    st.builds(point, st.just("effect"), st.integers(1, LOOPS), st.sampled_from(sorted(TOOLS))),
    st.builds(point, st.sampled_from(["intent_uncommitted", "intent_committed"]), st.integers(1, LOOPS),
              st.just("send")),
    st.builds(point, st.sampled_from(["outcome_uncommitted", "outcome_committed"]), st.integers(1, LOOPS),
              st.sampled_from(["charge", "send"])),
)

MATRIX: Counter[str] = Counter()
"""What the matrix covered, for its report (printed with -s)."""


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(schedule=st.lists(kill_points, min_size=1, max_size=4))
def test_crash_matrix(forks: ForkServer, schedule: list[dict[str, Any]]) -> None:
    """Any schedule of 1..4 kill -9s, one per launch: the run ends as the crash-free run does (or in
    the route a crash forces), and G1-G4 and G6 hold at every launch."""
    where = scratch()
    try:
        facts = check_run(drive(schedule, forks, where))
    finally:
        shutil.rmtree(where, ignore_errors=True)
    MATRIX["examples"] += 1
    MATRIX["launches"] += facts["launches"]
    MATRIX[f"terminal {facts['terminal']}"] += 1
    for kill in facts["kills"]:
        MATRIX[f"kill {kill['at']}" + (f" {kill['tool']}" if kill["tool"] else "")] += 1


def test_crash_matrix_coverage() -> None:
    """The matrix above fired every kind of kill point and reached every ending (run it with -s to
    see the counts)."""
    if not MATRIX:
        pytest.skip("run together with test_crash_matrix")
    print("\ncrash matrix:", dict(sorted(MATRIX.items())))
    for kind in KINDS:
        assert any(k.startswith(f"kill {kind}") for k in MATRIX), f"no kill at {kind}"
    assert {"terminal done", "terminal unknown"} <= set(MATRIX)


# --- the table: each kill point at least once, with a new interpreter per launch -----------------
TABLE = [
    # (schedule, expected terminal, expected effect counts beyond one per key)
    ([point("intent_uncommitted", 1, "send")], "done", {}),
    ([point("intent_committed", 1, "send")], "unknown", {}),
    ([point("intent_committed", 2, "send")], "unknown", {}),
    ([point("effect", 1, "send")], "unknown", {}),
    ([point("outcome_uncommitted", 1, "send")], "unknown", {}),
    ([point("outcome_committed", 2, "send")], "done", {}),
    ([point("effect", 2, "lookup")], "done", {"r/4/0": 2}),
    ([point("effect", 1, "charge"), point("effect", 1, "charge")], "done", {"r/1/0": 3}),
    ([point("outcome_uncommitted", 1, "charge")], "done", {"r/1/0": 2}),
    ([point("outcome_committed", 1, "charge")], "done", {}),
    ([point("step_uncommitted", 1)], "done", {"r/0/0": 2}),
    ([point("step_uncommitted", 3)], "done", {}),  # step 2 (notify): its send's DONE row stands, it is not re-run
    ([point("step_uncommitted", 8)], "done", {}),
    ([point("step_committed", 3), point("step_committed", 5)], "done", {}),
    ([point("step_committed", 8)], "done", {}),  # the terminal step: the next launch finds the run done
    ([point("mid_action", 1)], "done", {"r/0/0": 2}),
    ([point("mid_action", 4)], "done", {}),  # the 4th action is step 3's tally
    ([point("mid_action", 2, "tally")], "done", {}),  # the last step's action
    ([point("mid_action", 1, "notify")], "done", {}),
    ([point("mid_action", 1)] * 3, "done", {"r/0/0": 4}),  # 3 restarts of step 0: within the budget
    ([point("step_uncommitted", 1)] * 4, "failed", {"r/0/0": 4}),  # the 4th restart fails the run
]


@pytest.mark.parametrize(("schedule", "terminal", "extra"), TABLE,
                         ids=[" ".join(f"{p['at']}#{p['n']}{'@' + p['tool'] if p['tool'] else ''}" for p in s)
                              for s, _, _ in TABLE])
def test_crash_table(tmp_path: Path, schedule: list[dict[str, Any]], terminal: str, extra: dict[str, int]) -> None:
    """Each kill point, fired for sure, with a new interpreter per launch (no fork server): the run
    ends in ``terminal`` and only the listed calls ran more than once, always with the same key."""
    launches = drive(schedule, exec_launch, tmp_path)
    assert [la.outcome.kill is not None for la in launches] == [True] * len(schedule) + [False]
    facts = check_run(launches)
    assert facts["terminal"] == terminal
    assert {k: v for k, v in facts["effects"].items() if v != 1} == extra


def test_the_table_covers_every_kill_point() -> None:
    """Every kind of kill point, and every tool's effect, is in the table at least once."""
    covered = {p["at"] for s, _, _ in TABLE for p in s}
    assert covered == set(KINDS)
    assert {p["tool"] for s, _, _ in TABLE for p in s if p["at"] == "effect"} == set(TOOLS)
    assert {t for _, t, _ in TABLE} == {"done", "unknown", "failed"}


# --- G5: two workers resume the same run at once ------------------------------------------------
def race(where: Path, setup: dict[str, Any]) -> tuple[list[Outcome], list[list[tuple[int, int]]], Image]:
    """Stop a run at ``setup``, then resume it from two processes released together."""
    db, effects = where / "runs.db", where / "effects.log"
    first = exec_launch([str(db), str(effects), RUN, json.dumps([setup])])
    assert first.returncode == KILLED, first.stderr[-3000:]
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    procs = []
    try:
        for i in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, str(WORKER), str(db), str(effects), RUN, "[]", "--commits",
                 str(where / f"commits-{i}"), "--barrier", str(ready_w), str(go_r)],
                pass_fds=(ready_w, go_r), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        os.close(ready_w)
        os.close(go_r)
        got = b""
        while len(got) < 2:  # both workers opened the store and wait: no timing involved
            chunk = os.read(ready_r, 2)
            assert chunk, "a worker died before reaching the barrier"
            got += chunk
        os.close(go_w)  # releases both at once
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=LAUNCH_TIMEOUT)
            outs.append(Outcome(p.returncode, out, err))
    finally:
        os.close(ready_r)
        with contextlib.suppress(OSError):
            os.close(go_w)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    commits = []
    for i in range(2):
        path = where / f"commits-{i}"
        lines = path.read_text().split("\n")[:-1] if path.exists() else []
        commits.append([(int(a), int(b)) for a, b in (line.split() for line in lines)])
    image = read_image(db, effects)
    assert image is not None
    return outs, commits, image


@pytest.mark.parametrize("setup", [point("step_committed", 1), point("step_committed", 2),
                                   point("step_committed", 4), point("intent_committed", 1, "send"),
                                   point("mid_action", 6)],
                         ids=["after-step-0", "after-step-1", "after-step-3", "intent-of-step-2", "mid-step-5"])
def test_two_workers_resuming_at_once_commit_each_step_once(tmp_path: Path, setup: dict[str, Any]) -> None:
    """Two processes resume one run at the same moment: every step is committed by exactly one of
    them (contiguous numbers, no duplicates), under its own epoch; the other stops with RunFenced
    or finds the run done; at_most_once calls still run at most once (G5, G3, G4)."""
    outs, commits, image = race(tmp_path, setup)
    for o in outs:
        assert o.returncode in (0, FENCED), o.stderr[-3000:]
    start = [s for s, _ in commits[0] + commits[1]]
    assert sorted(start) == list(range(min(start), image.next_step)), commits
    assert len(set(start)) == len(start), f"a step was committed twice: {commits}"
    assert [s.number for s in image.steps] == list(range(image.next_step))
    for mine in commits:  # one epoch per worker, steps in order
        assert len({e for _, e in mine}) <= 1 and [s for s, _ in mine] == sorted(s for s, _ in mine)
    if all(commits):  # both committed: under different epochs (the later claim fenced the earlier)
        assert commits[0][0][1] != commits[1][0][1]
    last = max(range(2), key=lambda i: max((s for s, _ in commits[i]), default=-1))
    loser = 1 - last
    assert outs[last].returncode == 0 and outs[last].result["terminal"] == image.steps[-1].target
    assert outs[loser].returncode == FENCED or not commits[loser], (outs[loser].stdout, commits)
    assert image.status is RunStatus.DONE
    _, lines = read_effects(tmp_path / "effects.log")
    made = Counter((tool, step) for tool, _, step in lines)  # the call each state makes, by its step
    path = [ref_step(s) for s in image.steps]
    # A resume racing another worker's commit continues after that commit (it once re-ran the step).
    assert path[:-1] == REF.path[:len(path) - 1], (path, made)
    for (tool, step), n in made.items():
        if TOOLS[tool] == "at_most_once":
            assert n == 1, f"G4: send of step {step} ran {n} times"
    if image.steps[-1].target == "done":
        assert path == REF.path and image.context == REF.before[-1]
    else:
        assert image.steps[-1].target == "unknown"
        assert image.context == REF.before[image.next_step - 1]


class ClaimAfter(SQLiteStore):
    """A store that runs ``before_claim`` (once) just before it claims: another worker's commit
    lands between resume's first load and its claim, deterministically."""

    before_claim: Callable[[], None] | None = None

    def claim(self, run_id: str) -> Any:
        hook, self.before_claim = self.before_claim, None
        if hook is not None:
            hook()
        return super().claim(run_id)


def test_a_resume_racing_another_workers_commit_continues_after_that_commit(tmp_path: Path) -> None:
    """Worker A holds the run and commits step 5 while worker B is inside resume, after its first
    load and before its claim: B must continue at step 6 from the committed state, running no
    call again, and the run must stay within the checker's bound (G3, G4, G5, G6)."""
    db = tmp_path / "runs.db"
    calls: list[tuple[str, int]] = []
    compiled = build(RUN, effect=lambda tool, key, step: calls.append((tool, step)))

    async def take(run: Any, n: int) -> None:
        for _ in range(n):
            await run.step()

    with SQLiteStore(db) as store:
        run_blocking(take(compiled.start(Job(), store=store, run_id=RUN), 5))  # steps 0..4 committed
    with SQLiteStore(db) as store_a, ClaimAfter(db) as store_b:
        a = run_blocking(compiled.reopen(RUN, store=store_a))

        def a_commits_step_5() -> None:
            thread = threading.Thread(target=lambda: run_blocking(take(a, 1)))
            thread.start()
            thread.join()

        store_b.before_claim = a_commits_step_5
        result = compiled.resume_sync(RUN, store=store_b)
    assert sorted(calls) == sorted(set(calls)), f"calls made twice: {calls}"
    assert [(s.state, s.target, s.transition, str(s.kind)) for s in result.path] == REF.path
    assert len(result.path) <= compiled.max_steps
    assert result.context.model_dump(mode="json") == REF.before[-1]
