"""The testing kit's typed API (issue 18): user code of the kit checked by mypy --strict."""

from __future__ import annotations

import re
import subprocess
import sys

from test_typing import HERE, _marked


def test_kit_user_code_type_checks_and_its_mistakes_are_caught() -> None:
    """kit_ok.py (async policies and invariants, hooks, typed opt-outs, the scripted model, follow()'s
    payloads) has no error; in kit_bad.py each marked line (a string where an Allowed member belongs, a
    lone member for the set, a URL for the model, a string for events=, a list for the replies) gets
    exactly its error, and nothing else does. One mypy run for both."""
    ok, bad = HERE / "kit_ok.py", HERE / "kit_bad.py"
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--show-error-codes",
                          "--hide-error-context", "--no-error-summary", str(ok), str(bad)],
                         capture_output=True, text=True, check=False, cwd=HERE.parent.parent)
    found: dict[str, list[tuple[int, str]]] = {ok.name: [], bad.name: []}
    for line in out.stdout.splitlines():
        m = re.match(r".*?(kit_ok\.py|kit_bad\.py):(\d+): error: .*\[([a-z-]+)\]$", line)
        assert m is not None or ": note: " in line, out.stdout + out.stderr
        if m:
            found[m.group(1)].append((int(m.group(2)), m.group(3)))
    assert found[ok.name] == []
    assert sorted(found[bad.name]) == _marked(bad)
