"""A store file with one run of each kind, written with a frozen clock (so its rows are the same bytes on
every machine), and the checks that a release can read and continue it.

tests/fixtures/store-v2.db was made by this script on the release before the typed store contract
(issue 22): ``python tests/store_fixture.py make tests/fixtures/store-v2.db``. ``check PATH`` runs the
checks against a copy of a store file (with whichever release is on the path: so a file made by the
current code can be checked by an older release too). Uses only the public API, so any release runs it.

The runs: ``ended`` (through its wait, approved, to ``done``), ``waiting`` (in its wait, nothing
delivered), ``crashed`` (died inside the at_most_once ``send``, its intent journaled) and ``forked``
(``ended`` forked before step 2, run on to its wait).
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from statemachine_agent import Context, Workflow
from statemachine_agent.errors import EffectOutcomeUnknown
from statemachine_agent.stores import RunStatus, SQLiteStore

NOW = 1_700_000_000.0
RUNS = ("crashed", "ended", "forked", "waiting")


class Approval(BaseModel):
    ok: bool
    by: str = ""


class Order(Context):
    amount: int = 0
    facts: list[str] = Field(default_factory=list)
    receipts: list[str] = Field(default_factory=list)
    sent: list[str] = Field(default_factory=list)
    approval: Approval | None = None
    shipped: bool = False


class Crash(BaseException):
    """Stands for the process dying inside a tool call."""


def build(crash: bool = False) -> Any:
    """fetch (read tool) -> charge (idempotent) -> notify (at_most_once) -> approve (wait) -> ship -> done."""
    wf = Workflow("compat", Order)

    async def lookup(amount: int) -> str:
        return f"fact-{amount}"

    async def charge(amount: int, idempotency_key: str) -> str:
        return f"receipt-{amount}-{idempotency_key}"

    async def send(amount: int) -> str:
        if crash:
            raise Crash
        return f"sent-{amount}"

    wf.tool(lookup, effect="read")
    wf.tool(charge, effect="idempotent")
    wf.tool(send, effect="at_most_once")

    @wf.state(initial=True, reads=["amount", "facts"], writes=["facts"], tools=["lookup"])
    async def fetch(ctx: Order, tools: Any) -> None:
        ctx.facts.append(await tools.call("lookup", amount=ctx.amount))

    @wf.state(reads=["amount", "receipts"], writes=["receipts"], tools=["charge"])
    async def charge_card(ctx: Order, tools: Any) -> None:
        ctx.receipts.append(await tools.call("charge", amount=ctx.amount))

    @wf.state(reads=["amount", "sent"], writes=["sent"], tools=["send"])
    async def notify(ctx: Order, tools: Any) -> None:
        ctx.sent.append(await tools.call("send", amount=ctx.amount))

    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], timeout=3600.0,
            on_timeout="expired")

    @wf.state(reads=["approval"], writes=["shipped"])
    def ship(ctx: Order) -> None:
        ctx.shipped = ctx.approval is not None and ctx.approval.ok

    wf.terminal("done")
    wf.terminal("expired", outcome="failure")
    wf.terminal("unknown", outcome="failure")
    wf.transition("fetch", "charge_card")
    wf.transition("charge_card", "notify")
    wf.transition("notify", "approve")
    wf.transition("approve", "ship")
    wf.transition("ship", "done")
    wf.on_error("notify", EffectOutcomeUnknown, "unknown")
    return wf.compile()


@contextlib.contextmanager
def frozen_clock() -> Iterator[None]:
    """Every timestamp and duration the library records is a constant: every module of the package
    that imported ``time`` sees a fake one."""
    fake = types.SimpleNamespace(time=lambda: NOW, perf_counter=lambda: 100.0, monotonic=lambda: 100.0)
    patched = [(m, m.time) for name, m in list(sys.modules.items())
               if name.startswith("statemachine_agent") and getattr(m, "time", None) is time]
    try:
        for m, _ in patched:
            m.time = fake  # type: ignore[attr-defined]
        yield
    finally:
        for m, real in patched:
            m.time = real  # type: ignore[attr-defined]


def make(path: Path) -> None:
    """The fixture's runs, in a new store at ``path`` (closed: the file holds everything)."""
    with frozen_clock(), SQLiteStore(path, snapshot_every=2) as store:
        compiled = build()
        compiled.run_sync(Order(amount=5), store=store, run_id="ended")
        compiled.deliver_sync("ended", "approval", {"ok": True, "by": "ann"}, store=store)
        compiled.run_sync(Order(amount=7), store=store, run_id="waiting")
        with contextlib.suppress(Crash):
            build(crash=True).run_sync(Order(amount=9), store=store, run_id="crashed")
        compiled.fork_sync("ended", at_step=2, patch={"amount": 6}, store=store, new_run_id="forked")


def rows(path: Path) -> dict[tuple[str, ...], tuple[str, int]]:
    """Every stored row of ``path``: (table, run, key...) -> (its JSON text, its checksum)."""
    out: dict[tuple[str, ...], tuple[str, int]] = {}
    conn = sqlite3.connect(path)
    try:
        for table, keys, column in (("sma_runs", (), "record"), ("sma_steps", ("number",), "record"),
                                    ("sma_snapshots", ("step",), "context"),
                                    ("sma_journal", ("step", "call"), "record"),
                                    ("sma_inbox", ("seq",), "record")):
            select = ", ".join(("run_id", *keys, column, "crc"))
            for *key, text, crc in conn.execute(f"SELECT {select} FROM {table}"):
                out[(table, *map(str, key))] = (text, crc)
    finally:
        conn.close()
    return out


def check(path: Path) -> None:
    """A copy of the store at ``path`` loads, lists and continues every run as its workflow says."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "runs.db"
        shutil.copyfile(path, copy)
        compiled = build()
        with SQLiteStore(copy) as store:
            assert sorted(r.run_id for r in compiled.runs(store)) == list(RUNS)
            loaded = {r: store.load(r).result() for r in RUNS}
            ended = loaded["ended"]
            assert ended.run.status is RunStatus.DONE and ended.run.terminal == "done"
            assert [s.state for s in ended.steps] == ["fetch", "charge_card", "notify", "approve", "ship"]
            assert [(c.tool, str(c.effect), str(c.status)) for c in ended.calls] == [
                ("lookup", "read", "done"), ("charge", "idempotent", "done"), ("send", "at_most_once", "done")]
            assert ended.context["shipped"] is True and ended.context["approval"] == {"ok": True, "by": "ann"}
            assert [e.event for e in ended.inbox] == ["approval"] and ended.inbox[0].consumed_step == 3
            assert loaded["waiting"].run.status is RunStatus.WAITING
            assert loaded["forked"].run.parent == "ended" and loaded["forked"].run.parent_step == 2
            assert [str(c.status) for c in loaded["crashed"].calls if c.tool == "send"] == ["intent"]

            crashed = compiled.resume_sync("crashed", store=store)
            assert crashed.terminal == "unknown"  # the intent's outcome is unknown: never sent again
            for run_id in ("waiting", "forked"):
                done = compiled.deliver_sync(run_id, "approval", {"ok": True, "by": "bo"}, store=store)
                assert done is not None and done.terminal == "done" and done.context.shipped
            again = compiled.resume_sync("ended", store=store)
            assert again.terminal == "done" and again.context.receipts == [ended.context["receipts"][0]]
            forked = store.load("forked").result()
            assert forked.context["amount"] == 6 and forked.context["facts"] == ["fact-5"]


if __name__ == "__main__":
    command, where = sys.argv[1], Path(sys.argv[2])
    if command == "make":
        if where.exists():
            sys.exit(f"{where} exists: remove it first")
        make(where)
    elif command == "check":
        check(where)
    else:
        sys.exit(f"usage: {sys.argv[0]} make|check PATH")
    print(f"{command} {where}: ok")
