"""mypy checks the LLM API as a user writes it: the policy and the step fit the workflow's types."""

from __future__ import annotations

from pydantic import BaseModel

from statemachine_agent import UNSET, Context, RunResult, Usage, Workflow
from statemachine_agent.llm import ChatModel, LLMPolicy, ModelCall, Price, llm_step


class Summary(BaseModel):
    answer: str


class Ctx(Context):
    question: str
    summary: Summary = UNSET


chat = ChatModel(base_url="http://127.0.0.1:8765/v1", model="smollm2", server="llama-cpp-python",
                 prices={"smollm2": Price(input=0.1, output=0.4)})
wf = Workflow("typed", Ctx)
wf.add_state("write", llm_step(chat, write="summary", output=Summary, prompt=lambda ctx: ctx.question),
             initial=True, reads=["question"], writes=["summary"])
wf.terminal("done")
wf.transition("write", "done")
result: RunResult[Ctx] = wf.compile().run_sync(Ctx(question="q"), policy=LLMPolicy(chat=chat), token_budget=1000,
                                               cost_budget=0.5)
usage: Usage = result.usage
calls: tuple[ModelCall, ...] = result.path[0].model_calls
tokens: int = usage.total_tokens + calls[0].input_tokens
