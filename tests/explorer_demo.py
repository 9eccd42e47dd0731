"""A refund desk, for the run explorer's tests, screenshots and benchmark: a tool call (read), a
decision with a rejected answer, a model call's usage, a wait for a person's approval, an
at-most-once payment, and a loop that a test or the benchmark runs for many steps.

``python -m pytest`` puts tests/ on ``sys.path``, so the explorer finds it as ``explorer_demo:workflow``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from statemachine_agent import UNSET, Context, Decision, Option, Tools, Workflow
from statemachine_agent.errors import EffectOutcomeUnknown
from statemachine_agent.stores import SQLiteStore
from statemachine_agent.tools import Retry
from statemachine_agent.usage import ModelCall


class Approval(BaseModel):
    """What the person approving a refund sends."""

    approved: bool
    note: str = ""
    cap: int = Field(default=100, ge=0, le=10_000, description="the most that may be refunded")
    channel: Literal["card", "voucher"] = "card"


class Refund(Context):
    order: str
    amount: int
    customer: dict[str, str] = UNSET
    draft: str = UNSET
    approval: Approval = UNSET
    receipt: str = UNSET
    log: list[str] = UNSET


workflow = Workflow("refund", Refund)


_looked_up: set[str] = set()
_looked_up_lock = threading.Lock()


@workflow.tool(effect="read", retry=Retry(attempts=3, backoff=0.0))
def find_order(order: str) -> dict[str, str]:
    """Looks the order up (the order service drops the first request for each order: a retried call)."""
    with _looked_up_lock:
        first = order not in _looked_up
        _looked_up.add(order)
    if first:
        raise ConnectionError(f"the order service dropped the request for {order}")
    return {"order": order, "name": "Ada", "tier": "gold"}


@workflow.tool(effect="at_most_once")
def pay(order: str, amount: int) -> str:
    """Pays the refund: never twice."""
    return f"refunded {amount} on {order}"


@workflow.state(initial=True, reads=["order"], writes=["customer", "log"], tools=["find_order"])
async def lookup(ctx: Refund, tools: Tools) -> None:
    ctx.customer = await tools.call("find_order", order=ctx.order)
    ctx.log = ["looked up"]


@workflow.state(reads=["customer", "amount"], writes=["draft", "log"], tools=[])
async def draft(ctx: Refund, tools: Tools) -> None:
    # A stand-in for a model writing the note: its usage is recorded as a real model call's would be.
    await tools.record_model_call(ModelCall(provider="openai", model="small-model", mode="json_schema",
                                            purpose="answer", input_tokens=412, output_tokens=57, latency=0.8,
                                            finish_reason="stop", attempt=1, http_attempts=2, cost=0.00031))
    ctx.draft = f"Refund {ctx.amount} to {ctx.customer['name']}"
    ctx.log.append("drafted")


workflow.state(lambda ctx: None, name="triage", decision=True, reads=["amount"],
               description="small refunds go through; large ones need a person")

workflow.wait("approve", event="approval", payload=Approval, writes=["approval"], timeout=3 * 24 * 3600,
              on_timeout="expired")


@workflow.state(reads=["order", "amount", "log"], writes=["receipt", "log"], tools=["pay"])
async def refund(ctx: Refund, tools: Tools) -> None:
    ctx.receipt = await tools.call("pay", order=ctx.order, amount=ctx.amount)
    ctx.log.append("paid")


workflow.terminal("refunded")
workflow.terminal("declined", outcome="failure")
workflow.terminal("expired", outcome="failure")
workflow.terminal("unknown", outcome="failure")
workflow.transition("lookup", "draft")
workflow.transition("draft", "triage")
workflow.transition("triage", "refund", description="small: refund now")
workflow.transition("triage", "approve", description="large: ask a person")
workflow.transition("approve", "refund", guard=workflow.guard(lambda c: c.approval.approved, name="approved",
                                                              reads=["approval"]))
workflow.transition("approve", "declined", default=True)
workflow.transition("refund", "refunded")
workflow.on_error("refund", EffectOutcomeUnknown, "unknown")
compiled = workflow.compile()


def policy(decision: Decision[Refund]) -> Option | str:
    """First a word the workflow does not know (rejected, and recorded), then the rule."""
    if decision.attempt == 1:
        return "shrug"
    return "triage_to_refund" if decision.context.amount < 100 else "triage_to_approve"


# --- a long loop: one state that counts, for runs of many steps ----------------------------------------
class Count(Context):
    n: int = 0
    limit: int
    seen: list[int] = UNSET


counter = Workflow("counter", Count)
GATE: dict[str, threading.Event] = {}
"""Run id -> an event each step of ``count`` waits for (a test advances a live run step by step)."""


@counter.state(initial=True, reads=["n", "limit"], optional_reads=["seen"], writes=["n", "seen"],
               max_visits=100_000)
def count(ctx: Count) -> None:
    gate = GATE.get("current")
    if gate is not None:
        gate.wait(30)
        gate.clear()
    ctx.n += 1
    ctx.seen = [*ctx.seen[-4:], ctx.n] if ctx.n > 1 else [ctx.n]


counter.terminal("counted")
counter.terminal("stopped", outcome="failure")
counter.transition("count", "count", guard=counter.guard(lambda c: c.n < c.limit, name="more", reads=["n", "limit"]))
counter.transition("count", "counted", default=True)
counting = counter.compile()


def fill(path: Path) -> dict[str, str]:
    """A store with one run of each kind: small (done), large (waiting), declined, and a counter run;
    their ids by kind."""
    with _looked_up_lock:  # each order's first lookup is dropped, in every store filled
        _looked_up.clear()
    with SQLiteStore(path) as store:
        compiled.run_sync(Refund(order="A-1", amount=40), store=store, policy=policy, run_id="refund-small")
        compiled.run_sync(Refund(order="B-7", amount=900), store=store, policy=policy, run_id="refund-large")
        compiled.run_sync(Refund(order="C-3", amount=500), store=store, policy=policy, run_id="refund-declined")
        compiled.deliver_sync("refund-declined", "approval", {"approved": False, "note": "no receipt"}, store=store)
        counting.run_sync(Count(limit=5), store=store, run_id="count-5")
    return {"done": "refund-small", "waiting": "refund-large", "declined": "refund-declined", "count": "count-5"}
