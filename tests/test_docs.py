"""The docs stay true to the code: every checker message quoted in docs/checks.md is the real one."""

from __future__ import annotations

from pathlib import Path

import pytest
from broken_specs import BROKEN

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("code", sorted(BROKEN))
def test_checks_page_quotes_the_real_message(code: str) -> None:
    """docs/checks.md has a section for the rule and quotes its message verbatim."""
    page = (ROOT / "docs" / "checks.md").read_text(encoding="utf-8")
    [message] = [p.message for p in BROKEN[code]().analyze().problems if p.code == code][:1]
    assert code in page
    assert f"> {message}\n" in page
