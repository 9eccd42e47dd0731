"""A durable run in a process of its own, which kills itself (SIGKILL) where it is told to.

    python tests/crash_worker.py DB EFFECTLOG RUN_ID SCHEDULE_JSON [--commits FILE] [--barrier READY_FD GO_FD]
    python tests/crash_worker.py --serve

It starts run RUN_ID in the SQLite store DB (or resumes it when the store already has it) and
prints the result as one JSON line on stdout (exit 0). ``RunFenced`` prints ``{"fenced": ...}``
and exits 3. Anything else is a traceback and exit 1.

SCHEDULE_JSON is a list of kill points ``{"at": KIND, "n": N, "tool": TOOL or null}``: the
process dies at the N-th event of that KIND in this process (of that TOOL when one is named).
The workflow is deterministic, so the same schedule against the same store dies at the same
place. Before dying it writes one line ``KILL <json>`` to stderr (one write(2), so the parent
reads it even though the process never exits normally). The kinds:

* ``intent_uncommitted``: an at_most_once call's INTENT row was inserted, its transaction is open;
* ``intent_committed``: right after the INTENT row's transaction committed;
* ``effect``: inside a tool, after its effect line reached EFFECTLOG (fsynced);
* ``outcome_uncommitted`` / ``outcome_committed``: a DONE (or FAILED) journal row of an idempotent
  or at_most_once call, inserted but not committed / just committed;
* ``step_uncommitted``: inside a step's commit: its SQL ran, the transaction is not committed;
* ``step_committed``: right after a step's commit transaction committed;
* ``mid_action``: inside a state's action, between its two writes to the context.

EFFECTLOG gets one line per tool execution, ``<tool> <call key> <step>``, appended with O_APPEND
and fsynced before the tool returns: it is the outside world the journal must not repeat.
``--commits FILE`` appends ``<step> <epoch>`` for every step this process committed (two-process
fencing). ``--barrier READY_FD GO_FD``: after opening the store, write one byte to READY_FD and
block reading GO_FD until the parent closes it, so that two workers resume at once.

``--serve`` is a fork server for many short launches: it imports everything once, then for each
JSON request ``{"argv": [...], "out": FILE, "err": FILE}`` read on stdin forks a fresh child that
runs ``main(argv)`` with its stdout and stderr in those files, waits for it, and answers
``{"returncode": N}`` (``-9`` when it killed itself). The server itself never opens a store and
starts no thread, so every child begins from the same clean image, as an exec would.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from pydantic import Field

from statemachine_agent import Context, Workflow
from statemachine_agent.errors import EffectOutcomeUnknown, RunFenced, RunNotFound
from statemachine_agent.stores import SQLiteStore

KINDS = ("intent_uncommitted", "intent_committed", "effect", "outcome_uncommitted", "outcome_committed",
         "step_uncommitted", "step_committed", "mid_action")
TOOLS = {"lookup": "read", "charge": "idempotent", "send": "at_most_once"}
STATE_TOOL = {"fetch": "lookup", "charge_card": "charge", "notify": "send"}
"""The tool each state calls (once, so its call index is 0)."""
POSITION = {"fetch": 0, "charge_card": 1, "notify": 2, "tally": 3}
LOOPS = 2
"""The loop fetch -> charge -> notify -> tally runs this many times: 4 * LOOPS steps."""

Effect = Callable[[str, str, int], None]


class Job(Context):
    n: int = 0
    facts: list[str] = Field(default_factory=list)
    receipts: list[str] = Field(default_factory=list)
    sent: list[str] = Field(default_factory=list)
    marks: list[str] = Field(default_factory=list)
    total: int = 0


class Killer:
    """Counts events per kill point and kills this process at the one the schedule names."""

    def __init__(self, schedule: list[dict[str, Any]]) -> None:
        for point in schedule:
            if point.get("at") not in KINDS or not isinstance(point.get("n"), int) or point["n"] < 1:
                raise SystemExit(f"bad kill point {point!r}")
        self.schedule = schedule
        self.seen = [0] * len(schedule)

    def hit(self, at: str, tool: str | None = None, **where: Any) -> None:
        for i, point in enumerate(self.schedule):
            if point["at"] != at or point.get("tool") not in (None, tool):
                continue
            self.seen[i] += 1
            if self.seen[i] == point["n"]:
                note = json.dumps({"at": at, "n": point["n"], "tool": tool, **where})
                os.write(2, f"\nKILL {note}\n".encode())
                os.kill(os.getpid(), signal.SIGKILL)


def noop_effect(tool: str, key: str, step: int) -> None:
    """The effect of a tool when nothing watches it (the in-process reference run)."""


def build(run_id: str, effect: Effect = noop_effect, mid: Callable[[str], None] = lambda state: None) -> Any:
    """The workflow: fetch -> charge -> notify -> tally, twice, then done (8 steps).

    ``fetch`` calls the read tool ``lookup``, ``charge`` the idempotent ``charge``, ``notify`` the
    at_most_once ``send`` (EffectOutcomeUnknown routes to the failure terminal ``unknown``); ``tally``
    counts the loop. Every action writes the context twice, with ``mid(state)`` between the writes.
    The step number is 4 * n + the state's position, so every effect names its step.
    """
    wf = Workflow("crashy", Job)

    async def lookup(step: int) -> str:
        effect("lookup", f"{run_id}/{step}/0", step)
        return f"fact-{step}"

    async def charge(step: int, idempotency_key: str) -> str:
        effect("charge", idempotency_key, step)
        return f"receipt-{step}"

    async def send(step: int) -> str:
        effect("send", f"{run_id}/{step}/0", step)
        return f"sent-{step}"

    wf.tool(lookup, effect="read")
    wf.tool(charge, effect="idempotent")
    wf.tool(send, effect="at_most_once")

    @wf.state(initial=True, reads=["n", "facts"], writes=["facts", "marks"], tools=["lookup"])
    async def fetch(ctx: Job, tools: Any) -> None:
        step = 4 * ctx.n + POSITION["fetch"]
        ctx.facts.append(await tools.call("lookup", step=step))
        mid("fetch")
        ctx.marks.append(f"fetch-{step}")

    @wf.state(reads=["n", "receipts"], writes=["receipts", "marks"], tools=["charge"])
    async def charge_card(ctx: Job, tools: Any) -> None:
        step = 4 * ctx.n + POSITION["charge_card"]
        ctx.receipts.append(await tools.call("charge", step=step))
        mid("charge_card")
        ctx.marks.append(f"charge-{step}")

    @wf.state(reads=["n", "sent"], writes=["sent", "marks"], tools=["send"])
    async def notify(ctx: Job, tools: Any) -> None:
        step = 4 * ctx.n + POSITION["notify"]
        ctx.sent.append(await tools.call("send", step=step))
        mid("notify")
        ctx.marks.append(f"notify-{step}")

    @wf.state(reads=["n", "total", "receipts"], writes=["total", "n", "marks"])
    def tally(ctx: Job) -> None:
        ctx.total += len(ctx.receipts)
        mid("tally")
        ctx.n += 1
        ctx.marks.append(f"tally-{ctx.n}")

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.terminal("unknown", outcome="failure")
    wf.transition("fetch", "charge_card")
    wf.transition("charge_card", "notify")
    wf.transition("notify", "tally")
    wf.transition("tally", "fetch", guard=lambda c: c.n < LOOPS, max_traversals=LOOPS - 1)
    wf.transition("tally", "done")
    wf.on_error("notify", EffectOutcomeUnknown, "unknown")
    return wf.compile()


class KillingStore(SQLiteStore):
    """SQLiteStore with kill points in its journal writes and step commits.

    ``commit`` and ``record_call`` build their operation and hand it to ``_submit`` at once (same
    thread), so ``_submit`` wraps the operation that the call just built: the wrapper runs it (its
    SQL executes inside the open transaction) and may then die before the transaction commits. A
    done-callback on the returned future may die right after the commit.
    """

    def __init__(self, path: str, killer: Killer, commits: str | None = None) -> None:
        self._killer = killer
        self._commits = commits
        self._tag: tuple[str, str | None, dict[str, Any]] | None = None
        super().__init__(path)

    def _submit(self, op: Any, *, durable: bool = True, run: str | None = None) -> Future[Any]:
        tag, self._tag = self._tag, None
        if tag is None:
            return super()._submit(op, durable=durable, run=run)
        kind, tool, where = tag
        killer = self._killer

        def wrapped(conn: Any) -> Any:
            value = op(conn)
            killer.hit(f"{kind}_uncommitted", tool, **where)
            return value

        future = super()._submit(wrapped, durable=durable, run=run)

        def done(f: Future[Any]) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            if kind == "step" and self._commits is not None:
                fd = os.open(self._commits, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, f"{where['step']} {where['epoch']}\n".encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
            killer.hit(f"{kind}_committed", tool, **where)

        future.add_done_callback(done)
        return future

    def commit(self, commit: dict[str, Any]) -> Future[None]:
        self._tag = ("step", None, {"step": commit["step"]["number"], "epoch": commit["epoch"]})
        return super().commit(commit)

    def record_call(self, run_id: str, epoch: int, call: dict[str, Any]) -> Future[None]:
        kind = "intent" if call["status"] == "intent" else "outcome"
        self._tag = (kind, call["tool"], {"step": call["step"], "call": call["call"], "key": call["key"],
                                          "status": call["status"]})
        return super().record_call(run_id, epoch, call)


def file_effect(path: str, killer: Killer) -> Effect:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def effect(tool: str, key: str, step: int) -> None:
        os.write(fd, f"{tool} {key} {step}\n".encode())
        os.fsync(fd)
        killer.hit("effect", tool, key=key, step=step)

    return effect


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db")
    parser.add_argument("effects")
    parser.add_argument("run_id")
    parser.add_argument("schedule")
    parser.add_argument("--commits")
    parser.add_argument("--barrier", nargs=2, type=int, metavar=("READY_FD", "GO_FD"))
    args = parser.parse_args(argv)
    killer = Killer(json.loads(args.schedule))
    compiled = build(args.run_id, file_effect(args.effects, killer), lambda state: killer.hit("mid_action", state))
    store = KillingStore(args.db, killer, args.commits)
    if args.barrier is not None:
        ready, go = args.barrier
        os.write(ready, b"r")
        os.close(ready)
        os.read(go, 1)  # returns b"" when the parent closes its end: both workers go at once
        os.close(go)
    try:
        try:
            store.load(args.run_id).result()
        except RunNotFound:
            result = compiled.run_sync(Job(), store=store, run_id=args.run_id)
        else:
            result = compiled.resume_sync(args.run_id, store=store)
    except RunFenced as exc:
        print(json.dumps({"fenced": str(exc)}), flush=True)
        return 3
    finally:
        store.close()
    out = {"terminal": result.terminal, "outcome": str(result.outcome), "reason": result.reason,
           "context": result.context.model_dump(mode="json"),
           "path": [[s.number, s.state, s.target, s.transition, str(s.kind), s.ran] for s in result.path]}
    print(json.dumps(out), flush=True)
    return 0


def serve() -> int:
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the server's loop
            code = 1
            try:
                for fd, path in ((1, request["out"]), (2, request["err"])):
                    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(target, fd)
                    os.close(target)
                code = main(request["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    try:
        sys.exit(serve() if sys.argv[1:] == ["--serve"] else main(sys.argv[1:]))
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
