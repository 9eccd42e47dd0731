"""The docs stay true to the code: every checker message quoted in docs/checks.md is the real one."""

from __future__ import annotations

import re
import sys
import types
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


def _python_blocks(text: str) -> list[str]:
    blocks, current, inside = [], [], False
    for line in text.splitlines():
        if line.startswith("```python"):
            inside, current = True, []
        elif line.startswith("```") and inside:
            inside = False
            blocks.append("\n".join(current))
        elif inside:
            current.append(line)
    return blocks


def test_readme_example_runs_as_shown(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's workflow compiles and answers from a small document list."""
    [code] = _python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    namespace: dict[str, object] = {"DOCS": ["Loops are bounded by max_visits", "unrelated"],
                                    "__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert out.split()[:2] == ["done", "success"]
    assert "Loops are bounded by max_visits" in out


def test_readme_error_message_is_real() -> None:
    """The DefinitionError quoted in the README is what the checker says for that mistake."""
    from statemachine_agent import UNSET, Context, Workflow

    class Research(Context):
        question: str
        query: str = UNSET
        hits: list[str] = UNSET
        answer: str = UNSET

    wf = Workflow("research", Research)
    wf.add_state("plan", lambda c: None, initial=True, reads=["question"], writes=["query"])
    wf.add_state("summarize", lambda c: None, reads=["hits"], writes=["answer"])
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("plan", "summarize").transition("summarize", "done")
    [problem] = wf.analyze().problems
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"  - {problem}\n" in readme


def test_tools_page_example_runs_as_shown(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/tools.md's example runs and prints what the page says it prints."""
    page = (ROOT / "docs" / "tools.md").read_text(encoding="utf-8")
    [code] = _python_blocks(page)
    exec(compile(code, "docs/tools.md", "exec"), {"__name__": "tools_doc"})
    out = capsys.readouterr().out.strip()
    assert out == "done sunny in Lisbon ['Lisbon hotel 0', 'Lisbon hotel 1']"
    assert f"This prints `{out}`" in page


def test_testing_page_example_finds_its_bug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/testing.md's example fails exactly as the page shows, and saves its story."""
    page = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    code = _python_blocks(page)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "testing_doc"}
    exec(compile(code, "docs/testing.md", "exec"), namespace)
    with pytest.raises(AssertionError) as info:
        namespace["test_retrying"]()  # type: ignore[operator]
    message = str(info.value)
    assert "invariant 'at_most_two_retries' failed after step 5" in message
    assert "invariant 'at_most_two_retries' failed after step 5" in page
    assert "5: backoff --backoff_to_gave_up--> gave_up  writes attempts=3" in message
    assert "5: backoff --backoff_to_gave_up--> gave_up  writes attempts=3" in page
    assert (tmp_path / "retrying-story.json").exists()


def test_testing_page_crash_example_finds_its_bug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/testing.md's crash-schedule example fails with the message the page shows."""
    page = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    code = next(block for block in _python_blocks(page) if "check_crashes(shop" in block)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "testing_crash_doc"}
    exec(compile(code, "docs/testing.md", "exec"), namespace)
    with pytest.raises(AssertionError) as info:
        namespace["test_shop_survives_crashes"]()  # type: ignore[operator]
    first = str(info.value).splitlines()[0]
    assert first in page.splitlines(), first
    assert (tmp_path / "shop-crash.json").exists()


def test_durability_page_example_runs_as_shown(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/durability.md's example pauses at the wait, continues on delivery and charges once."""
    page = (ROOT / "docs" / "durability.md").read_text(encoding="utf-8")
    code = _python_blocks(page)[0]
    exec(compile(code, "docs/durability.md", "exec"), {"__name__": "durability_doc"})
    out = capsys.readouterr().out.splitlines()
    assert out == ["waiting approval", "done charged 42", "['order-42']"]
    for line in out:  # the page shows each printed line in a comment
        assert f"# {line}" in page


def test_durability_secrets_example_runs_as_shown(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/durability.md's "Secrets" example: refused without a codec, kept and hidden with one."""
    from statemachine_agent.secrets import FernetSecrets

    page = (ROOT / "docs" / "durability.md").read_text(encoding="utf-8")
    [code] = [b for b in _python_blocks(page) if "FernetSecrets" in b]
    assert page.index(code) > page.index("## Secrets")
    monkeypatch.setenv("SMA_SECRET_KEY", FernetSecrets.generate_key())
    exec(compile(code, "docs/durability.md", "exec"), {"__name__": "secrets_doc"})
    out = capsys.readouterr().out.splitlines()
    assert out == ["('token',)", "go", "pushed with a token of 18 characters", "**********", "['$secret']"]
    for line in out:  # the page shows each printed line in a comment
        assert f"# {line}" in page


def test_llm_page_example_runs_as_shown(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/llm.md's example decides and writes through a real HTTP server and prints what it shows."""
    page = (ROOT / "docs" / "llm.md").read_text(encoding="utf-8")
    [code] = _python_blocks(page)
    exec(compile(code, "docs/llm.md", "exec"), {"__name__": "llm_doc"})
    out = capsys.readouterr().out.splitlines()
    assert out == ["2 1", "merged 1", "2 216 0.0000234", "['json_object_schema']"]
    for line in out:  # the page shows each printed line in a comment
        assert f"# {line}" in page


def test_llm_page_server_table_is_the_profiles() -> None:
    """The table of servers in docs/llm.md is PROFILES, row for row."""
    from statemachine_agent.llm import PROFILES

    page = (ROOT / "docs" / "llm.md").read_text(encoding="utf-8")
    for kind, profile in PROFILES.items():
        tried = ", ".join(profile.modes)
        if profile.decision_modes:
            tried = f"decisions: {', '.join(profile.decision_modes)}; steps: {tried}"
        enforced = ", ".join(sorted(profile.enforced)) or "(none known)"
        assert f"| `{kind}` | {tried} | {enforced} |" in page


def test_durability_migration_example_runs_as_shown(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/durability.md's "Changing the workflow" example: check_runs names the run, resume refuses
    it, the migration continues it, and it ends under the new version."""
    page = (ROOT / "docs" / "durability.md").read_text(encoding="utf-8")
    [code] = [b for b in _python_blocks(page) if "def to_v2" in b]
    assert page.index(code) > page.index("## Changing the workflow of stored runs")
    module = types.ModuleType("migration_doc")  # a module, as a user's is: pydantic resolves names there
    monkeypatch.setitem(sys.modules, "migration_doc", module)
    exec(compile(code, "docs/durability.md", "exec"), module.__dict__)
    out = capsys.readouterr().out.splitlines()
    assert out == ["refund-30 resume-bad-context, resume-wait-changed", "2 problems; nothing written",
                   "waiting approved", "[]", "done EUR"]
    for line in out:  # the page shows each printed line in a comment
        assert f"# {line}" in page


def test_observability_page_examples_run_as_shown(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/observability.md's examples run in order, in one namespace, and print what the page says;
    a block fenced ``python no-run`` (the OTLP collector's, which needs a collector) is only compiled."""
    page = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
    namespace: dict[str, object] = {"__name__": "observability_doc"}
    blocks, current, fence = [], [], None
    for line in page.splitlines():
        if line.startswith("```python"):
            fence, current = line, []
        elif line.startswith("```") and fence is not None:
            blocks.append((fence, "\n".join(current)))
            fence = None
        elif fence is not None:
            current.append(line)
    printed = []
    for fence, code in blocks:
        compiled = compile(code, "docs/observability.md", "exec")
        if fence.strip() == "```python no-run":
            continue
        exec(compiled, namespace)
        printed.append(capsys.readouterr().out.strip())
    assert len(blocks) == 4 and len(printed) == 3
    for out in printed:
        assert f"This prints `{out}`" in page
    # The explorer's section shows its screenshots, each one a file tests/explorer_shots.py wrote.
    shots = re.findall(r"!\[[^\]]*\]\((img/explorer-[a-z]+\.png)\)", page)
    assert {"img/explorer-list.png", "img/explorer-run.png", "img/explorer-waiting.png",
            "img/explorer-delivered.png", "img/explorer-fork.png"} <= set(shots)
    for shot in shots:
        assert (ROOT / "docs" / shot).read_bytes().startswith(b"\x89PNG")
