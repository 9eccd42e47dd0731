"""The research example: real SQLite FTS5 search over the docs, a bounded refine loop, error routing."""

from __future__ import annotations

from pathlib import Path

import pytest

from statemachine_agent.errors import ToolFailed
from statemachine_agent.examples import research
from statemachine_agent.examples.research import Corpus, ResearchContext, SearchUnavailable, build

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_example_checks_with_its_bound() -> None:
    """The example passes the checker with a worst case of 5 steps."""
    assert research.workflow.check().worst_case_steps == 5


def test_answers_from_the_docs() -> None:
    """A question the docs answer goes plan -> search -> summarize -> done, citing the page."""
    question = "How does the checker bound loops?"
    result = research.workflow.compile().run_sync(ResearchContext(question=question))
    assert result.states == ["plan", "search", "summarize", "done"]
    assert "checks.md" in result.context.sources
    assert "bound" in (result.context.answer or "").lower()


def test_refine_broadens_a_strict_query() -> None:
    """When every word must match and nothing does, the query is broadened once, then answered."""
    result = research.workflow.compile().run_sync(
        ResearchContext(question="checker quokka"))  # 'quokka' is in no page: AND finds nothing
    assert result.states == ["plan", "search", "refine", "search", "summarize", "done"]
    assert result.context.broadened


def test_nothing_found_ends_in_not_found() -> None:
    """No match even broadened ends in the not_found failure terminal, with a reason."""
    result = research.workflow.compile().run_sync(ResearchContext(question="zebra quokka"))
    assert result.terminal == "not_found"
    assert result.reason == "reached failure terminal 'not_found' from 'search'"


def test_missing_corpus_is_routed_to_failed(tmp_path: Path) -> None:
    """A corpus folder without pages raises SearchUnavailable, routed to 'failed'."""
    result = build(tmp_path).compile().run_sync(ResearchContext(question="anything at all"))
    assert result.terminal == "failed"
    error = result.path[-1].error
    assert isinstance(error, ToolFailed)  # the search tool failed for good ...
    assert isinstance(error.last, SearchUnavailable)  # ... and the route matched its cause
    assert len(error.errors) == 1  # SearchUnavailable is never retried


def test_question_without_words_is_routed_to_failed() -> None:
    """A question of stopwords only cannot be searched: plan's ValueError goes to 'failed'."""
    result = research.workflow.compile().run_sync(ResearchContext(question="how is it?"))
    assert result.terminal == "failed"
    assert isinstance(result.path[0].error, ValueError)


def test_corpus_search_ranks_and_reports_bad_queries() -> None:
    """The FTS5 index ranks matching sections; a malformed query is SearchUnavailable."""
    corpus = Corpus(DOCS)
    hits = corpus.search('"unbounded" AND "cycle"')
    assert hits
    assert hits[0].page == "checks.md"
    with pytest.raises(SearchUnavailable, match="failed"):
        corpus.search('"unbalanced')


def test_demo_main_prints_answer_and_writes_diagrams(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The demo entry point prints the answer and path and writes DOT, Mermaid and SVG."""
    assert research.main(["How does the checker bound loops?", "--diagrams", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "answer:" in out
    assert "path:     plan -> search -> summarize -> done" in out
    names = {p.name for p in tmp_path.iterdir()}
    assert {"research.dot", "research.mmd", "research.svg", "research.run.dot", "research.run.svg"} <= names


def test_default_corpus_is_the_docs_shipped_in_the_package() -> None:
    """By default the example searches examples/corpus inside the package (shipped in the wheel
    as package data), whose pages are the project's docs, page for page."""
    assert research.CORPUS.name == "corpus"
    assert research.CORPUS.parent == Path(research.__file__).resolve().parent
    shipped = {p.name: p.read_text(encoding="utf-8") for p in research.CORPUS.glob("*.md")}
    assert shipped
    assert shipped == {p.name: p.read_text(encoding="utf-8") for p in DOCS.glob("*.md")}
