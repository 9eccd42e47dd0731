"""The real-model figures in README.md and docs/llm.md are benchmarks/llm_decisions.py's output, as it
prints it now, for both engines and every mode: no figure is typed by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import llm_decisions as bench  # noqa: E402

PAGES = [ROOT / "README.md", ROOT / "docs" / "llm.md"]


def _block(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    start, end = text.find(bench.MARK_BEGIN), text.find(bench.MARK_END)
    assert 0 <= start < end, f"{page.name} has no block written by llm_decisions.py --write-docs"
    lines = text[start + len(bench.MARK_BEGIN):end].strip().splitlines()
    assert len(lines) > 2, f"{page.name}: the block is empty: run benchmarks/llm_decisions.py --install --write-docs"
    assert lines[0] == "```text", f"{page.name}: the block is not the script's"
    assert lines[-1] == "```", f"{page.name}: the block is not the script's"
    return lines[1:-1]


def test_both_pages_quote_the_same_output() -> None:
    assert _block(PAGES[0]) == _block(PAGES[1])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_quoted_output_is_the_scripts_for_both_engines_and_every_mode(page: Path) -> None:
    lines = _block(page)
    assert lines[0].startswith(f"SmolLM2-135M-Instruct Q4_1, {len(bench.CASES)} pull requests x 2 asks")
    sections: dict[str, list[str]] = {}
    current = None
    for line in lines[1:]:
        if line.startswith("== "):
            current = line[3:].split(" ", 1)[0]
            sections[current] = [line]
        elif current is not None and line:
            sections[current].append(line)
    assert sorted(sections) == sorted(bench.ENGINES), "both engines measured"
    for engine, section in sections.items():
        assert "not measured" not in section[0], section[0]
        assert "install: " in section[0], f"{engine}: the install time was measured (--install)"
        assert section[1] == bench.HEADER
        modes = {str(m) for m in bench.Mode}
        rows = {line.split()[0]: line for line in section[2:] if line.split()[0] in modes}
        assert sorted(rows) == sorted(bench.MODES), f"{engine}: a row per mode"
        assert any(line.startswith("measured order: ") for line in section), engine
