"""Adversarial review B (issue 16, groups 3, 5, 6): damaged stores swept across every public entry
point, read-only commands on live and killed stores, and the command line under drawn argv.

The damage sweep: a real store holding a finished run, a run killed inside its at_most_once call (an
intent, no outcome), waiting runs with events in their inboxes, one of them past its deadline. Its files
are taken twice: closed (checkpointed, one file) and as a SIGKILL leaves them (main file, -wal,
-intents). Each damaged copy (bit flips, truncations, swapped and zeroed pages or frames, in any of the
files) is asked everything (load, list, claim, resume, deliver, fork, replay, wake_due, and the CLI's
runs list/show/resume/wake) by a worker process with a deadline per copy. Every answer must be the
undamaged one or a StoreError; the CLI exits 0, 1 or 2 with one line and no traceback; the
at_most_once call that has an intent never runs again; no run loads another run's data.

``ADVERSARIAL_CASES=300`` runs the full sweep (the suite samples fewer).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import re
import select
import shutil
import subprocess
import sys
import textwrap
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PAGE, WAL_HEADER, WAL_FRAME = 4096, 32, 4096 + 24
HERE = Path(__file__).resolve().parent

FLOW = textwrap.dedent('''
    import os
    from pydantic import BaseModel
    from statemachine_agent import Context, Workflow
    from statemachine_agent.errors import EffectOutcomeUnknown

    CRASH: set[str] = set()


    class Crash(BaseException):
        """Stands for the process dying inside the tool, after its effect."""


    class Approval(BaseModel):
        ok: bool


    class Job(Context):
        owner: str = ""
        approval: Approval | None = None
        sent: list[str] = []


    wf = Workflow("advflow", Job)


    async def send(owner: str) -> str:
        with open(os.environ["ADV_EFFECTS"], "a", encoding="utf-8") as f:
            f.write(f"send {owner}\\n")
        if owner in CRASH:
            raise Crash
        return "sent-" + owner


    wf.tool(send, effect="at_most_once")


    @wf.state(initial=True, reads=["owner"], writes=["owner"])
    def prep(ctx: Job) -> None:
        ctx.owner = ctx.owner or "?"


    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], timeout=60.0,
            on_timeout="expired")


    @wf.state(reads=["owner", "sent"], writes=["sent"], tools=["send"])
    async def notify(ctx: Job, tools) -> None:
        ctx.sent.append(await tools.call("send", owner=ctx.owner))


    wf.terminal("done")
    wf.terminal("expired", outcome="failure")
    wf.terminal("unknown", outcome="failure")
    wf.transition("prep", "approve")
    wf.transition("approve", "notify")
    wf.transition("notify", "done")
    wf.on_error("notify", EffectOutcomeUnknown, "unknown")
    flow = wf.compile()
''')

RUNS = ("a", "b", "c", "e")
"""c: done (sent once). b: killed inside send (intent, no outcome). a: waiting, past its deadline, an
approval in its inbox. e: waiting, deadline an hour away, an event it does not wait for in its inbox."""


# --- building the store ---------------------------------------------------------------------------
def build_store(root: Path) -> dict[str, dict[str, bytes]]:
    """The store's files, closed and as a kill leaves them (suffix -> bytes)."""
    sys.path.insert(0, str(root))
    try:
        import advflow  # type: ignore[import-not-found]

        from statemachine_agent import FakeClock
        from statemachine_agent.stores import SQLiteStore

        os.environ["ADV_EFFECTS"] = str(root / "build-effects")
        db = root / "build" / "runs.db"
        db.parent.mkdir()
        flow = advflow.flow
        with SQLiteStore(db) as store:
            flow.run_sync(advflow.Job(owner="c"), store=store, run_id="c")
            flow.deliver_sync("c", "approval", {"ok": True}, store=store)
        store = SQLiteStore(db)  # c checkpointed into the main file; the rest in the -wal
        try:
            flow.run_sync(advflow.Job(owner="a"), store=store, run_id="a", clock=FakeClock())
            store.deliver("a", "approval", {"ok": True, "note": "a's"}).result()
            late = FakeClock()
            late.advance(time.time() + 3600)
            flow.run_sync(advflow.Job(owner="e"), store=store, run_id="e", clock=late)
            store.deliver("e", "poke", {"for": "e"}).result()
            flow.run_sync(advflow.Job(owner="b"), store=store, run_id="b", clock=late)
            advflow.CRASH.add("b")
            with contextlib.suppress(advflow.Crash):
                flow.deliver_sync("b", "approval", {"ok": True}, store=store)
            advflow.CRASH.discard("b")
            killed = {s: Path(f"{db}{s}").read_bytes() for s in ("", "-wal", "-intents")}
        finally:
            store.close()
        closed = {"": db.read_bytes()}
        assert Path(f"{db}-intents").stat().st_size == 0 and not Path(f"{db}-wal").exists()
        assert (root / "build-effects").read_text() == "send c\nsend b\n"
        return {"closed": closed, "killed": killed}
    finally:
        sys.path.remove(str(root))


# --- the worker: asks one copy everything ----------------------------------------------------------
def _cli(argv: list[str]) -> dict[str, Any]:
    from statemachine_agent.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: Any = main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:
            return {"escaped": f"{type(exc).__name__}: {exc}", "tb": traceback.format_exc()[-2000:]}
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ask(db: Path) -> dict[str, Any]:
    """Every entry point on the store at ``db``: name -> {"ok": digest/summary} or {"err": type, "msg"}."""
    import advflow

    from statemachine_agent.errors import StoreError
    from statemachine_agent.stores import SQLiteStore

    answers: dict[str, Any] = {}

    def attempt(name: str, fn: Any) -> Any:
        try:
            value = fn()
        except Exception as exc:
            answers[name] = {"err": type(exc).__name__, "typed": isinstance(exc, StoreError),
                             "msg": str(exc)[:300], "tb": "" if isinstance(exc, StoreError) else
                             traceback.format_exc()[-1500:]}
            return None
        answers[name] = {"ok": value}
        return value

    store_arg = ["--store", str(db)]
    answers["cli list"] = _cli(["runs", "list", *store_arg])
    answers["cli show b"] = _cli(["runs", "show", "b", *store_arg, "--json"])
    answers["cli show a"] = _cli(["runs", "show", "a", *store_arg])
    flow = advflow.flow
    store = attempt("open", lambda: SQLiteStore(db))
    if store is not None:
        answers["open"] = {"ok": "opened"}
        try:
            for rid in RUNS:
                def load(rid: str = rid) -> Any:
                    s = store.load(rid).result()
                    return {"digest": _digest(s.model_dump(mode="json")), "run_id": s.run.run_id,
                            "owner": s.context.get("owner"), "calls": [c.key for c in s.calls],
                            "inbox": [e.payload for e in s.inbox], "status": str(s.run.status)}
                attempt(f"load {rid}", load)
            attempt("list", lambda: sorted((r.run_id, str(r.status), r.next_step) for r in store.list_runs().result()))
            attempt("replay c", lambda: flow.replay_sync("c", store=store).error is None)
            attempt("fork c", lambda: flow.fork_sync("c", at_step=2, store=store, new_run_id="c2",
                                                                    patch={"owner": "c2"}).terminal)
            delivered = attempt("deliver e", lambda: flow.deliver_sync("e", "approval", {"ok": True}, store=store))
            if delivered is not None:
                answers["deliver e"] = {"ok": delivered.terminal}
            attempt("wake", lambda: sorted((r.run_id, r.terminal) for r in flow.wake_due_sync(store)))
            attempt("resume b", lambda: flow.resume_sync("b", store=store).terminal)
            attempt("claim c", lambda: store.claim("c").result().run.status.value)
        finally:
            store.close()
    answers["cli resume b"] = _cli(["runs", "resume", "advflow:flow", "b", *store_arg])
    answers["cli wake"] = _cli(["runs", "wake", "advflow:flow", *store_arg])
    return answers


def worker() -> None:  # pragma: no cover - runs in the child
    """Read case folders on stdin, one a line; answer each with one JSON line on stdout."""
    root = Path(sys.argv[1])
    sys.path.insert(0, str(root))
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    for line in sys.stdin:
        case = Path(line.strip())
        effects = case / "effects"
        effects.write_text("")
        os.environ["ADV_EFFECTS"] = str(effects)
        try:
            answers = _ask(case / "runs.db")
        except BaseException as exc:
            answers = {"crashed": f"{type(exc).__name__}: {exc}", "tb": traceback.format_exc()[-2000:]}
        answers["effects"] = effects.read_text().split()
        real_stdout.write(json.dumps(answers, default=str) + "\n")
        real_stdout.flush()


class Worker:
    """The worker process; ``ask`` gives up after ``deadline`` seconds (a hang is a finding)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_adversarial_edges as t; t.worker()"
        return subprocess.Popen([sys.executable, "-c", code, str(self.root)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=self.root)

    def ask(self, case: Path, deadline: float = 60.0) -> dict[str, Any]:
        if self.proc is None:
            self.proc = self._start()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{case}\n".encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], deadline)
        if not ready:
            self.close()
            return {"hang": deadline}
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            return {"died": code}
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


# --- damage -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    variant: str  # "closed" or "killed"
    target: str  # "", "-wal" or "-intents"
    how: str
    files: dict[str, bytes]

    def label(self) -> str:
        return f"{self.variant}{self.target or '-db'}: {self.how}"


def damage(files: dict[str, bytes], variant: str, rng: random.Random) -> Case:
    targets = [s for s in files if files[s]]
    target = rng.choice(targets)
    data = bytearray(files[target])
    unit = WAL_FRAME if target == "-wal" else PAGE
    units = max(1, (len(data) - (WAL_HEADER if target == "-wal" else 0)) // unit)
    base = WAL_HEADER if target == "-wal" else 0
    kinds = ["flip", "flip", "flip", "truncate"] + (["swap", "zero"] if target != "-intents" else [])
    kind = rng.choice(kinds)
    if kind == "flip":
        offsets = [rng.randrange(len(data)) for _ in range(rng.randint(1, 3))]
        for at in offsets:
            data[at] ^= rng.randint(1, 255)
        how = f"flip {offsets}"
    elif kind == "truncate":
        cut = rng.randrange(len(data))
        del data[cut:]
        how = f"truncate at {cut}"
    elif kind == "swap" and units > 1:
        i, j = rng.sample(range(units), 2)
        a, b = base + i * unit, base + j * unit
        pa, pb = bytes(data[a:a + unit]), bytes(data[b:b + unit])
        data[a:a + unit], data[b:b + unit] = pb, pa
        how = f"swap {unit}-byte units {i} and {j}"
    else:
        i = rng.randrange(units)
        a = base + i * unit
        data[a:a + unit] = bytes(len(data[a:a + unit]))
        how = f"zero unit {i}"
    return Case(variant, target, how, {**files, target: bytes(data)})


def write_case(where: Path, n: int, case: Case | dict[str, bytes]) -> Path:
    d = where / f"case{n}"
    d.mkdir()
    files = case.files if isinstance(case, Case) else case
    for suffix, content in files.items():
        Path(f"{d / 'runs.db'}{suffix}").write_bytes(content)
    (d / "advflow.py").write_text(FLOW)  # the CLI imports advflow:flow from the working folder's path
    return d


# --- judging ------------------------------------------------------------------------------------------
CLI = ("cli list", "cli show b", "cli show a", "cli resume b", "cli wake")
READS = (*(f"load {r}" for r in RUNS), "list")


def problems(answers: dict[str, Any], good: dict[str, Any], case: Case) -> list[str]:
    """What is wrong with a damaged copy's answers (nothing: an empty list)."""
    if "hang" in answers or "died" in answers or "crashed" in answers:
        return [json.dumps(answers)[:2000]]
    found = []
    sent = answers["effects"]
    if "b" in sent:
        found.append("the at_most_once send of b (its intent was recorded) ran again")
    if "c" in sent:
        found.append("c's send (done) ran again")
    for name in CLI:
        a = answers[name]
        if "escaped" in a:
            found.append(f"{name}: {a['escaped']} escaped main(): {a['tb']}")
            continue
        err = a["err"]
        if a["code"] not in (0, 1, 2):
            found.append(f"{name}: exit {a['code']!r}")
        if "Traceback" in err or "Traceback" in a["out"]:
            found.append(f"{name}: a traceback: {err[-1500:]}")
        if a["code"] == 2 and err.count("\n") > 1:
            found.append(f"{name}: exit 2 with {err.count(chr(10))} lines: {err[:500]}")
        raw = {f"U+{ord(c):04X}" for c in a["out"] + err if not c.isprintable() and c != "\n"}
        if raw:
            found.append(f"{name}: raw characters {sorted(raw)}")
    for name, a in answers.items():
        if name in CLI or name == "effects" or "err" not in a:
            continue
        if not a["typed"]:
            found.append(f"{name}: untyped {a['err']}: {a['msg']}\n{a['tb']}")
        elif a["err"] == "RunNotFound" and name.startswith(("load", "resume", "deliver", "fork", "claim")):
            rid = name.split()[-1]
            # A -wal that loses commits may take a run created after the checkpoint back to before it
            # existed: never a run of the main file.
            if case.variant == "closed" or case.target == "-intents" or rid == "c":
                found.append(f"{name}: run reported missing: {a['msg']}")
    for name in READS:
        a = answers.get(name)
        if a is None or "ok" not in a:
            continue
        if a["ok"] == good[name]["ok"]:
            continue
        if name == "list" and case.target == "-wal" and {r[0] for r in a["ok"]} == {r[0] for r in good[name]["ok"]}:
            continue  # runs rolled back to an earlier commit of theirs (checked one by one below)
        if name == "list" or case.variant == "closed" or case.target == "-intents" or name == "load c":
            found.append(f"{name}: different data: {a['ok']} (undamaged: {good[name]['ok']})")
            continue
        v = a["ok"]  # a -wal rolled back to an earlier commit: still this run's own data
        rid = name.split()[-1]
        if v["run_id"] != rid or v["owner"] not in (rid, "", None) or any(
                not k.startswith(f"{rid}/") for k in v["calls"]):
            found.append(f"{name}: another run's data: {v}")
    resumed = answers.get("resume b", {})
    if "ok" in resumed and resumed["ok"] != "unknown" and (case.variant == "closed" or case.target == "-intents"):
            found.append(f"resume b ended in {resumed['ok']!r}, not the unknown-outcome route")
    return found


# --- the sweep -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("adv")
    (root / "advflow.py").write_text(FLOW)
    variants = build_store(root)
    worker = Worker(root)
    good = {}
    for n, (variant, files) in enumerate(variants.items()):
        good[variant] = worker.ask(write_case(root, 1000 + n, files))
    yield root, variants, worker, good
    worker.close()


def test_the_undamaged_store_answers_everything(sweep: Any) -> None:
    """The control: the undamaged copies answer every entry point, and resuming b takes the
    unknown-outcome route without sending again."""
    _, _, _, good = sweep
    for variant, answers in good.items():
        errors = {k: v for k, v in answers.items() if k not in CLI and k != "effects" and "err" in v}
        assert not errors, (variant, errors)
        assert answers["resume b"]["ok"] == "unknown", answers
        assert answers["effects"] == ["send", "c2", "send", "e", "send", "a"], answers
        assert answers["deliver e"]["ok"] == "done" and answers["wake"]["ok"] == [["a", "done"]]
        assert all(answers[c]["code"] == 0 for c in CLI[:3]), answers


CASES = int(os.environ.get("ADVERSARIAL_CASES", "60"))


def test_damaged_copies_answer_truly_or_raise_store_errors(sweep: Any) -> None:
    """``CASES`` damaged copies (seeded, half of each variant): see the module's docstring."""
    root, variants, worker, good = sweep
    rng = random.Random(int(os.environ.get("ADVERSARIAL_SEED", "16")))
    failures = []
    tally: dict[str, int] = {}
    for n in range(CASES):
        variant = "closed" if n % 3 == 0 else "killed"
        case = damage(variants[variant], variant, rng)
        d = write_case(root, n, case)
        answers = worker.ask(d)
        found = problems(answers, good[variant], case)
        errs = sorted({a["err"] for k, a in answers.items() if isinstance(a, dict) and "err" in a and k not in CLI})
        key = "errors " + ",".join(errs) if errs else "all answered"
        tally[key] = tally.get(key, 0) + 1
        if found:
            failures.append(f"case {n} ({case.label()}):\n  " + "\n  ".join(found))
        else:
            shutil.rmtree(d)
    print(f"\n{CASES} damaged copies:", tally)
    assert not failures, "\n".join(failures[:8]) + f"\n({len(failures)} of {CASES} cases failed)"


def test_a_run_lost_with_the_wal_after_its_intent_is_damage_not_a_new_run(sweep: Any) -> None:
    """The -wal cut back to its header: SQLite opens the store as of the checkpoint, silently, and runs
    a, b and e are gone. b's at_most_once call ran (the intent log holds it): loading or listing must
    say the store lost commits, not "no run 'b'", and starting b again must not send again."""
    import advflow

    from statemachine_agent.errors import RunNotFound, StoreCorrupted
    from statemachine_agent.stores import SQLiteStore

    root, variants, _, _ = sweep
    files = dict(variants["killed"])
    files["-wal"] = files["-wal"][:WAL_HEADER]
    db = write_case(root, 2000, files) / "runs.db"
    os.environ["ADV_EFFECTS"] = str(db.parent / "effects")
    with SQLiteStore(db) as store:
        with pytest.raises(StoreCorrupted, match="intent log"):
            store.load("b").result()
        with pytest.raises(StoreCorrupted, match="'b'"):
            store.list_runs().result()
        with pytest.raises(StoreCorrupted, match="'b'"):
            advflow.flow.run_sync(advflow.Job(owner="b"), store=store, run_id="b")
        with pytest.raises(RunNotFound):  # a run without logged intents is simply gone with the -wal
            store.load("a").result()
    assert not (db.parent / "effects").exists() or "b" not in (db.parent / "effects").read_text().split()


# --- 2. read-only commands write nothing, on live and killed stores ---------------------------------
HOLDER = textwrap.dedent('''
    import os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    os.environ["ADV_EFFECTS"] = os.path.join(sys.argv[1], "holder-effects")
    import advflow
    from statemachine_agent.stores import SQLiteStore
    store = SQLiteStore(sys.argv[2])
    advflow.flow.run_sync(advflow.Job(owner="a"), store=store, run_id="a")
    store.deliver("a", "poke", {"n": 1}).result()
    advflow.CRASH.add("b")
    advflow.flow.run_sync(advflow.Job(owner="b"), store=store, run_id="b")
    try:
        advflow.flow.deliver_sync("b", "approval", {"ok": True}, store=store)
    except advflow.Crash:
        pass
    print("ready", flush=True)
    if sys.argv[3] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()  # held open until the test closes our stdin
''')


def fingerprint(path: Path) -> dict[str, tuple[bytes, int] | None]:
    out: dict[str, tuple[bytes, int] | None] = {}
    for suffix in ("", "-wal", "-shm", "-intents", "-journal"):
        f = Path(f"{path}{suffix}")
        out[suffix] = (f.read_bytes(), f.stat().st_mtime_ns) if f.exists() else None
    return out


READ_ONLY = (["runs", "list"], ["runs", "list", "--json"], ["runs", "show", "a"], ["runs", "show", "b", "--json"],
             ["runs", "show", "nope"])


@pytest.mark.parametrize("holder", ["live", "kill"])
def test_read_only_commands_write_nothing_on_a_live_or_killed_store(holder: str, tmp_path: Path) -> None:
    """Another process has the store open (its -wal, -shm and -intents in use), or was SIGKILLed with it
    open: `runs list` and `runs show` (each in a process of its own, as a user runs them) leave every
    file's bytes and mtime as they were and create none, and still read the latest commits."""
    (tmp_path / "advflow.py").write_text(FLOW)
    db = tmp_path / "runs.db"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), str(db), holder], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=tmp_path)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        if holder == "kill":
            assert proc.wait(timeout=30) == -9
        before = fingerprint(db)
        assert before["-wal"] is not None and before["-shm"] is not None and before["-intents"] is not None
        time.sleep(0.02)  # an mtime written now would differ
        for argv in READ_ONLY:
            done = subprocess.run([sys.executable, "-m", "statemachine_agent.cli", *argv, "--store", str(db)],
                                  check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path)
            assert done.returncode == (2 if "nope" in argv else 0), (argv, done.stderr)
            assert "Traceback" not in done.stderr, done.stderr
            if argv[1] == "list":
                assert "b" in done.stdout and "a" in done.stdout, done.stdout
            changed = [s for s, v in fingerprint(db).items() if v != before[s]]
            assert not changed, (argv, changed)
    finally:
        if proc.poll() is None:
            proc.communicate(timeout=30)


def test_a_wal_copied_without_its_shm_is_still_read(sweep: Any, tmp_path: Path) -> None:
    """The main file and -wal of a killed store copied without the -shm: `runs list` still reads the
    runs of the -wal (SQLite needs a -shm to read a -wal: it makes one, the one write it cannot avoid)."""
    _, variants, _, _ = sweep
    db = write_case(tmp_path, 0, {s: v for s, v in variants["killed"].items() if s != "-intents"}) / "runs.db"
    done = subprocess.run([sys.executable, "-m", "statemachine_agent.cli", "runs", "list", "--store", str(db)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert {line.split()[0] for line in done.stdout.splitlines()[1:]} == set(RUNS), done.stdout


# --- 4. the command line under drawn argv -------------------------------------------------------------
def test_an_at_fifo_nobody_writes_to_exits_2_promptly(tmp_path: Path) -> None:
    """``--input @FIFO`` with no writer: opening it blocked the command forever. Now it is opened
    without blocking and refused after PIPE_WAIT seconds (lowered here), on one line."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code = ("import sys, statemachine_agent.cli as c; c.PIPE_WAIT = 0.3; "
            f"sys.exit(c.main(['run', 'statemachine_agent.examples.research:workflow', '--input', '@{fifo}']))")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "pipe" in done.stderr, done.stderr
    assert time.monotonic() - started < 20


def test_an_at_fifo_written_later_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other side: a FIFO whose writer comes a little later and closes it is read whole."""
    from statemachine_agent.cli import _read_input

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def write() -> None:
        time.sleep(0.2)
        with open(fifo, "w", encoding="utf-8") as f:
            f.write('{"question": "why?"}')

    import threading

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert _read_input(f"@{fifo}") == {"question": "why?"}
    finally:
        writer.join()


HOSTILE_CHARS = ("\x1b", "\n", "\r", "\x00", "\x7f", "\x85", "\x9b", "\u202e", "\u2066", "\u2028", "\udcff", "\ud800")
hostile = st.text(st.one_of(st.sampled_from(HOSTILE_CHARS), st.characters(codec="utf-8")), min_size=0, max_size=6)
NUMBERS = ("0", "1", "-1", "nan", "NaN", "-nan", "inf", "-Infinity", "1e999", "1e-999", "0x10", "1_0", "\u0661",
           "\uff19", " 2", "2 ", "9" * 60, "-0", "+5", "1.5", "", "1e3", "2**63")


def _argv_strategy(p: dict[str, str]) -> st.SearchStrategy[list[str]]:
    num = st.one_of(st.sampled_from(NUMBERS), st.integers(-(2 ** 70), 2 ** 70).map(str))
    run_id = st.one_of(st.sampled_from(["a", "c", "b", "nope", ""]), hostile)
    json_arg = st.one_of(st.sampled_from([
        "{}", '{"owner": "x"}', '{"owner": NaN}', '{"ok": Infinity}', "[1]", '{"ok": true}', '{"ok": 1e999}',
        '{"a": ' + "[" * 3000 + "]" * 3000 + "}", '{"owner": "\\ud800"}', '{"owner": "\\u001b[2J\\u202e"}',
        "@/dev/zero", f"@{p['fifo']}", f"@{p['link']}", f"@{p['missing']}", f"@{p['dir']}", f"@{p['latin1']}",
        "@", '{"owner": ' + "1" * 5000 + "}"]), hostile)
    store = st.sampled_from([p["store"], p["store"], p["store"], p["storelink"], p["missing"], p["dir"], "/dev/zero",
                             p["latin1"], p["plain"], "", p["fifo"]])
    target = st.one_of(st.sampled_from(["advflow:flow"] * 4 + ["advflow:nope", "nomod_xyz:x", "advflow", ":",
                                                                "advflow:Job", "advflow:flow.wf"]), hostile)
    text = st.one_of(st.sampled_from(["approval", "poke", "dot", "mermaid", "svg", ""]), hostile)
    out = st.sampled_from([p["out"], p["outlink"], p["dir"], p["fifo"], p["out"] + ".mmd"])
    opt = st.booleans()

    @st.composite
    def argv(draw: st.DrawFn) -> list[str]:
        kind = draw(st.sampled_from(["run", "check", "diagram", "list", "show", "resume", "deliver", "fork", "wake"]))
        args: list[str]
        if kind == "run":
            args = ["run", draw(target)]
            extra = [["--input", draw(json_arg)], ["--max-steps", draw(num)], ["--timeout", draw(num)], ["--json"],
                     ["--policy", draw(text)]]
        elif kind == "check":
            args, extra = ["check", draw(target)], []
        elif kind == "diagram":
            args = ["diagram", draw(target), "-o", draw(out)]
            extra = [["--format", draw(text)], ["--run", draw(run_id)], ["--store", draw(store)],
                     ["--rankdir", draw(text)]]
        elif kind in ("list", "show"):
            args = ["runs", kind, *([draw(run_id)] if kind == "show" else []), "--store", draw(store)]
            extra = [["--json"]]
        elif kind == "resume":
            args = ["runs", "resume", draw(target), draw(run_id), "--store", draw(store)]
            extra = [["--json"], ["--max-steps", draw(num)], ["--timeout", draw(num)]]
        elif kind == "deliver":
            args = ["runs", "deliver", draw(target), draw(run_id), draw(text), "--store", draw(store)]
            extra = [["--payload", draw(json_arg)], ["--json"], ["--secrets-env", draw(text)]]
        elif kind == "fork":
            args = ["runs", "fork", draw(target), draw(run_id), "--at-step", draw(num), "--store", draw(store)]
            extra = [["--patch", draw(json_arg)], ["--new-id", draw(run_id)], ["--json"]]
        else:
            args = ["runs", "wake", *([draw(target)] if draw(opt) else []), "--store", draw(store)]
            extra = [["--json"], ["--secrets-env", draw(text)]]
        for e in extra:
            if draw(opt):
                args += e
        return args

    return argv()


@pytest.fixture(scope="module")
def cli_place(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    (root / "advflow.py").write_text(FLOW)
    sys.path.insert(0, str(root))
    import advflow

    from statemachine_agent.stores import SQLiteStore

    os.environ["ADV_EFFECTS"] = str(root / "effects")
    p = {name: str(root / name) for name in ("store", "fifo", "missing", "dir", "latin1", "plain", "out", "input")}
    p["store"] = str(root / "runs.db")
    with SQLiteStore(p["store"]) as store:
        advflow.flow.run_sync(advflow.Job(owner="a"), store=store, run_id="a")
        advflow.flow.run_sync(advflow.Job(owner="c"), store=store, run_id="c")
        advflow.flow.deliver_sync("c", "approval", {"ok": True}, store=store)
    os.mkfifo(p["fifo"])
    Path(p["dir"]).mkdir()
    Path(p["latin1"]).write_bytes(b'{"owner": "caf\xe9"}')
    Path(p["input"]).write_text('{"owner": "linked"}')
    import sqlite3

    with contextlib.closing(sqlite3.connect(p["plain"])) as conn:
        conn.execute("CREATE TABLE t (x)")
    for name, to in (("link", p["input"]), ("storelink", p["store"]), ("outlink", p["input"])):
        os.symlink(to, root / name)
        p[name] = str(root / name)
    yield p
    sys.path.remove(str(root))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@settings(max_examples=int(os.environ.get("ADVERSARIAL_ARGV", "80")), deadline=None, derandomize=True,
          database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_argv_exits_0_1_or_2_cleanly(cli_place: dict[str, str], data: st.DataObject,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command, its arguments drawn from hostile pools (odd bytes as surrogates, huge numbers,
    NaN spellings, @/dev/zero, @FIFO, symlinks, junk stores): exit 0, 1 or 2; nothing escapes main();
    no traceback; every character printed is printable (or a line break) and encodes as UTF-8; exit 2
    is one line; --json output parses as strict JSON."""
    import statemachine_agent.cli as cli_module

    monkeypatch.setattr(cli_module, "PIPE_WAIT", 0.05)
    argv = data.draw(_argv_strategy(cli_place), label="argv")
    before = Path(cli_place["input"]).read_bytes()
    answer = _cli(argv)
    assert "escaped" not in answer, (argv, answer)
    code, out, err = answer["code"], answer["out"], answer["err"]
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in out + err, (argv, err)
    raw = sorted({f"U+{ord(c):04X}" for c in out + err if not c.isprintable() and c != "\n"})
    assert not raw, (argv, raw, out[-500:], err)
    (out + err).encode("utf-8")
    if code == 2:
        assert err.count("\n") == 1 or err.startswith("usage:"), (argv, err)
    if "--json" in argv and code in (0, 1) and out.strip():
        json.loads(out, parse_constant=_no_constant)
    assert Path(cli_place["input"]).read_bytes() == before, "a symlinked output was written through"


def test_wake_without_a_workflow_and_nothing_due_prints_json_when_asked(cli_place: dict[str, str]) -> None:
    """`runs wake --store FILE --json` with no run due printed a sentence, which is not JSON (found by
    the argv sweep above)."""
    answer = _cli(["runs", "wake", "--store", cli_place["store"], "--json"])
    assert answer["code"] == 0 and json.loads(answer["out"]) == [], answer


# --- 3. a hostile model server: the key JSON-escaped in an error body ---------------------------------
CANARY = "sk-CANARY-77aa/bb+cc"


def _escaped(key: str, every: int) -> str:
    """``key`` with every ``every``-th character written as a JSON ``\\uXXXX`` escape (upper or lower hex)."""
    return "".join(f"\\u{ord(c):04x}" if i % every == 0 else f"\\u{ord(c):04X}" if i % every == 1 else
                   ("\\/" if c == "/" else c) for i, c in enumerate(key))


@pytest.mark.parametrize("status", [401, 500, 503])
@pytest.mark.parametrize("every", [1, 2, 3])
def test_a_json_escaped_key_in_an_error_body_is_scrubbed(status: int, every: int, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An error body (JSON, as OpenAI-style servers send) echoing the key with its characters as
    ``\\uXXXX`` escapes, all or some, and ``\\/``: the error text was kept as the server sent it, so one
    JSON unescape gave the key back from the exception, the journal and the store file. It is scrubbed
    in those forms too. The key also comes back in headers and Retry-After, which are never shown."""
    from statemachine_agent import Context, FakeClock, Workflow
    from statemachine_agent.llm import ChatModel, LLMPolicy, llm_step
    from statemachine_agent.llm.testing import FakeOpenAIServer, FakeRequest, FakeResponse
    from statemachine_agent.stores import SQLiteStore

    class Doc(Context):
        summary: str | None = None

    monkeypatch.setenv("OPENAI_API_KEY", CANARY)

    def serve(request: FakeRequest, index: int) -> FakeResponse:
        raw = '{"error": {"message": "bad key ' + _escaped(CANARY, every) + '"}}'
        return FakeResponse(status, raw=raw.encode(), headers={"Retry-After": CANARY, "X-Echo": CANARY})

    wf = Workflow("esc", Doc)
    with FakeOpenAIServer(serve) as server:
        chat = ChatModel(base_url=server.url, model="fake", retries=2, backoff=0)
        wf.add_state("work", llm_step(chat, write="summary", output=str, prompt="go", max_attempts=1),
                     initial=True, writes=["summary"])
        wf.terminal("done")
        wf.terminal("failed", outcome="failure")
        wf.transition("work", "done")
        db = tmp_path / "runs.db"
        with SQLiteStore(db) as store:
            result = wf.compile().run_sync(Doc(), policy=LLMPolicy(chat=chat), store=store, run_id="r",
                                           clock=FakeClock(), raise_errors=False)
            stored = store.load("r").result().model_dump_json()
    error = result.path[-1].error if result.path else result.error
    texts = [str(error), repr(error), json.dumps(result.to_dict()), stored,
             "".join(p.read_bytes().decode("latin-1") for p in tmp_path.iterdir())]
    assert "bad key" in str(error), error
    for found in texts:
        text = found
        for _ in range(4):  # unescape as often as a reader might
            assert CANARY not in text, text[:500]
            text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)),
                          text.replace("\\\\", "\\")).replace("\\/", "/")


@pytest.mark.parametrize("where", ["show", "resume", "fork", "new-id"])
def test_a_run_id_of_bytes_that_are_not_utf8_is_refused_saying_so(where: str, cli_place: dict[str, str]) -> None:
    """A run id holding a byte that is not UTF-8 (it reaches argv as a lone surrogate): the error said
    "'utf-8' codec can't encode character '\\udcff'", which names neither the id nor what to do."""
    odd, store = "r\udcff", ["--store", cli_place["store"]]
    argv = {"show": ["runs", "show", odd, *store], "resume": ["runs", "resume", "advflow:flow", odd, *store],
            "fork": ["runs", "fork", "advflow:flow", odd, "--at-step", "0", *store],
            "new-id": ["runs", "fork", "advflow:flow", "a", "--at-step", "0", "--new-id", odd, *store]}[where]
    answer = _cli(argv)
    assert answer["code"] == 2 and "not UTF-8" in answer["err"] and answer["err"].count("\n") == 1, answer
    assert "\udcff" not in answer["err"] and "codec" not in answer["err"], answer


RAW_REPLIES = {
    "closed mid-body": lambda: (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                                b"{\"ch"),
    "gzip bomb, lying Content-Length": lambda: (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 100\r\n\r\n"
        + gzip.compress(b"{" + b" " * (64 * 1024 * 1024) + b"}")),
    "key past the cap of a 5xx body": lambda: (b"HTTP/1.1 500 Oops\r\nContent-Length: 300000\r\n\r\n" + b"x" * 200_000
                                               + CANARY.encode() + b"y" * (100_000 - len(CANARY))),
    "key in the reason, a header and Retry-After": lambda: b"HTTP/1.1 503 %s\r\nContent-Length: 2\r\nX-Echo: %s\r\n"
                                                           b"Retry-After: %s\r\n\r\nno" % ((CANARY.encode(),) * 3),
}


@pytest.mark.parametrize("name", list(RAW_REPLIES))
def test_a_raw_hostile_server_gives_a_typed_error_without_the_key(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server on a raw socket (so it can lie about lengths): it closes mid-body, sends a gzip bomb
    under a small Content-Length, echoes the key past the error-body cap, or in its status line and
    headers. Each is ModelUnavailable, and the key is nowhere in it."""
    import asyncio
    import socket
    import threading

    from statemachine_agent.clock import SystemClock
    from statemachine_agent.errors import ModelError
    from statemachine_agent.llm import ChatModel

    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    reply = RAW_REPLIES[name]()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                with contextlib.suppress(OSError):
                    conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    try:
        chat = ChatModel(base_url=f"http://127.0.0.1:{listener.getsockname()[1]}/v1", model="m", retries=2,
                         backoff=0, timeout=20)
        with pytest.raises(ModelError) as info:
            asyncio.run(chat._post({"model": "m", "messages": []}, SystemClock(), known_good=True))
    finally:
        listener.close()
    assert type(info.value).__name__ == "ModelUnavailable", info.value
    assert CANARY not in str(info.value) + repr(info.value)
