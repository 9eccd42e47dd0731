"""The research agent with a local model in the loop: plan -> search -> assess -> (refine -> search) ->
summarize, over the same SQLite FTS5 corpus as :mod:`.research`.

- ``assess`` is a decision state: after the first search, the model reads the question and what was
  found and picks ``summarize`` or ``broaden`` (only those two, and only when both are enabled;
  :class:`~statemachine_agent.llm.LLMPolicy` constrains its answer to their names).
- ``summarize`` is an LLM step: the model writes a :class:`Summary` (an answer and the pages it
  used), validated by pydantic; an answer that does not fit is shown back to it once, then the run
  ends in ``no_summary`` with the reason.

Made for a small local model (``make demo-llm`` starts SmolLM2-135M behind llama.cpp's prebuilt
OpenAI-compatible server and passes ``--server llama.cpp``; see the Makefile). A model that small
answers fast but not always well: the workflow guarantees only that what it does is one of the
declared moves.

Run it: ``python -m statemachine_agent.examples.research_llm "How does the checker bound loops?"``
(``--url`` or ``STATEMACHINE_AGENT_LLM_URL``, default ``http://127.0.0.1:8765/v1``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from statemachine_agent import UNSET, Workflow
from statemachine_agent.errors import ModelError
from statemachine_agent.examples.research import (
    CORPUS,
    Corpus,
    Hit,
    ResearchContext,
    SearchUnavailable,
    broad_query,
    strict_query,
)
from statemachine_agent.llm import ChatModel, LLMPolicy, llm_step
from statemachine_agent.result import RunResult
from statemachine_agent.stores import SQLiteStore
from statemachine_agent.tools import Retry, Tools

__all__ = ["DEFAULT_URL", "LLMResearchContext", "Summary", "build", "default_url", "main"]

DEFAULT_URL = "http://127.0.0.1:8765/v1"
MODEL = "smollm2"
"""The model's name as ``make llm-server`` serves it (``--model_alias``)."""
EXCERPT_CHARS = 400
"""How much of each hit's text the summarizing model sees (the server's context is 2,048 tokens)."""


class Summary(BaseModel):
    """What the summarizing step writes: an answer and the pages it comes from."""

    answer: str = Field(min_length=40, max_length=600, description="one or two sentences answering the question")
    sources: list[str] = Field(min_length=1, max_length=5, description="the pages the answer comes from")


class LLMResearchContext(ResearchContext):
    """The research context, plus what the model sees of the hits and what it wrote."""

    found: list[str] = UNSET
    """One line per hit (page, heading, the start of its text): what the deciding model reads."""
    summary: Summary = UNSET


def default_url() -> str:
    """The server's URL: ``$STATEMACHINE_AGENT_LLM_URL``, else :data:`DEFAULT_URL`."""
    return os.environ.get("STATEMACHINE_AGENT_LLM_URL") or DEFAULT_URL


def _summary_type(pages: list[str]) -> type[BaseModel]:
    """:class:`Summary` with ``sources`` limited to the corpus's page names (an enum the server's
    grammar enforces), when there are any."""
    if not pages:
        return Summary
    page = Literal[tuple(pages)]  # type: ignore[valid-type]
    model: type[BaseModel] = create_model(
        "Summary", __base__=Summary,
        sources=(list[page], Field(min_length=1, max_length=5,  # type: ignore[valid-type]
                                   description="the pages the answer comes from")))
    return model


def _excerpts(ctx: LLMResearchContext) -> str:
    lines = [f"Question: {ctx.question}", "", "Excerpts from the documentation:"]
    for hit in ctx.hits[:3]:
        text = hit.text if len(hit.text) <= EXCERPT_CHARS else hit.text[:EXCERPT_CHARS] + "..."
        lines.append(f"[{hit.page}] {hit.heading}: {text}")
    lines += ["", "Answer the question in one or two sentences using these excerpts only, and list the "
              "pages you used."]
    return "\n".join(lines)


def build(chat: ChatModel, corpus: Corpus | str | Path | None = None) -> Workflow[LLMResearchContext]:
    """The research workflow with ``chat`` summarizing (pass the same model to :class:`LLMPolicy`
    for the decisions) over ``corpus`` (default: the project's docs)."""
    pages = corpus if isinstance(corpus, Corpus) else Corpus(corpus or os.environ.get("STATEMACHINE_AGENT_CORPUS")
                                                                    or CORPUS)
    names = sorted(str(p.relative_to(pages.root)) for p in pages.root.glob("**/*.md")) if pages.root.is_dir() else []
    wf = Workflow("research_llm", LLMResearchContext)

    @wf.state(initial=True, reads=["question"], writes=["query"])
    def plan(ctx: LLMResearchContext) -> None:
        """Turn the question into a strict query: every significant word must match."""
        ctx.query = strict_query(ctx.question)

    @wf.tool(timeout=5.0, retry=Retry(attempts=2, backoff=0.05, never=(SearchUnavailable,)))
    def search_docs(query: str, limit: int = 5) -> list[Hit]:
        """Full-text search (SQLite FTS5, bm25) over the corpus's Markdown sections."""
        return pages.search(query, limit)

    @wf.state(reads=["query"], writes=["hits", "found"], max_visits=2, tools=["search_docs"])
    async def search(ctx: LLMResearchContext, tools: Tools) -> None:
        """Search the corpus with the current query."""
        ctx.hits = await tools.call("search_docs", query=ctx.query)
        ctx.found = [f"{h.page}, section {h.heading!r}: {h.text[:120]}" for h in ctx.hits]

    @wf.state(reads=["question", "found", "broadened"], decision=True,
              description="Decide whether the sections found so far are enough to answer the question.")
    def assess(ctx: LLMResearchContext) -> None:
        """The model decides: summarize what was found, or broaden the search first."""

    @wf.state(reads=["question"], writes=["query", "broadened"], max_visits=1)
    def refine(ctx: LLMResearchContext) -> None:
        """Broaden the query: any significant word, matching as a prefix."""
        ctx.query = broad_query(ctx.question)
        ctx.broadened = True

    summarize = wf.state(name="summarize", reads=["question", "hits"], writes=["summary"])(
        llm_step(chat, write="summary", output=_summary_type(names), prompt=_excerpts, max_attempts=2,
                 instructions="You answer questions about a software library from excerpts of its "
                              "documentation. Answer in the form asked."))

    @wf.state(reads=["summary"], writes=["answer", "sources"])
    def record(ctx: LLMResearchContext) -> None:
        """Copy the model's summary into the research context's answer fields."""
        ctx.answer = ctx.summary.answer
        ctx.sources = sorted(set(ctx.summary.sources))

    done = wf.terminal("done", description="answered from the corpus")
    not_found = wf.terminal("not_found", outcome="failure", description="nothing in the corpus matched")
    no_summary = wf.terminal("no_summary", outcome="failure",
                             description="the model's summary did not validate, or the model could not be asked")
    failed = wf.terminal("failed", outcome="failure", description="the search could not run")

    has_hits = wf.guard(lambda ctx: bool(ctx.hits), name="has hits", reads=["hits"])
    can_broaden = wf.guard(lambda ctx: not ctx.broadened, name="not broadened yet", reads=["broadened"])

    wf.transition(plan, search)
    wf.transition(search, assess)
    wf.transition(assess, summarize, guard=has_hits, name="summarize",
                  description="the sections found are about what the question asks: write the answer from them now")
    wf.transition(assess, refine, guard=can_broaden, name="broaden",
                  description="no section found is about what the question asks: search again with a broader "
                              "query (any word of the question) before answering")
    wf.transition(assess, not_found, default=True, name="give_up",
                  description="nothing was found, even with the broader query")
    wf.transition(refine, search)
    wf.transition(summarize, record)
    wf.transition(record, done)
    wf.on_error(plan, ValueError, failed)
    wf.on_error(search, SearchUnavailable, failed)
    wf.on_error(assess, ModelError, no_summary)
    wf.on_error(summarize, ModelError, no_summary)
    return wf


def check_server(url: str, timeout: float = 5.0) -> str | None:
    """``None`` when an OpenAI-compatible server answers ``GET {url}/models``; else why not."""
    try:
        # No proxy, as ChatModel (httpx with trust_env=False): a local server is asked directly.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{url.rstrip('/')}/models", timeout=timeout) as response:
            json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"no model server answers at {url} ({reason}); start one with `make llm-server`"
    return None


def _print_result(result: RunResult[LLMResearchContext], compiled: Any) -> None:
    ctx = result.context
    if result.ok:
        print(f"answer:   {ctx.answer}")
        print(f"sources:  {', '.join(ctx.sources)}")
    else:
        print(f"no answer ({result.terminal}): {result.reason}")
    print(f"path:     {' -> '.join(result.states)}  ({result.steps} steps, bound {compiled.max_steps})")
    decisions = [s for s in result.path if s.state == "assess"]
    for s in decisions:
        how = ("chosen by the model" if s.model_calls else
               "the default: no other exit enabled" if s.transition == "give_up" else "the only enabled exit")
        print(f"decision: in {s.state!r} took {s.transition!r} ({how})")
    latencies = []
    for s in result.path:
        for c in s.model_calls:
            latencies.append(c.latency)
            print(f"call:     step {s.number} {s.state:<9} {c.purpose:<8} mode={c.mode:<18} "
                  f"tokens in={c.input_tokens} out={c.output_tokens}  {c.latency:.2f} s  "
                  f"finish={c.finish_reason} http={c.http_attempts}")
    u = result.usage
    median = f", median {statistics.median(latencies):.2f} s" if latencies else ""
    print(f"usage:    {u.calls} model calls, {u.input_tokens} input + {u.output_tokens} output tokens, "
          f"{u.latency:.2f} s waiting for the model{median}")


def main(argv: list[str] | None = None) -> int:
    """Answer a question from the corpus with a local model deciding and summarizing; print the
    answer, the path and each model call's usage. Exit 0 when the run reached a declared terminal."""
    parser = argparse.ArgumentParser(prog="python -m statemachine_agent.examples.research_llm",
                                     description=main.__doc__)
    parser.add_argument("question", help="what to ask")
    parser.add_argument("--url", default=default_url(),
                        help=f"the OpenAI-compatible server (default: $STATEMACHINE_AGENT_LLM_URL or {DEFAULT_URL})")
    parser.add_argument("--model", default=MODEL, help=f"the model's name on the server (default {MODEL})")
    parser.add_argument("--server", default="llama-cpp-python",
                        help="the server's kind, for what request forms it accepts (default llama-cpp-python)")
    parser.add_argument("--corpus", help="folder of Markdown pages (default: the project's docs)")
    parser.add_argument("--store", help="an SQLite file to commit the run's every step to")
    args = parser.parse_args(argv)

    try:
        strict_query(args.question)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        chat = ChatModel(base_url=args.url, model=args.model, server=args.server, max_tokens=300, timeout=120.0,
                         retries=2)
    except (TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    why = check_server(chat.base_url)
    if why is not None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    compiled = build(chat, args.corpus).compile()
    store = SQLiteStore(args.store) if args.store else None
    run_id = f"research-llm-{os.urandom(3).hex()}"
    try:
        result = compiled.run_sync(LLMResearchContext(question=args.question), policy=LLMPolicy(chat=chat),
                                   store=store, run_id=run_id, raise_errors=False)
    finally:
        if store is not None:
            store.close()
    print(f"question: {args.question}")
    print(f"model:    {chat.model} at {chat.base_url} ({chat.profile.kind})")
    _print_result(result, compiled)
    if chat.refused:
        print(f"refused:  {', '.join(sorted(chat.refused))} (the server refused these forms; not sent again)")
    if store is not None:
        print(f"stored:   run {run_id} in {args.store}")
    if result.error is not None:  # a bug, not a condition the workflow routes
        print(f"error:    {type(result.error).__name__}: {result.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
