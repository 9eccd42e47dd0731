"""The run explorer's time to first render, in a real headless Chromium (Debian's, via Playwright).

Two pages, each against a small baseline measured in the same run:
- the runs list of a store of 10,000 runs, against a store of 10 (the list is paginated: 50 a page);
- the page of a run of 1,000 steps, against a run of 10 steps (the page holds every step, its
  changes, and the diagram, which Graphviz draws).

Time to first render: from the navigation's start to the end of its ``load`` event (the diagram
image included), as the browser's Navigation Timing records it; the median of 7 loads after one
warm-up. Prints each figure and its ratio to its baseline. Usage: python benchmarks/bench_explorer.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import explorer_demo  # noqa: E402
from explorer_support import TOKEN, browser_missing, chromium, served  # noqa: E402

from statemachine_agent.stores import SQLiteStore  # noqa: E402

LOADS = 7


def many_runs(path: Path, n: int) -> None:
    async def fill() -> None:
        with SQLiteStore(path, synchronous="NORMAL") as store:
            gate = asyncio.Semaphore(200)

            async def one(i: int) -> None:
                async with gate:
                    await explorer_demo.counting.run(explorer_demo.Count(limit=1), store=store, run_id=f"run-{i:05d}")

            await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(fill())


def long_run(path: Path, steps: int) -> None:
    with SQLiteStore(path, synchronous="NORMAL") as store:
        explorer_demo.counting.run_sync(explorer_demo.Count(limit=steps), store=store, run_id="long")


def first_render(page: Any, url: str) -> tuple[float, float]:
    """Milliseconds from the navigation's start to the end of its load event: the first load (the
    server reads the store, draws the diagram), and the median of LOADS more (the list and the
    diagram as read before, the store being unchanged)."""
    times = []
    for _ in range(LOADS + 1):
        page.goto(url, wait_until="load")
        times.append(page.evaluate("(() => { const n = performance.getEntriesByType('navigation')[0];"
                                   " return n.loadEventEnd - n.startTime; })()"))
    return times[0], statistics.median(times[1:])


def measure(path: Path, target: str) -> tuple[float, float]:
    with served(path, {"counter": explorer_demo.counting}) as app, chromium() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"{app.url}/run?id=-&token={TOKEN}")  # the cookie, from a page that reads no run
        return first_render(page, app.url + target)


def main() -> int:
    missing = browser_missing()
    if missing:
        print(f"bench_explorer: skipped: {missing}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        many_runs(d / "small.db", 10)
        many_runs(d / "big.db", 10_000)
        long_run(d / "short.db", 10)
        long_run(d / "long.db", 1_000)
        list_small = measure(d / "small.db", "/")
        list_big = measure(d / "big.db", "/")
        run_short = measure(d / "short.db", "/run?id=long")
        run_long = measure(d / "long.db", "/run?id=long")
    for what, big, small, base in (("runs list, 10,000 runs (50 a page)", list_big, list_small, "10 runs"),
                                   ("run page, 1,000 steps", run_long, run_short, "10 steps")):
        for i, when in enumerate(("first load", "again")):
            print(f"{what:36} {when:10}: {big[i]:7.1f} ms to first render; {base}: {small[i]:6.1f} ms; "
                  f"ratio {big[i] / small[i]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
