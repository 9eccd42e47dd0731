"""docs/testing.md's examples after the first (which tests/test_docs.py runs) run as the page says."""

from __future__ import annotations

import pytest
from test_docs import ROOT, _python_blocks


def test_the_llm_policy_example_fails_as_the_page_says() -> None:
    """The async LLM policy example: garbage replies, three times, end the run in 'failed'."""
    page = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    [block] = [b for b in _python_blocks(page) if "def test_triage_with_a_model" in b]  # the others: test_docs.py
    namespace: dict[str, object] = {"__name__": "testing_llm_doc"}
    exec(compile(block, "docs/testing.md", "exec"), namespace)
    with pytest.raises(AssertionError) as info:
        namespace["test_triage_with_a_model"]()  # type: ignore[operator]
    message = str(info.value)
    assert message.startswith("path invariant 'always_decided' failed at the end of the run")
    assert message.count("model replied") == 3
    assert "model replied valid" not in message
    assert "route --fail--> failed" in message
    assert "the policy gave no valid choice in state 'route' after 3 attempts" in message
    for line in [*message.splitlines()[:6], message.splitlines()[-2]]:  # the page quotes them
        assert f"{line}\n" in page
    assert message.splitlines()[-1].split("; last:")[0] in page
