"""Three agents, each with every bug class of issue 18 seeded in turn, and the one test a user wrote
for each (the same test whether a bug is seeded or not). ``benchmarks/kit_hit_rate.py`` runs them.

- ``research``: the example (statemachine_agent/examples/research.py), rebuilt here with one seeded
  change at a time; for the policy bug classes its choice after a search is a decision answered by a
  policy of the user's (as an LLM-driven version of it would be).
- ``refunds``: waits for a person's approval, refunds through an ``at_most_once`` tool (an unknown
  outcome is looked up, not paid again), retries a flaky lookup, and routes by an async policy.
- ``triage``: an async LLM policy (``LLMPolicy`` on the kit's scripted OpenAI-compatible server,
  wrapped in a guardrail of the user's), a bounded clarification loop, an ``at_most_once`` escalation.

A seeded bug changes only what its class names; everything else, and the user's test, stays.
"""

from __future__ import annotations

import enum
import itertools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from hypothesis import strategies as st
from pydantic import BaseModel, Field

from statemachine_agent import UNSET, Context, RunResult, Workflow, guard
from statemachine_agent.errors import EffectOutcomeUnknown, ToolFailed
from statemachine_agent.examples import research as example
from statemachine_agent.llm import LLMPolicy
from statemachine_agent.policies import Decision
from statemachine_agent.testing import (
    ScriptedModel,
    check_crashes,
    check_workflow,
    contexts,
    faults,
    invariant,
    path_invariant,
)
from statemachine_agent.tools import Retry, Tools


class Bug(enum.StrEnum):
    """The bug classes of issue 18's table, in its order."""

    RETRY_OFF_BY_ONE = "off-by-one in a retry guard"
    ONE_BRANCH_WRITE = "field written on one branch only"
    UNROUTED_ERROR = "a tool error no transition routes"
    POLICY_LOOP = "policy loop without progress"
    UNDECLARED_GUARD_READ = "a guard reading an undeclared field"
    RARE_INVARIANT = "a user invariant broken on a rare path"
    ASYNC_POLICY = "a bug in an async policy"
    ERROR_EDGE = "a bug behind an error edge only a fault reaches"
    CRASH = "a crash between durable steps"


@dataclass(frozen=True)
class Case:
    """One agent, with one bug seeded (or none): ``test()`` is the user's test (it raises
    ``AssertionError`` when the kit finds something); a failure counts as this bug when its first line
    matches ``expect``."""

    agent: str
    bug: Bug | None
    test: Callable[[], object]
    expect: str


DERANDOMIZE = False
"""The kit's default (random draws); tests/test_kit_hit_rate.py sets it to draw the same examples each time."""


# --- research: the example, one change at a time --------------------------------------------------------
PAGES = example.Corpus(example.CORPUS)
_SUMMARIZE = {s.name: s for s in example.workflow.spec().states}["summarize"].action
"""The example's own summarizer (the seeded changes never touch it)."""
QUESTIONS = st.sampled_from(["How does the checker bound loops?", "zebra quokka", "checker quokka",
                             "how is it?", "retries with tenacity"])


class Counted(example.ResearchContext):
    """The example's context with a refinement counter (for the off-by-one: the author counted)."""

    refinements: int = Field(default=0, ge=0)


_ANSWERS = itertools.count()


def research(bug: Bug | None = None, *, decided: bool | None = None) -> Workflow[Any]:
    """The research example; ``bug`` seeds one change. With ``decided`` (the default for the policy
    classes) a policy chooses what follows a search."""
    if decided is None:
        decided = bug in (Bug.POLICY_LOOP, Bug.ASYNC_POLICY)
    wf: Workflow[Any] = Workflow("research", Counted if bug is Bug.RETRY_OFF_BY_ONE else example.ResearchContext)

    @wf.state(initial=True, reads=["question"], writes=["query"])
    def plan(ctx: Any) -> None:
        ctx.query = example.strict_query(ctx.question)

    @wf.tool(timeout=5.0, retry=Retry(attempts=2, backoff=0.05, never=(example.SearchUnavailable,)))
    def search_docs(query: str, limit: int = 5) -> list[example.Hit]:
        return PAGES.search(query, limit)

    one_branch = bug is Bug.ONE_BRANCH_WRITE

    @wf.state(reads=["query"], writes=[] if one_branch else ["hits"], optional_writes=["hits"] if one_branch else [],
              max_visits=2, tools=["search_docs"], decision=decided)
    async def search(ctx: Any, tools: Tools) -> None:
        hits = await tools.call("search_docs", query=ctx.query)
        if hits or not one_branch:  # the bug: no hits, nothing written
            ctx.hits = hits

    refine_writes = ["query", "broadened", "refinements"] if bug is Bug.RETRY_OFF_BY_ONE else ["query", "broadened"]

    @wf.state(reads=["question", "broadened", *(["refinements"] if bug is Bug.RETRY_OFF_BY_ONE else [])],
              writes=refine_writes, max_visits=1)
    def refine(ctx: Any) -> None:
        ctx.query = example.broad_query(ctx.question)
        ctx.broadened = True
        if bug is Bug.RETRY_OFF_BY_ONE:
            ctx.refinements += 1

    @wf.state(reads=["question", "hits", "broadened"], writes=["answer", "sources"])
    def summarize(ctx: Any) -> None:
        _SUMMARIZE(ctx)
        if bug is Bug.RARE_INVARIANT and ctx.broadened:  # the bug: a broadened answer loses its sources
            ctx.sources = []
        if bug is Bug.CRASH:  # the bug: an answer numbered by a process-wide counter (not deterministic)
            ctx.answer = f"{ctx.answer} (answer {next(_ANSWERS)})"

    wf.terminal("done", description="answered from the corpus")
    wf.terminal("not_found", outcome="failure", description="nothing in the corpus matched")
    wf.terminal("failed", outcome="failure", description="the search could not run")

    has_hits = wf.guard(lambda c: bool(c.hits), name="has hits", reads=["hits"])
    if bug is Bug.RETRY_OFF_BY_ONE:
        can_broaden = wf.guard(lambda c: c.refinements <= 1, name="may refine", reads=["refinements"])  # meant < 1
    elif bug is Bug.UNDECLARED_GUARD_READ:
        can_broaden = wf.guard(lambda c: not c.broadened and bool(c.query), name="not broadened yet",
                               reads=["broadened"])  # reads query, undeclared
    else:
        can_broaden = wf.guard(lambda c: not c.broadened, name="not broadened yet", reads=["broadened"])
    wf.transition(plan, search)
    wf.transition(search, summarize, guard=has_hits, description="answer from the hits")
    wf.transition(search, refine, guard=None if decided else can_broaden, description="broaden the query")
    wf.transition(search, "not_found", default=not decided, description="give up")
    wf.transition(refine, search)
    wf.transition(summarize, "done")
    if bug is Bug.ERROR_EDGE:
        @wf.state(reads=["query", "sources"], writes=["answer"])
        def explain(ctx: Any) -> None:  # the bug: no sources yet when the search failed (an IndexError)
            ctx.answer = f"the search for {ctx.query} failed; last source: {ctx.sources[0]}"

        wf.on_error(search, example.SearchUnavailable, explain)
        wf.transition(explain, "failed")
    elif bug is not Bug.UNROUTED_ERROR:  # the bug: the search's own error is not routed
        wf.on_error(search, example.SearchUnavailable, "failed")
    wf.on_error(plan, ValueError, "failed")
    return wf


def _route(ctx: Any, *, loops: bool) -> str:
    if ctx.hits:
        return "search_to_summarize"
    if loops or not ctx.broadened:  # the loop: refine again, though refining changes nothing more
        return "search_to_refine"
    return "search_to_not_found"


def route_after_search(decision: Decision[Any]) -> str:
    """The user's policy for the research agent's choice after a search."""
    return _route(decision.context, loops=False)


def looping_route(decision: Decision[Any]) -> str:
    return _route(decision.context, loops=True)


async def async_route(decision: Decision[Any]) -> str:
    ctx = decision.context
    if not ctx.hits and ctx.broadened:
        return "search_to_failed"  # the bug: no such transition (meant search_to_not_found)
    return _route(ctx, loops=False)


@path_invariant
def answers_cite_sources(result: RunResult[Any]) -> bool:
    """A run that answers names at least one page it answered from."""
    return result.terminal != "done" or bool(result.context.sources)


def research_test(bug: Bug | None) -> Callable[[], object]:
    wf = research(bug)
    # The search is local: the user's fault plan is the one error it can raise.
    model = Counted if bug is Bug.RETRY_OFF_BY_ONE else example.ResearchContext
    kw: dict[str, Any] = {"contexts_from": contexts(model, question=QUESTIONS),
                          "tool_faults": faults(errors=[example.SearchUnavailable], hang=False, invalid=False),
                          "path_invariants": [answers_cite_sources], "print_coverage": False}
    if bug is Bug.POLICY_LOOP:
        kw["policy"] = looping_route
    elif bug is Bug.ASYNC_POLICY:
        kw["policy"] = async_route
    kw["derandomize"] = DERANDOMIZE
    tests = [lambda: check_workflow(wf, **kw),
             lambda: check_crashes(wf, contexts_from=kw["contexts_from"], derandomize=DERANDOMIZE)]
    if bug is None:  # the version whose choice after a search is the user's (correct) policy
        tests.append(lambda: check_workflow(research(decided=True), **kw, policy=route_after_search))
    return _suite(tests)


def _suite(tests: list[Callable[[], object]]) -> Callable[[], None]:
    """The user's test module: its tests in order, stopping at the first failure."""
    def run() -> None:
        for test in tests:
            test()
    return run


# --- refunds: waits, an at_most_once tool, retries, an async policy ---------------------------------------
class Approval(BaseModel):
    ok: bool
    by: str = Field(min_length=1)


class Refund(Context):
    order: str = Field(pattern=r"[A-Z]{2}[0-9]{3}")
    amount: int = Field(ge=1, le=2000)
    attempts: int = 0
    status: str = UNSET
    note: str | None = None
    approval: Approval = UNSET
    receipt: str = UNSET


def order_status(order: str) -> str:
    """What the order service says: deterministic in the order's code."""
    return ("paid", "shipped", "refunded", "pending", "paid")[zlib.crc32(order.encode()) % 5]


def refunds(bug: Bug | None = None) -> Workflow[Refund]:
    """lookup (retried) -> review (a policy) -> approve (waits; large refunds) -> pay (at_most_once) -> done."""
    wf = Workflow("refunds", Refund)

    @wf.tool
    async def fetch_order(order: str) -> str:
        return order_status(order)

    @wf.tool(effect="at_most_once")
    async def refund(order: str, amount: int, memo: str) -> str:
        return f"R-{order}-{amount}"

    @wf.tool
    async def refund_status(order: str) -> str:
        return f"R-{order}-looked-up"

    one_branch = bug is Bug.ONE_BRANCH_WRITE

    @wf.state(initial=True, reads=["order"], writes=["status", *([] if one_branch else ["note"])],
              optional_writes=["note"] if one_branch else [], tools=["fetch_order"])
    async def lookup(ctx: Refund, tools: Tools) -> None:
        ctx.status = await tools.call("fetch_order", order=ctx.order)
        if ctx.status == "shipped" or not one_branch:  # the bug: only shipped orders get a note
            ctx.note = f"order was {ctx.status}"


    @wf.state(reads=["attempts"], writes=["attempts"], max_visits=2)
    def backoff(ctx: Refund) -> None:
        ctx.attempts += 1

    wf.add_state("review", lambda c: None, decision=True, reads=["status", "amount"])
    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], timeout=86400, on_timeout="expired")

    @wf.state(reads=["order", "amount"], optional_reads=["note"], writes=["receipt"], tools=["refund"])
    async def pay(ctx: Refund, tools: Tools) -> None:
        memo = ctx.note.capitalize()  # type: ignore[union-attr]  # with the bug: None on every branch but one
        ctx.receipt = await tools.call("refund", order=ctx.order, amount=ctx.amount, memo=memo)

    if bug is Bug.ERROR_EDGE:
        @wf.state(reads=["order"], optional_reads=["receipt"], writes=["receipt"], tools=["refund_status"])
        async def verify(ctx: Refund, tools: Tools) -> None:  # the bug: it reads the receipt the lost call never wrote
            ctx.receipt = ctx.receipt or await tools.call("refund_status", order=ctx.order)
    elif bug is not Bug.CRASH:
        rare = bug is Bug.RARE_INVARIANT

        @wf.state(reads=["order", *(["attempts"] if rare else [])], writes=["receipt"], tools=["refund_status"])
        async def verify(ctx: Refund, tools: Tools) -> None:
            # The bug: after a retried lookup (its cache keyed the other way), it asks about the wrong order.
            order = ctx.order[::-1] if rare and ctx.attempts else ctx.order
            ctx.receipt = await tools.call("refund_status", order=order)

    for name in ("done",):
        wf.terminal(name)
    for name in ("rejected", "expired", "failed"):
        wf.terminal(name, outcome="failure")

    if bug is Bug.RETRY_OFF_BY_ONE:
        may_retry = guard(lambda c: c.attempts <= 2, name="may retry", reads=["attempts"])  # meant < 2
    else:
        may_retry = guard(lambda c: c.attempts < 2, name="may retry", reads=["attempts"])
    if bug is Bug.UNDECLARED_GUARD_READ:
        small = guard(lambda c: c.amount < 100 and c.status != "refunded", name="small", reads=["amount"])
    else:
        small = guard(lambda c: c.amount < 100 and c.status != "refunded", name="small", reads=["amount", "status"])
    wf.transition(lookup, "review")
    wf.on_error(lookup, ToolFailed, backoff)
    wf.transition(backoff, lookup, guard=may_retry)
    wf.transition(backoff, "failed", default=True)
    wf.transition("review", pay, guard=small, description="refund at once")
    wf.transition("review", "approve", description="ask a person")
    wf.transition("review", "rejected", description="refuse")
    wf.transition("review", lookup, max_traversals=2, description="look the order up again")
    wf.transition("approve", pay, guard=guard(lambda c: c.approval.ok, name="approved", reads=["approval"]))
    wf.transition("approve", "rejected", default=True)
    wf.transition(pay, "done")
    if bug is Bug.CRASH:
        @wf.state(reads=["order", "amount"], writes=["receipt"], tools=["refund"])
        async def pay_again(ctx: Refund, tools: Tools) -> None:  # the bug: unknown is handled by paying again
            ctx.receipt = await tools.call("refund", order=ctx.order, amount=ctx.amount, memo="retry")

        wf.on_error(pay, EffectOutcomeUnknown, pay_again)
        wf.transition(pay_again, "done")
        wf.on_error(pay_again, EffectOutcomeUnknown, "failed")
        wf.on_error(pay_again, ToolFailed, "failed")
    else:
        wf.on_error(pay, EffectOutcomeUnknown, "verify")
        wf.transition("verify", "done")
        wf.on_error("verify", ToolFailed, "failed")
    if bug is not Bug.UNROUTED_ERROR:
        wf.on_error(pay, ToolFailed, "failed")
    return wf


async def refund_policy(decision: Decision[Refund]) -> str:
    """The user's policy (async: in production it asks a fraud service first)."""
    ctx = decision.context
    if ctx.status in ("refunded", "pending"):
        return "review_to_rejected"
    return "review_to_pay" if ctx.amount < 100 else "review_to_approve"


async def looping_refund_policy(decision: Decision[Refund]) -> str:
    ctx = decision.context
    if ctx.status == "pending":
        return "review_to_lookup"  # the bug: look again, though the order service answers the same
    return await refund_policy(decision)


async def async_refund_policy(decision: Decision[Refund]) -> str:
    if decision.context.amount >= 1000 and decision.context.status == "paid":
        return "review_to_pay"  # the bug: big refunds of paid orders skip the approval, which the guard forbids
    return await refund_policy(decision)


@invariant
def at_most_two_retries(ctx: Refund) -> bool:
    return ctx.attempts <= 2


@path_invariant
def never_refunded_twice(result: RunResult[Refund]) -> bool:
    """An order the service says was refunded is never refunded again."""
    ctx = result.context
    paid = any(s.state == "pay" for s in result.path)
    return not (paid and ctx.status == "refunded")


@path_invariant
def paid_only_if_small_or_approved(result: RunResult[Refund]) -> bool:
    ctx = result.context
    paid = any(s.state == "pay" for s in result.path)
    return not paid or ctx.amount < 100 or (ctx.approval is not UNSET and ctx.approval.ok)


@path_invariant
def receipts_name_their_order(result: RunResult[Refund]) -> bool:
    receipt = result.context.receipt
    return receipt is UNSET or result.context.order in receipt


REFUND_INPUTS = st.builds(Refund, order=st.from_regex(r"[A-Z]{2}[0-9]{3}", fullmatch=True),
                          amount=st.integers(1, 2000))


def refunds_test(bug: Bug | None) -> Callable[[], object]:
    wf = refunds(bug)
    policy = {Bug.POLICY_LOOP: looping_refund_policy,
              Bug.ASYNC_POLICY: async_refund_policy}.get(bug, refund_policy)  # type: ignore[arg-type]
    return _suite([
        lambda: check_workflow(wf, contexts_from=REFUND_INPUTS, policy=policy, invariants=[at_most_two_retries],
                               path_invariants=[never_refunded_twice, paid_only_if_small_or_approved,
                                                receipts_name_their_order], print_coverage=False,
                               derandomize=DERANDOMIZE),
        lambda: check_crashes(wf, contexts_from=REFUND_INPUTS, invariants=[at_most_two_retries],
                              derandomize=DERANDOMIZE)])


# --- triage: an async LLM policy behind a guardrail --------------------------------------------------------
class Ticket(Context):
    text: str
    priority: Literal["low", "high", "urgent"]
    retries: int = 0
    clarifications: int = 0
    category: str | None = None
    reply: str = UNSET
    ticket_id: str = UNSET
    notified: bool = False


TEXTS = st.sampled_from(["my card was charged twice", "where is my parcel?", "the app crashes on start",
                         "refund please", "hello"])


def triage(bug: Bug | None = None) -> Workflow[Ticket]:
    """classify (retried) -> route (an LLM) -> answer | clarify (loop) | escalate (at_most_once) -> done | escalated."""
    wf = Workflow("triage", Ticket)

    @wf.tool
    async def classify_text(text: str) -> str:
        for word, category in (("charg", "billing"), ("refund", "billing"), ("parcel", "shipping"),
                               ("crash", "bug")):
            if word in text:
                return category
        return "other"

    @wf.tool
    async def draft_reply(category: str) -> str:
        return f"Thanks for writing about {category}."

    @wf.tool(effect="at_most_once")
    async def open_ticket(text: str, severity: str) -> str:
        return f"{severity}-{zlib.crc32(text.encode()) % 1000:03d}"

    one_branch = bug is Bug.ONE_BRANCH_WRITE

    @wf.state(initial=True, reads=["text"], writes=[] if one_branch else ["category"],
              optional_writes=["category"] if one_branch else [], tools=["classify_text"])
    async def classify(ctx: Ticket, tools: Tools) -> None:
        category = await tools.call("classify_text", text=ctx.text)
        if category != "other" or not one_branch:  # the bug: "other" writes no category
            ctx.category = category

    @wf.state(reads=["retries"], writes=["retries"], max_visits=2)
    def backoff(ctx: Ticket) -> None:
        ctx.retries += 1

    wf.add_state("route", lambda c: None, decision=True, reads=["text", "priority"], optional_reads=["category"])

    @wf.state(reads=["clarifications"], writes=[] if bug is Bug.POLICY_LOOP else ["clarifications"], max_visits=2)
    def clarify(ctx: Ticket) -> None:
        if bug is not Bug.POLICY_LOOP:  # the bug: asking again records nothing, so the loop's guard never closes
            ctx.clarifications += 1

    @wf.state(optional_reads=["category"], writes=["reply"], tools=["draft_reply"])
    async def answer(ctx: Ticket, tools: Tools) -> None:
        ctx.reply = await tools.call("draft_reply", category=ctx.category.title())  # type: ignore[union-attr]

    split = bug is Bug.CRASH

    @wf.state(reads=["text", "priority", "category", *(["retries"] if bug is Bug.RARE_INVARIANT else [])],
              writes=["ticket_id", *([] if split else ["notified"])],
              tools=["open_ticket"])
    async def escalate(ctx: Ticket, tools: Tools) -> None:
        severity = "P1" if ctx.priority == "urgent" else "P2"
        if bug is Bug.RARE_INVARIANT and ctx.category == "billing" and ctx.priority == "urgent" and ctx.retries:
            severity = "P2"  # the bug: an urgent billing ticket classified after a retry loses its severity
        ctx.ticket_id = await tools.call("open_ticket", text=ctx.text, severity=severity)
        if not split:
            ctx.notified = True

    if split:
        @wf.state(writes=["notified"])
        def notify(ctx: Ticket) -> None:  # the bug: the ticket is open one commit before anyone is told
            ctx.notified = True

    if bug is Bug.ERROR_EDGE:
        @wf.state(optional_reads=["reply"], writes=["reply"])
        def apologize(ctx: Ticket) -> None:  # the bug: there is no draft when drafting failed
            ctx.reply = "Sorry, " + (ctx.reply or "we could not answer")

        wf.terminal("apologized")
    wf.terminal("done")
    wf.terminal("escalated")
    wf.terminal("failed", outcome="failure")

    may_retry = (guard(lambda c: c.retries <= 2, name="may retry", reads=["retries"]) if bug is Bug.RETRY_OFF_BY_ONE
                 else guard(lambda c: c.retries < 2, name="may retry", reads=["retries"]))
    not_urgent = guard(lambda c: c.priority != "urgent", name="not urgent",
                       reads=["category"] if bug is Bug.UNDECLARED_GUARD_READ else ["priority"])
    wf.transition(classify, "route")
    wf.on_error(classify, ToolFailed, backoff)
    wf.transition(backoff, classify, guard=may_retry)
    wf.transition(backoff, "failed", default=True)
    wf.transition("route", answer, guard=not_urgent, description="answer from the help pages")
    wf.transition("route", clarify, guard=guard(lambda c: c.clarifications < 2, name="may ask",
                                                 reads=["clarifications"]), description="ask the customer")
    wf.transition("route", escalate, description="open a ticket for a person")
    wf.transition(clarify, "route")
    wf.transition(answer, "done")
    if split:
        wf.transition(escalate, notify)
        wf.transition(notify, "escalated")
    else:
        wf.transition(escalate, "escalated")
    if bug is Bug.ERROR_EDGE:
        wf.on_error(answer, ToolFailed, apologize)
        wf.transition(apologize, "apologized")
    elif bug is not Bug.UNROUTED_ERROR:
        wf.on_error(answer, ToolFailed, escalate)
    wf.on_error(escalate, EffectOutcomeUnknown, "failed")
    wf.on_error(escalate, ToolFailed, "failed")
    return wf


def guardrail(llm: LLMPolicy, *, bug: bool = False) -> Callable[[Decision[Ticket]], Any]:
    """The user's policy: the model decides, but a high-priority ticket it would answer goes to a person."""
    async def policy(decision: Decision[Ticket]) -> Any:
        choice = await llm(decision)
        if decision.context.priority == "high" and choice == "route_to_answer":
            return "route_to_escalation" if bug else "route_to_escalate"  # the bug: a misspelt name
        return choice
    return policy


@invariant
def open_tickets_are_notified(ctx: Ticket) -> bool:
    return ctx.ticket_id is UNSET or ctx.notified


@path_invariant
def urgent_tickets_are_p1(result: RunResult[Ticket]) -> bool:
    ctx = result.context
    return ctx.priority != "urgent" or ctx.ticket_id is UNSET or ctx.ticket_id.startswith("P1")


TICKETS = st.builds(Ticket, text=TEXTS, priority=st.sampled_from(["low", "high", "urgent"]))


def triage_test(bug: Bug | None) -> Callable[[], object]:
    wf = triage(bug)

    def test() -> object:
        with ScriptedModel() as model:
            llm = LLMPolicy(base_url=model.url, model="scripted", retries=1)
            return check_workflow(wf, policy=guardrail(llm, bug=bug is Bug.ASYNC_POLICY), model=model,
                                  contexts_from=TICKETS, invariants=[open_tickets_are_notified],
                                  path_invariants=[urgent_tickets_are_p1], print_coverage=False,
                                  derandomize=DERANDOMIZE)
    return _suite([test, lambda: check_crashes(wf, contexts_from=TICKETS, invariants=[open_tickets_are_notified],
                                               derandomize=DERANDOMIZE)])


AGENTS: dict[str, Callable[[Bug | None], Callable[[], object]]] = {
    "research": research_test, "refunds": refunds_test, "triage": triage_test}

EXPECT: dict[Bug, str] = {
    Bug.RETRY_OFF_BY_ONE: r"budget ran out|at_most_two_retries",
    Bug.ONE_BRANCH_WRITE: r"\[unset-read\]|before any step set it|'NoneType' object has no attribute",
    Bug.UNROUTED_ERROR: r"no error transition routes",
    Bug.POLICY_LOOP: r"budget ran out|policy answered",
    Bug.UNDECLARED_GUARD_READ: r"does not declare",
    Bug.RARE_INVARIANT: r"answers_cite_sources|receipts_name_their_order|urgent_tickets_are_p1",
    Bug.ASYNC_POLICY: r"policy answered",
    Bug.ERROR_EDGE: r"raised|before any step set it",
    Bug.CRASH: r"not deterministic|ran 2 times|open_tickets_are_notified|ended",
}


def case(agent: str, bug: Bug | None) -> Case:
    return Case(agent, bug, AGENTS[agent](bug), EXPECT[bug] if bug is not None else "")
