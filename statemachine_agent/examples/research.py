"""The article's agent, for real: plan -> search -> summarize -> done, with a bounded refine loop.

Search runs SQLite FTS5 over a local corpus of Markdown pages (by default the project's own
``docs/``, shipped in the package as ``examples/corpus/``); the summary is extractive and
deterministic. Nothing is faked and nothing goes online.

Run it: ``python -m statemachine_agent.examples.research "How does the checker bound loops?"``
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import sys
import threading
from pathlib import Path

from pydantic import BaseModel, Field

from statemachine_agent import UNSET, Context, Workflow
from statemachine_agent.diagrams import write_diagrams
from statemachine_agent.stores import SQLiteStore
from statemachine_agent.tools import Retry, Tools

__all__ = ["CORPUS", "Corpus", "Hit", "ResearchContext", "SearchUnavailable", "broad_query", "build",
           "strict_query", "workflow"]

_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how", "i",
    "in", "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "what", "when",
    "where", "which", "who", "why", "will", "with", "you", "your",
})
_WORD = re.compile(r"[A-Za-z0-9_]+")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(\"'])")


class SearchUnavailable(RuntimeError):
    """The corpus cannot be searched (missing folder, no pages, broken index)."""


class Hit(BaseModel):
    """One matching section of a page."""

    page: str
    heading: str
    text: str
    score: float


class Corpus:
    """An SQLite FTS5 index over the sections of every Markdown page in a folder, built on first use."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        with self._lock:
            if self._db is not None:
                return self._db
            pages = sorted(self.root.glob("**/*.md")) if self.root.is_dir() else []
            if not pages:
                raise SearchUnavailable(
                    f"no Markdown pages under {str(self.root)!r}: point the corpus at a folder of .md "
                    "files (--corpus DIR or STATEMACHINE_AGENT_CORPUS)"
                )
            db = sqlite3.connect(":memory:", check_same_thread=False)
            db.execute("CREATE VIRTUAL TABLE sections USING fts5(page UNINDEXED, heading, body, "
                        "tokenize='porter unicode61')")
            for page in pages:
                for heading, body in _sections(page.read_text(encoding="utf-8")):
                    db.execute("INSERT INTO sections VALUES (?, ?, ?)",
                               (str(page.relative_to(self.root)), heading, body))
            db.commit()
            self._db = db
            return db

    def search(self, query: str, limit: int = 5) -> list[Hit]:
        """Sections matching the FTS5 ``query``, best first (bm25, headings weigh more)."""
        db = self._connect()
        try:
            rows = db.execute(
                "SELECT page, heading, body, bm25(sections, 0.0, 4.0, 1.0) AS rank FROM sections "
                "WHERE sections MATCH ? ORDER BY rank LIMIT ?",
                (query, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise SearchUnavailable(f"search for {query!r} failed: {exc}") from exc
        return [Hit(page=p, heading=h, text=b, score=-r) for p, h, b, r in rows]


def _sections(markdown: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    heading, in_code = "", False
    lines: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        if not in_code and line.startswith("#"):
            if lines:
                out.append((heading, " ".join(lines)))
            heading, lines = line.lstrip("#").strip(), []
        elif line.strip() and not in_code and not line.lstrip().startswith((">", "|")):
            # Quoted examples and tables read badly as prose; links keep their text only.
            lines.append(_LINK.sub(r"\1", line.strip()))
    if lines:
        out.append((heading, " ".join(lines)))
    return out


def _terms(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for w in _WORD.findall(text.lower()):
        if w not in _STOPWORDS and len(w) > 1:
            seen.setdefault(w, None)
    return list(seen)


def strict_query(question: str) -> str:
    """An FTS5 query every significant word of ``question`` must match; ValueError when it has none."""
    terms = _terms(question)
    if not terms:
        raise ValueError(f"the question {question!r} has no searchable words")
    return " AND ".join(f'"{t}"' for t in terms)


def broad_query(question: str) -> str:
    """An FTS5 query any significant word of ``question`` matches, as a prefix."""
    return " OR ".join(f'"{t}"*' for t in _terms(question))


class ResearchContext(Context):
    """What the research agent knows at each step."""

    question: str = Field(min_length=1)
    query: str = UNSET
    broadened: bool = False
    hits: list[Hit] = UNSET
    answer: str = UNSET
    sources: list[str] = Field(default_factory=list)


CORPUS = Path(__file__).resolve().parent / "corpus"
"""The default corpus: the project's docs/ pages (a symlink in a source checkout, real files in
an installed wheel)."""


def _default_corpus() -> Path:
    env = os.environ.get("STATEMACHINE_AGENT_CORPUS")
    if env:
        return Path(env)
    return CORPUS


def build(corpus: Corpus | str | Path | None = None) -> Workflow[ResearchContext]:
    """The research workflow over ``corpus`` (default: :data:`CORPUS`, the project's docs)."""
    pages = corpus if isinstance(corpus, Corpus) else Corpus(corpus or _default_corpus())
    wf = Workflow("research", ResearchContext)

    @wf.state(initial=True, reads=["question"], writes=["query"])
    def plan(ctx: ResearchContext) -> None:
        """Turn the question into a strict query: every significant word must match."""
        ctx.query = strict_query(ctx.question)

    @wf.tool(timeout=5.0, retry=Retry(attempts=2, backoff=0.05, never=(SearchUnavailable,)))
    def search_docs(query: str, limit: int = 5) -> list[Hit]:
        """Full-text search (SQLite FTS5, bm25) over the corpus's Markdown sections."""
        return pages.search(query, limit)

    @wf.state(reads=["query"], writes=["hits"], max_visits=2, tools=["search_docs"])
    async def search(ctx: ResearchContext, tools: Tools) -> None:
        """Search the corpus with the current query."""
        ctx.hits = await tools.call("search_docs", query=ctx.query)

    @wf.state(reads=["question", "broadened"], writes=["query", "broadened"], max_visits=1)
    def refine(ctx: ResearchContext) -> None:
        """Broaden the query: any significant word, matching as a prefix."""
        ctx.query = broad_query(ctx.question)
        ctx.broadened = True

    @wf.state(reads=["question", "hits"], writes=["answer", "sources"])
    def summarize(ctx: ResearchContext) -> None:
        """Pick the three sentences of the hits that share most words with the question."""
        wanted = set(_terms(ctx.question))
        scored: list[tuple[float, int, str, str]] = []
        for rank, hit in enumerate(ctx.hits):
            for sentence in _SENTENCE.split(hit.text):
                overlap = len(wanted & set(_terms(sentence)))
                if overlap:
                    scored.append((overlap + hit.score / 100, -rank, sentence.strip(), hit.page))
        best = sorted(scored, reverse=True)[:3]
        ctx.answer = " ".join(s for _, _, s, _ in best) or ctx.hits[0].text[:300]
        ctx.sources = sorted({f"{p}" for *_, p in best} or {ctx.hits[0].page})

    done = wf.terminal("done", description="answered from the corpus")
    not_found = wf.terminal("not_found", outcome="failure", description="nothing in the corpus matched")
    failed = wf.terminal("failed", outcome="failure", description="the search could not run")

    has_hits = wf.guard(lambda ctx: bool(ctx.hits), name="has hits", reads=["hits"])
    can_broaden = wf.guard(lambda ctx: not ctx.broadened, name="not broadened yet", reads=["broadened"])

    wf.transition(plan, search)
    wf.transition(search, summarize, guard=has_hits)
    wf.transition(search, refine, guard=can_broaden)
    wf.transition(search, not_found, default=True)
    wf.transition(refine, search)
    wf.transition(summarize, done)
    wf.on_error(search, SearchUnavailable, failed)
    wf.on_error(plan, ValueError, failed)
    return wf


workflow = build()
"""The example over the shipped docs corpus (what ``statemachine-agent run`` and ``check`` load)."""


def main(argv: list[str] | None = None) -> int:
    """Answer a question from the corpus, print the answer and the path, and write the diagrams."""
    parser = argparse.ArgumentParser(prog="python -m statemachine_agent.examples.research",
                                     description=main.__doc__)
    parser.add_argument("question", help="what to ask")
    parser.add_argument("--corpus", help="folder of Markdown pages (default: the project's docs, "
                        "shipped with the package)")
    parser.add_argument("--diagrams", default="diagrams", help="where to write the workflow's diagrams")
    parser.add_argument("--store", help="an SQLite file to commit the run's every step to (see docs/durability.md)")
    args = parser.parse_args(argv)
    compiled = (build(args.corpus) if args.corpus else workflow).compile()
    store = SQLiteStore(args.store) if args.store else None
    run_id = f"research-{os.urandom(3).hex()}"
    try:
        result = compiled.run_sync(ResearchContext(question=args.question), store=store, run_id=run_id)
    finally:
        if store is not None:
            store.close()
    print(f"question: {args.question}")
    if result.ok:
        print(f"answer:   {result.context.answer}")
        print(f"sources:  {', '.join(result.context.sources)}")
    else:
        print(f"no answer ({result.terminal}): {result.reason}")
    print(f"path:     {' -> '.join(result.states)}  ({result.steps} steps, bound {compiled.max_steps})")
    for path in write_diagrams(compiled, args.diagrams, run=result):
        print(f"diagram:  {path}")
    if store is not None:
        target = "statemachine_agent.examples.research:workflow"
        print(f"stored:   run {run_id} in {args.store}, every step committed; look at it and resume it with")
        print(f"          statemachine-agent runs show {run_id} --store {args.store}")
        print(f"          statemachine-agent runs resume {target} {run_id} --store {args.store}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
