"""Benchmark of the LLM adapter (not a test): what a decision costs beyond the HTTP request itself.

Against a scripted OpenAI-compatible server on 127.0.0.1 (answering at once, so the figures are the
client side only), in the same run:

1. baseline: the bare request a hand-written policy would make: one httpx POST of the same body,
   ``response.json()`` and a dict lookup;
2. ``LLMPolicy`` deciding in a real workflow run: the conversation, the request body, the reply
   parsed, the answer validated by the runner, the usage recorded;
3. the same with a durable run (``MemoryStore``): the reply journaled and committed with the step.

Each figure is the median of several repeats; overheads are differences to the baseline measured in
the same repeat. Run: ``python benchmarks/bench_llm.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import httpx

from statemachine_agent import Context, Workflow
from statemachine_agent.llm import LLMPolicy
from statemachine_agent.llm.testing import FakeOpenAIServer, tool_reply
from statemachine_agent.stores import MemoryStore


class Ctx(Context):
    """A pull request."""

    text: str


def workflow() -> Any:
    wf = Workflow("review", Ctx)
    wf.add_state("triage", lambda ctx: None, initial=True, reads=["text"], decision=True)
    wf.terminal("approved")
    wf.terminal("rejected", outcome="failure")
    wf.transition("triage", "approved", name="approve", description="the change is good")
    wf.transition("triage", "rejected", name="reject", description="the change is bad")
    return wf.compile()


async def bare(url: str, body: dict[str, Any], n: int) -> float:
    async with httpx.AsyncClient(timeout=60.0, trust_env=False) as client:
        payload = json.dumps(body).encode()
        t0 = time.perf_counter()
        for _ in range(n):
            r = await client.post(f"{url}/chat/completions", content=payload,
                                  headers={"Content-Type": "application/json"})
            data = r.json()
            assert json.loads(data["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
        return (time.perf_counter() - t0) / n


async def decided(url: str, n: int, *, durable: bool) -> float:
    compiled = workflow()
    policy = LLMPolicy(base_url=url, model="fake", server="llama-cpp-python")
    store = MemoryStore() if durable else None
    try:
        await compiled.run(Ctx(text="warm up"), policy=policy, store=store)
        t0 = time.perf_counter()
        for _ in range(n):
            result = await compiled.run(Ctx(text="All tests pass."), policy=policy, store=store)
            assert result.terminal == "approved"
        return (time.perf_counter() - t0) / n
    finally:
        if store is not None:
            store.close()
        await policy.chat.aclose()


async def main(quick: bool) -> None:
    n, repeats = (50, 3) if quick else (200, 5)
    with FakeOpenAIServer([tool_reply("choose_transition", {"transition": "approve"})]) as server:
        compiled = workflow()
        # the same body the policy sends, for the baseline
        policy = LLMPolicy(base_url=server.url, model="fake", server="llama-cpp-python")
        await compiled.run(Ctx(text="All tests pass."), policy=policy)
        body = server.requests[-1].body
        await policy.chat.aclose()
        rows: dict[str, list[float]] = {"bare": [], "policy": [], "durable": []}
        for _ in range(repeats):
            rows["bare"].append(await bare(server.url, body, n))
            rows["policy"].append(await decided(server.url, n, durable=False))
            rows["durable"].append(await decided(server.url, n, durable=True))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"bare httpx request+parse:      {med['bare'] * 1e3:7.3f} ms per decision (baseline)")
    print(f"LLMPolicy in a run:            {med['policy'] * 1e3:7.3f} ms  ({med['policy'] / med['bare']:.2f}x, "
          f"+{(med['policy'] - med['bare']) * 1e3:.3f} ms)")
    print(f"LLMPolicy in a durable run:    {med['durable'] * 1e3:7.3f} ms  ({med['durable'] / med['bare']:.2f}x, "
          f"+{(med['durable'] - med['bare']) * 1e3:.3f} ms)")
    print("(a real model answers in ~370 ms here: the adapter's share is the difference to the baseline)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    asyncio.run(main(parser.parse_args().quick))
