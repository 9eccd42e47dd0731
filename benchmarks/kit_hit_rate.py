"""How often the testing kit finds each seeded bug (issue 18, item 7).

Every bug class of benchmarks/kit_agents.py is seeded in turn into each of its three agents, and the
agent's own test (the same with or without the bug, default settings: 100 examples, random draws,
nothing derandomized, no example database) runs once per seed, each in a fresh process. A seed
*finds* the bug when the test fails with the bug's own kind of failure (``kit_agents.EXPECT``); the
time is until the test failed, shrinking included. Each correct agent is run the same way and must
pass every time (a false alarm would make the hit rates meaningless).

    python benchmarks/kit_hit_rate.py                     # every agent and class, 20 seeds each
    python benchmarks/kit_hit_rate.py --agents refunds --bugs RARE_INVARIANT --seeds 5
    python benchmarks/kit_hit_rate.py --markdown          # the table docs/testing.md quotes

Exit status 1 when a class is found in fewer than ``--min-rate`` of its seeds, a find took more
than ``--max-seconds``, or a correct agent failed.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import kit_agents  # noqa: E402  (after the path: the agents live beside this script)


@dataclass(frozen=True)
class Trial:
    agent: str
    bug: str  # a Bug member's name, or "none"
    found: bool
    false_alarm: bool
    seconds: float
    first_line: str


def one(agent: str, bug: str) -> Trial:
    """Run one agent's test once, in this process (the child side of ``trial``)."""
    case = kit_agents.case(agent, None if bug == "none" else kit_agents.Bug[bug])
    start = time.perf_counter()
    try:
        case.test()
    except AssertionError as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else "AssertionError"
        return Trial(agent, bug, bool(case.expect) and re.search(case.expect, line) is not None, bug == "none",
                     time.perf_counter() - start, line)
    except Exception as exc:  # a definition error: the checker found it before the kit explored
        line = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]} {' '.join(str(exc).splitlines()[1:2])}"
        return Trial(agent, bug, bool(case.expect) and re.search(case.expect, str(exc)) is not None,
                     bug == "none", time.perf_counter() - start, line)
    return Trial(agent, bug, False, False, time.perf_counter() - start, "passed")


def trial(agent: str, bug: str) -> Trial:
    """One seed: a fresh interpreter, so no state (Hypothesis', the kit's, a counter's) carries over."""
    out = subprocess.run([sys.executable, __file__, "--child", agent, bug], check=False, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONHASHSEED": "random"})
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("TRIAL\t"):
            _, found, false_alarm, seconds, first = line.split("\t", 4)
            return Trial(agent, bug, found == "1", false_alarm == "1", float(seconds), first)
    return Trial(agent, bug, False, bug == "none", 0.0, f"the child died: {out.stderr.strip()[-300:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", default=",".join(kit_agents.AGENTS), help="comma-separated agents")
    parser.add_argument("--bugs", default="none," + ",".join(b.name for b in kit_agents.Bug),
                        help="comma-separated Bug names, and 'none' for the correct agent")
    parser.add_argument("--seeds", type=int, default=20, help="independent runs per cell (default 20)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1: times are per run alone)")
    parser.add_argument("--min-rate", type=float, default=0.95)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--child", nargs=2, metavar=("AGENT", "BUG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        t = one(*args.child)
        print(f"TRIAL\t{int(t.found)}\t{int(t.false_alarm)}\t{t.seconds:.3f}\t{t.first_line}", flush=True)
        return 0
    agents = [a for a in args.agents.split(",") if a]
    bugs = [b for b in args.bugs.split(",") if b]
    for a in agents:
        if a not in kit_agents.AGENTS:
            parser.error(f"unknown agent {a!r}: one of {', '.join(kit_agents.AGENTS)}")
    for b in bugs:
        if b != "none" and b not in kit_agents.Bug.__members__:
            parser.error(f"unknown bug {b!r}: 'none' or one of {', '.join(kit_agents.Bug.__members__)}")
    cells = [(a, b) for b in bugs for a in agents]
    jobs = [(a, b) for a, b in cells for _ in range(args.seeds)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda ab: trial(*ab), jobs))
    wall = time.perf_counter() - started
    ok = True
    rows = []
    for a, b in cells:
        mine = [r for r in results if (r.agent, r.bug) == (a, b)]
        if b == "none":
            alarms = sum(r.false_alarm for r in mine)
            ok &= alarms == 0
            rows.append((b, a, f"passes {len(mine) - alarms}/{len(mine)}", "", "",
                         next((r.first_line for r in mine if r.false_alarm), "")))
            continue
        hits = [r for r in mine if r.found]
        rate = len(hits) / len(mine)
        slowest = max((r.seconds for r in hits), default=0.0)
        median = statistics.median(r.seconds for r in hits) if hits else 0.0
        ok &= rate >= args.min_rate and slowest <= args.max_seconds
        by = "checker" if hits and all(r.first_line.startswith("DefinitionError") for r in hits) else "kit"
        missed = next((r.first_line for r in mine if not r.found), "")
        rows.append((b, a, f"{len(hits)}/{len(mine)}", f"{median:.1f} s", f"{slowest:.1f} s",
                     f"by the {by}" + (f"; missed once as: {missed[:90]}" if missed else "")))
    label = {m.name: m.value for m in kit_agents.Bug} | {"none": "no bug (the correct agent)"}
    if args.markdown:
        print("| bug class | agent | found | median time | slowest | notes |")
        print("|---|---|---|---|---|---|")
        for b, a, found, med, slow, note in rows:
            print(f"| {label[b]} | {a} | {found} | {med} | {slow} | {note} |")
    else:
        for b, a, found, med, slow, note in rows:
            print(f"{label[b][:48]:48} {a:9} {found:>12} {med:>7} {slow:>7}  {note}")
    print(f"\n{len(jobs)} runs, {args.jobs} at a time, {wall:.0f} s; every class at >= {args.min_rate:.0%} "
          f"within {args.max_seconds:g} s and no false alarm: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
