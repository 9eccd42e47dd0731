"""Mistakes in kit code that mypy --strict catches: each marked line gets exactly that error."""

from __future__ import annotations

from statemachine_agent import Context, Workflow
from statemachine_agent.testing import Allowed, ScriptedModel, check_workflow


class Job(Context):
    attempts: int = 0


wf = Workflow("job", Job)
wf.add_state("go", lambda c: None, initial=True)
wf.terminal("done")
wf.transition("go", "done")

check_workflow(wf, allow=frozenset({"spent_budgets"}))  # E: arg-type
check_workflow(wf, allow=Allowed.SPENT_BUDGETS)  # E: arg-type
check_workflow(wf, model="http://127.0.0.1/v1")  # E: arg-type
check_workflow(wf, events="yes")  # E: arg-type
ScriptedModel(replies=["valid"])  # E: arg-type
