"""One stored run and one changed workflow per resume code: what docs/checks.md quotes.

``flow(**change)`` builds one version of a ticket workflow; ``stored(kind, store)`` leaves a run of
version 1 in ``store`` at a point; ``EXAMPLES[code]()`` returns the IncompatibleRun that resuming
(or, for ``resume-unreadable``, ``check_runs``) gives, with the store it used.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from statemachine_agent import UNSET, Context, Workflow
from statemachine_agent.errors import EffectOutcomeUnknown, IncompatibleRun
from statemachine_agent.stores import SQLiteStore


class Approval(BaseModel):
    ok: bool


class SignedApproval(BaseModel):
    ok: bool
    by: str


class Ticket(Context):
    tries: int = 0
    approval: Approval | None = None
    receipt: str = ""
    note: str = UNSET
    score: float = 0.0


class Ticket2(Ticket):
    customer: str


class SignedTicket(Ticket):
    approval: SignedApproval | None = None  # type: ignore[assignment]


class TicketPlus(Ticket):
    priority: int = 0


class Crash(BaseException):
    """Stands for the process dying (never routed)."""


CRASH: set[str] = set()
"""Where the next run crashes: ``triage`` (in its first step) or ``pay`` (inside the tool, after its effect)."""
PAID: list[str] = []
"""Every effect of the ``pay`` tool, in order."""


def flow(*, name: str = "ticket", context: type[Ticket] = Ticket, wait: str = "approve", event: str = "approval",
         payload: type[BaseModel] = Approval, retries: int = 3, retry: bool = True, tool: str = "pay",
         effect: str = "at_most_once", reads_note: bool = False, extra_tool: bool = False,
         timeout: float | None = None, any_approval: bool = False, description: str = "",
         numbered: bool = False) -> Any:
    """triage (retried while tries < 3) -> approve (a wait) -> charge (an at_most_once tool) -> done."""
    wf = Workflow(name, context)

    if numbered:
        async def pay(amount: int) -> int:  # type: ignore[misc]
            PAID.append(f"pay {amount}")
            return amount
    elif effect == "at_most_once":
        async def pay(amount: int) -> str:
            PAID.append(f"pay {amount}")
            if "pay" in CRASH:
                CRASH.discard("pay")
                raise Crash
            return f"receipt {amount}"
    else:
        async def pay(amount: int, idempotency_key: str) -> str:  # type: ignore[misc]
            PAID.append(f"pay {amount}")
            return f"receipt {amount}"

    pay.__name__ = tool
    wf.tool(pay, effect=effect)
    if extra_tool:
        def lookup(query: str) -> str:
            return query

        wf.tool(lookup, effect="read")

    @wf.state(initial=True, reads=["tries"], writes=["tries", "note"] if reads_note else ["tries"])
    def triage(ctx: Ticket) -> None:
        if "triage" in CRASH:
            CRASH.discard("triage")
            raise Crash
        ctx.tries += 1
        if reads_note:
            ctx.note = "triaged"

    wf.wait(wait, event=event, payload=payload, writes=["approval"], timeout=timeout,
            on_timeout="rejected" if timeout is not None else None, description=description)

    @wf.state(reads=["tries", "note"] if reads_note else ["tries"], writes=["receipt"], tools=[tool])
    async def charge(ctx: Ticket, tools: Any) -> None:
        ctx.receipt = str(await tools.call(tool, amount=ctx.tries))
        if "after-pay" in CRASH:
            CRASH.discard("after-pay")
            raise Crash

    wf.terminal("done")
    wf.terminal("rejected", outcome="failure")
    if effect == "at_most_once":
        wf.terminal("unknown", outcome="failure")
    if retry:
        wf.transition("triage", "triage", name="retry", guard=lambda c: c.tries < 3, max_traversals=retries)
    wf.transition("triage", wait)
    if any_approval:
        wf.transition(wait, "charge", guard=lambda c: c.approval is not None)
    else:
        wf.transition(wait, "charge", guard=lambda c: c.approval is not None and c.approval.ok)
    wf.transition(wait, "rejected")
    wf.transition("charge", "done")
    if effect == "at_most_once":
        wf.on_error("charge", EffectOutcomeUnknown, "unknown")
    return wf.compile()


def stored(kind: str, store: SQLiteStore, run_id: str = "t-1") -> None:
    """Leave a run of version 1 in ``store``: ``waiting`` in approve (after triage ran 3 times and
    took retry twice), ``in-pay`` (killed inside the at_most_once call: an open intent),
    ``after-pay`` (killed after that call returned: its result journaled, the step not committed), or
    ``early-event`` (killed in its first step, with an approval delivered meanwhile)."""
    v1 = flow()
    if kind == "early-event":
        CRASH.add("triage")
        with contextlib.suppress(Crash):
            v1.run_sync(Ticket(), store=store, run_id=run_id)
        v1.deliver_sync(run_id, "approval", {"ok": True}, store=store)
        return
    v1.run_sync(Ticket(), store=store, run_id=run_id)
    if kind in ("in-pay", "after-pay"):
        CRASH.add("pay" if kind == "in-pay" else "after-pay")
        with contextlib.suppress(Crash):
            v1.deliver_sync(run_id, "approval", {"ok": True}, store=store)


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the store at ``path`` (and its intent log's bytes), sorted."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        out = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        conn.close()
    intents = Path(f"{path}-intents")
    out["-intents"] = [(intents.read_bytes(),)] if intents.exists() else []
    return out


def refusal(kind: str, new: Any, migrate: Callable[[Any], Any] | None = None) -> IncompatibleRun:
    """What resuming a ``kind`` run of version 1 under ``new`` raises (having checked that the
    refusal left every table of the store as it was)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "runs.db"
        with SQLiteStore(path) as store:
            stored(kind, store)
            before = dump(path)
            try:
                new.resume_sync("t-1", store=store, migrate=migrate)
            except IncompatibleRun as exc:
                refused = exc
            else:
                raise AssertionError(f"resuming a {kind} run under the changed workflow was not refused")
            after = dump(path)
    assert after == before, f"the refusal changed the store: {kind}"
    return refused


def _unreadable() -> IncompatibleRun:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "runs.db"
        with SQLiteStore(path) as store:
            stored("waiting", store)
        conn = sqlite3.connect(path)
        conn.execute("UPDATE sma_steps SET record = replace(record, '\"triage\"', '\"triagE\"') WHERE number = 0")
        conn.commit()
        conn.close()
        with SQLiteStore(path) as store:
            [refused] = flow().check_runs(store)
    return refused


def _bad_migration(point: Any) -> Any:
    raise KeyError("approve")


EXAMPLES: dict[str, Callable[[], IncompatibleRun]] = {
    "resume-other-workflow": lambda: refusal("waiting", flow(name="other")),
    "resume-unknown-state": lambda: refusal("waiting", flow(wait="review")),
    "resume-wait-changed": lambda: refusal("waiting", flow(event="approved")),
    "resume-bad-context": lambda: refusal("waiting", flow(context=Ticket2)),
    "resume-unset-read": lambda: refusal("waiting", flow(reads_note=True)),
    "resume-counters": lambda: refusal("waiting", flow(retry=False)),
    "resume-over-bound": lambda: refusal("waiting", flow(retries=1)),
    "resume-unknown-tool": lambda: refusal("in-pay", flow(tool="pay_card")),
    "resume-effect-changed": lambda: refusal("in-pay", flow(effect="idempotent")),
    "resume-result-changed": lambda: refusal("after-pay", flow(numbered=True)),
    "resume-bad-event": lambda: refusal("early-event", flow(context=SignedTicket, payload=SignedApproval)),
    "resume-bad-migration": lambda: refusal("waiting", flow(event="approved"), migrate=_bad_migration),
    "resume-unreadable": _unreadable,
}

SAFE: dict[str, dict[str, Any]] = {
    "a guard's code": {"any_approval": True},
    "a description": {"description": "a person approves the refund"},
    "a new tool": {"extra_tool": True},
    "a new field with a default": {"context": TicketPlus},
    "a raised max_traversals": {"retries": 5},
    "a wait's timeout": {"timeout": 3600.0},
}
"""Changes docs/durability.md calls safe: every stored point continues under them, unmigrated."""

ALSO_REPORTED: dict[str, set[str]] = {
    # Renaming the state renames the transition into it: the run took one this workflow lacks.
    "resume-unknown-state": {"resume-counters"},
    # A migration that fails is listed first, then what it was meant to fix.
    "resume-bad-migration": {"resume-wait-changed"},
}
