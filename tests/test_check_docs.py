"""Every code the checker can give has an example that triggers it and a section in docs/checks.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from broken_specs import BROKEN

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "checks.md").read_text(encoding="utf-8").split(
    "## Resuming a stored run under a changed workflow")[0]  # that section: tests/test_resume_docs.py
CODE = re.compile(r"[a-z]+(?:-[a-z]+)+")

# Reported while declaring (workflow.py), carried to the checker on the spec.
FROM_DECLARATION = {"foreign-state"}
# An example cannot show this code alone: a trap with no cycle ends in a state with no exit.
ALSO_REPORTED = {"trap-state": {"no-exit"}}


def emitted_codes() -> set[str]:
    """The codes the checker's source can give: the first argument of every ``Problem(...)``."""
    source = "".join((ROOT / "statemachine_agent" / name).read_text(encoding="utf-8")
                     for name in ("check.py", "_rules.py"))
    return set(re.findall(r'Problem\(\s*"([a-z-]+)"', source))


def test_every_code_has_a_broken_example() -> None:
    """tests/broken_specs.py has an example for exactly the codes the checker (or Workflow) gives."""
    assert emitted_codes() | FROM_DECLARATION == set(BROKEN)


def test_every_code_has_a_section_in_the_docs() -> None:
    """docs/checks.md names every code in a heading, and names no code that does not exist."""
    headings = [line for line in PAGE.splitlines() if line.startswith("### ")]
    in_headings = {c for line in headings for c in CODE.findall(line)} & (set(BROKEN) | {"unset-read"})
    assert in_headings == set(BROKEN)
    documented = {c for c in CODE.findall(PAGE) if c in emitted_codes() | FROM_DECLARATION}
    assert documented == set(BROKEN)


def test_every_quoted_message_is_real() -> None:
    """Each message quoted on the page (``> ...``) is what some broken example gives, word for word."""
    real = {p.message for make in BROKEN.values() for p in make().analyze().problems}
    quoted = [line[2:] for line in PAGE.splitlines() if line.startswith("> ")]
    assert quoted
    assert [q for q in quoted if q not in real] == []


@pytest.mark.parametrize("code", sorted(BROKEN))
def test_each_example_triggers_exactly_its_code(code: str) -> None:
    """Each broken example gives its own code and nothing else (one mistake, one problem)."""
    codes = {p.code for p in BROKEN[code]().analyze().problems}
    assert code in codes
    assert codes - {code} <= ALSO_REPORTED.get(code, set())
