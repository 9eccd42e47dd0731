"""Writes docs/img/explorer-*.png: the run explorer in a real headless Chromium, over the demo store
(tests/explorer_demo.py). Run it with ``python tests/explorer_shots.py`` (``make explorer-shots``).

The pictures: the list, a run that ended (a step opened: its changes, tool call, decision), a run
waiting for a person (its deliver form), the same run after the form was sent, and a fork of it made
from its page.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import explorer_demo  # noqa: E402
from explorer_support import browser_missing, chromium, served  # noqa: E402

OUT = HERE.parent / "docs" / "img"
WIDTH = 1200
DIAGRAM_LOADED = "() => { const d = document.getElementById('diagram'); return d !== null && d.complete; }"


def main() -> int:
    missing = browser_missing()
    if missing:
        print(f"cannot take the screenshots: {missing}")
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "runs.db"
        ids = explorer_demo.fill(store)
        workflows = {"refund": explorer_demo.compiled, "counter": explorer_demo.counting}
        with served(store, workflows, poll=0.2, policy=explorer_demo.policy) as app, chromium() as browser:
            page = browser.new_page(viewport={"width": WIDTH, "height": 800})
            page.goto(app.login)
            page.locator("#runs").wait_for()
            page.screenshot(path=str(OUT / "explorer-list.png"), full_page=True)

            page.goto(f"{app.url}/run?id={ids['done']}")
            page.locator("#diagram").wait_for()
            page.wait_for_function(DIAGRAM_LOADED)
            for n in (1, 2):
                page.locator(f"#step-{n} > summary").click()
                page.locator(f"#step-{n} .changes[data-loaded=yes]").wait_for()
            page.screenshot(path=str(OUT / "explorer-run.png"), full_page=True)

            page.goto(f"{app.url}/run?id={ids['waiting']}")
            page.wait_for_function(DIAGRAM_LOADED)
            page.screenshot(path=str(OUT / "explorer-waiting.png"), full_page=True)

            form = page.locator("#deliver")
            form.locator("input[name='field.approved']").check()
            form.locator("input[name='field.note']").fill("receipt checked")
            form.locator("input[name='field.cap']").fill("900")
            form.locator("button[type=submit]").click()
            page.locator("#status", has_text="done").wait_for()
            page.locator("#flash", has_text="ended in refunded").wait_for()
            page.wait_for_function(DIAGRAM_LOADED)
            page.screenshot(path=str(OUT / "explorer-delivered.png"), full_page=True)

            fork = page.locator("#fork")
            fork.locator("input[name=at_step]").fill("2")
            fork.locator("textarea[name=patch]").fill('{"amount": 60}')
            fork.locator("button[type=submit]").click()
            page.locator("#status", has_text="done").wait_for()
            page.locator("#flash", has_text="ended in").wait_for()
            page.wait_for_function(DIAGRAM_LOADED)
            page.screenshot(path=str(OUT / "explorer-fork.png"), full_page=True)
    for p in sorted(OUT.glob("explorer-*.png")):
        print(f"wrote {p.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
