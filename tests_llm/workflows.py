"""Small decision workflows for the end-to-end tests: each has one decision state with described exits."""

from __future__ import annotations

from statemachine_agent import Context, Workflow
from statemachine_agent.compile import CompiledWorkflow

TRIAGE = ("approve", "reject", "request_changes")


class PullRequest(Context):
    description: str


def triage() -> CompiledWorkflow[PullRequest]:
    """Pull-request triage: approve, reject or request changes (all three always enabled)."""
    wf = Workflow("pr_triage", PullRequest)

    @wf.state(initial=True, reads=["description"], decision=True,
              description="Decide what to do with this pull request.")
    def review(ctx: PullRequest) -> None:
        """The model decides."""

    approved = wf.terminal("approved")
    rejected = wf.terminal("rejected", outcome="failure")
    changes = wf.terminal("changes_requested")
    wf.transition(review, approved, name="approve",
                  description="the change is correct, its tests pass and the reviewers are happy: merge it")
    wf.transition(review, rejected, name="reject",
                  description="the change is unwanted, harmful or out of scope: close it")
    wf.transition(review, changes, name="request_changes",
                  description="the idea is fine but something must be fixed first (failing tests, missing docs)")
    return wf.compile()


class Ticket(Context):
    text: str
    amount: int
    vip: bool = False


# (text, amount, vip): the guards leave two or three of the four exits enabled.
TICKETS = [
    ("My order arrived broken, I want my money back.", 40, False),
    ("The package never arrived, please refund me.", 250, False),
    ("How do I change my password?", 0, False),
    ("I was charged twice for the same order.", 80, True),
    ("Your product set my kitchen on fire, I will call a lawyer.", 900, True),
    ("Where can I download the invoice?", 0, True),
    ("Wrong size delivered, I want a refund.", 30, False),
    ("The app crashes when I open settings.", 0, False),
    ("I want to cancel and get my 500 euros back.", 500, False),
    ("Thanks, everything works great!", 0, True),
]


def refund_enabled(ctx: Ticket) -> bool:
    return 0 < ctx.amount <= 100


def escalate_enabled(ctx: Ticket) -> bool:
    return ctx.vip or ctx.amount > 100


def support() -> CompiledWorkflow[Ticket]:
    """Support-ticket routing with guards: refunds only up to 100, escalation only for VIPs or large
    amounts; the model must pick among what is enabled."""
    wf = Workflow("support", Ticket)

    @wf.state(initial=True, reads=["text", "amount", "vip"], decision=True,
              description="Route this customer ticket.")
    def route(ctx: Ticket) -> None:
        """The model decides."""

    refunded = wf.terminal("refunded")
    escalated = wf.terminal("escalated")
    answered = wf.terminal("answered")
    closed = wf.terminal("closed", outcome="failure")
    wf.transition(route, refunded, name="refund", guard=wf.guard(refund_enabled, name="small amount",
                                                                 reads=["amount"]),
                  description="the customer paid and wants the money back: refund the amount")
    wf.transition(route, escalated, name="escalate", guard=wf.guard(escalate_enabled, name="vip or large",
                                                                    reads=["vip", "amount"]),
                  description="a serious or expensive problem: hand it to a senior agent")
    wf.transition(route, answered, name="answer",
                  description="a question or a small problem: answer it with instructions")
    wf.transition(route, closed, name="close",
                  description="nothing to do (thanks, spam): close the ticket")
    return wf.compile()


def enabled_support_exits(text: str, amount: int, vip: bool) -> set[str]:
    ctx = Ticket(text=text, amount=amount, vip=vip)
    out = {"answer", "close"}
    if refund_enabled(ctx):
        out.add("refund")
    if escalate_enabled(ctx):
        out.add("escalate")
    return out
