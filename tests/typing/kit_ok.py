"""mypy --strict checks the testing kit as a user writes it: async policies and invariants, typed
opt-outs, the scripted model, waits' payloads for follow()."""

from __future__ import annotations

from hypothesis import strategies as st
from pydantic import BaseModel

from statemachine_agent import UNSET, Context, Decision, RunResult, Workflow
from statemachine_agent.events import Event
from statemachine_agent.llm import LLMPolicy
from statemachine_agent.testing import (
    Allowed,
    KitReport,
    ScriptedModel,
    check_workflow,
    contexts,
    follow,
    invariant,
    llm_replies,
    path_invariant,
    replay,
    shortest_paths,
)


class Approval(BaseModel):
    ok: bool


class Order(Context):
    amount: int
    approval: Approval = UNSET


wf = Workflow("order", Order)
wf.wait("approve", event="approval", payload=Approval, writes=["approval"], initial=True)
wf.add_state("decide", lambda c: None, decision=True, reads=["amount"])
wf.terminal("done")
wf.terminal("refused", outcome="failure")
wf.transition("approve", "decide")
wf.transition("decide", "done")
wf.transition("decide", "refused")


async def policy(decision: Decision[Order]) -> str:
    return decision.options[0].name


@invariant
async def positive(ctx: Order) -> bool:
    return ctx.amount >= 0


@path_invariant
def ends(result: RunResult[Order]) -> bool:
    return result.terminal in ("done", "refused")


async def hook(event: Event) -> None:
    return None


report: KitReport = check_workflow(wf, policy=policy, invariants=[positive], path_invariants=[ends], hooks=[hook],
                                   contexts_from=contexts(Order, amount=st.integers(0, 9)),
                                   allow=frozenset({Allowed.SPENT_BUDGETS, Allowed.UNROUTED_ERRORS}), events=True)
with ScriptedModel(replies=llm_replies) as model:
    check_workflow(wf, policy=LLMPolicy(base_url=model.url, model="fake"), model=model)
result: RunResult[object] = replay(wf, "story.json", allow={Allowed.GUARD_ERRORS})
for case in shortest_paths(wf):
    follow(wf, case, Order(amount=1), payloads={"approval": Approval(ok=True)})
