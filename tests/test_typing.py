"""The typed API, tested like the rest: user code checked by mypy --strict (tests/typing/)."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent / "typing"


def mypy(path: Path) -> list[tuple[int, str]]:
    """(line, error code) of every error mypy --strict reports on ``path``."""
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--show-error-codes",
         "--hide-error-context", "--no-error-summary", str(path)],
        capture_output=True, text=True, check=False, cwd=HERE.parent.parent,
    )
    found = []
    for line in out.stdout.splitlines():
        m = re.match(rf".*{re.escape(path.name)}:(\d+): error: .*\[([a-z-]+)\]$", line)
        if m:
            found.append((int(m.group(1)), m.group(2)))
    assert found or out.returncode in (0, 1), out.stdout + out.stderr
    return found


def test_the_readme_agent_type_checks_under_strict() -> None:
    """A typed agent (UNSET fields, typed guards and policy, the tools handle, run options) has no
    error, and no `assert x is not None` was needed to read what the checker proved written."""
    assert mypy(HERE / "api_ok.py") == []


def test_mistakes_in_user_code_are_caught() -> None:
    """Each line marked `# E: code [code...]` in api_bad.py gets exactly that error, and nothing else does:
    a context model that is not pydantic, an action or guard for another context, a typo in a guard
    lambda or a policy, a non-bool guard, a wrong run option or input."""
    path = HERE / "api_bad.py"
    expected = _marked(path)
    assert len(expected) >= 10
    assert sorted(mypy(path)) == expected


def _marked(path: Path) -> list[tuple[int, str]]:
    """(line, error code) of every line marked `# E: code [code...]` in ``path``."""
    return sorted(
        (n, code)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if (m := re.search(r"# E: ([a-z -]+)$", line))
        for code in m.group(1).split()
    )


def test_user_implementations_of_the_protocols_type_check_under_strict() -> None:
    """A store, sync and async policies, a clock and sync and async hooks written against
    statemachine_agent.protocols pass mypy --strict, each accepted where a run takes it."""
    assert mypy(HERE / "protocols_ok.py") == []


def test_user_implementations_of_the_protocols_run() -> None:
    """The same user code runs: the store commits the run's step, the policy picks, the hooks hear it."""
    done = runpy.run_path(str(HERE / "protocols_ok.py"))
    assert (done["result"].terminal, done["again"].terminal) == ("page", "page")
    assert done["store"].commits == 1
    assert done["seen"].count("RunFinished") == 2


def test_mistakes_in_protocol_implementations_are_caught() -> None:
    """Each line marked in protocols_bad.py gets exactly that error, nothing else does: a clock
    without timeout_at, a store missing methods or returning no Future, a policy for another
    context or not taking a Decision, a hook not taking an Event or returning a value."""
    path = HERE / "protocols_bad.py"
    expected = _marked(path)
    assert len(expected) >= 7
    assert sorted(mypy(path)) == expected


def test_the_readme_example_type_checks_under_strict(tmp_path: Path) -> None:
    """The README's own example, as printed, passes mypy --strict (DOCS given a type)."""
    readme = (HERE.parent.parent / "README.md").read_text(encoding="utf-8")
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "readme_example.py"
    path.write_text("DOCS: list[str] = []\n" + code, encoding="utf-8")
    assert mypy(path) == []


def test_the_llm_api_type_checks_under_strict() -> None:
    """An LLM policy and an LLM step in a typed workflow, budgets and usage read back: no error."""
    assert mypy(HERE / "llm_api.py") == []


def _python_blocks(page: str) -> str:
    """The ```python blocks of a docs page, in order, as one module."""
    blocks, current, inside = [], [], False
    for line in (HERE.parent.parent / "docs" / page).read_text(encoding="utf-8").splitlines():
        if line.startswith("```python"):
            inside, current = True, []
        elif line.startswith("```") and inside:
            inside = False
            blocks.append("\n".join(current))
        elif inside:
            current.append(line)
    return "\n\n".join(blocks) + "\n"


# What a page's fragments take as given (declared elsewhere in the reader's own code).
DOCS_GIVEN = {
    "workflows.md": (
        "from typing import Any\n\n\n"
        "async def my_search(query: str | None) -> list[str]:\n    return [query or \"\"]\n\n\n"
        "def plan_fn(ctx: Any) -> None:\n    pass\n\n\n"
        "class SearchUnavailable(Exception):\n    pass\n\n\n"
        'summarize, refine = "summarize", "refine"\n'
    ),
    "testing.md": "",
    "tools.md": "",
    "llm.md": "",
}


def _assert_strict_clean(paths: list[Path]) -> None:
    """mypy --strict finds nothing in ``paths``."""
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--show-error-codes",
         "--no-error-summary", *map(str, paths)],
        capture_output=True, text=True, check=False, cwd=HERE.parent.parent,
    )
    assert (out.returncode, out.stdout) == (0, ""), out.stdout + out.stderr


def test_the_docs_python_examples_type_check_under_strict(tmp_path: Path) -> None:
    """The python examples of docs pages, as printed (lambda guards included, written with
    wf.guard), pass mypy --strict; a page's fragments get the few names they take as given."""
    paths = []
    for page, given in DOCS_GIVEN.items():
        path = tmp_path / f"doc_{page.removesuffix('.md')}.py"
        path.write_text(given + "\n" + _python_blocks(page), encoding="utf-8")
        paths.append(path)
    _assert_strict_clean(paths)


def test_each_durability_example_type_checks_under_strict(tmp_path: Path) -> None:
    """docs/durability.md's examples (each a whole program of its own) pass mypy --strict."""
    page = (HERE.parent.parent / "docs" / "durability.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) >= 2
    paths = []
    for i, block in enumerate(blocks):
        path = tmp_path / f"doc_durability_{i}.py"
        path.write_text(block, encoding="utf-8")
        paths.append(path)
    _assert_strict_clean(paths)
