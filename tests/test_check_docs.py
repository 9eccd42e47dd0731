"""Every code the checker can give is a ProblemCode member, has an example that triggers it and a
section in docs/checks.md; the page's sections name exactly the members of ProblemCode and ResumeCode."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from broken_specs import BROKEN

from statemachine_agent import ProblemCode, ResumeCode

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "docs" / "checks.md").read_text(encoding="utf-8")
RESUME = "## Resuming a stored run under a changed workflow"
PAGE = TEXT.split(RESUME)[0]  # the resume section: tests/test_resume_docs.py quotes its messages
CODE = re.compile(r"[a-z]+(?:-[a-z]+)+")

# An example cannot show this code alone: a trap with no cycle ends in a state with no exit.
ALSO_REPORTED = {"trap-state": {"no-exit"}}


def _sources() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(encoding="utf-8"), str(path))
            for path in sorted((ROOT / "statemachine_agent").rglob("*.py"))}


def _headed_codes(page: str) -> list[str]:
    """Every code named in a ``###`` heading of ``page``, once per heading that names it."""
    return [c for line in page.splitlines() if line.startswith("### ") for c in CODE.findall(line)]


def test_every_problem_is_built_with_a_member_of_an_enum() -> None:
    """No ``Problem(...)`` in the package takes its code as a literal string: each names a
    ProblemCode or ResumeCode member (or passes on a code it was given)."""
    literal = [f"{path.relative_to(ROOT)}:{node.lineno}" for path, tree in _sources().items()
               for node in ast.walk(tree)
               if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Problem"
               and node.args and isinstance(node.args[0], ast.Constant)]
    assert literal == []


def test_every_problem_code_is_given_somewhere() -> None:
    """Each ProblemCode member is used by the package's source: no code is documented but dead."""
    used = {node.attr for tree in _sources().values() for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ProblemCode"}
    assert {c.name for c in ProblemCode} <= used


def test_every_code_has_a_broken_example() -> None:
    """tests/broken_specs.py has an example for exactly the codes the checker (or Workflow) gives."""
    assert {str(c) for c in ProblemCode} == set(BROKEN)


def test_the_page_has_one_section_per_code_and_none_for_a_code_that_does_not_exist() -> None:
    """Each member of ProblemCode is named in exactly one ``###`` heading of the checker's part of
    docs/checks.md, and each member of ResumeCode in one of the resume part; a heading names no
    other code."""
    problems, resumes = _headed_codes(PAGE), _headed_codes(TEXT.split(RESUME)[1])
    assert sorted(problems) == sorted(str(c) for c in ProblemCode)
    assert sorted(resumes) == sorted(str(c) for c in ResumeCode)


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
    assert all(isinstance(c, ProblemCode) for c in codes)
