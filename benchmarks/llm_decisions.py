"""How valid and how sensible a real small model's decisions are, per answer mode.

Run it: ``make llm-server`` then ``.venv/bin/python benchmarks/llm_decisions.py`` (about 2 minutes with
SmolLM2-135M on 2 cores; ``--url`` or ``$STATEMACHINE_AGENT_LLM_URL``, default
http://127.0.0.1:8765/v1; ``--modes named_tool`` for one mode).

What is measured
----------------
Twelve pull-request descriptions, each with the answer a person would give (four of each:
``approve``, ``reject``, ``request_changes``), go through a one-state triage workflow whose decision
state offers those three transitions with descriptions; an :class:`~statemachine_agent.llm.LLMPolicy`
picks. Each case is asked twice: once with the exits declared in that order, once in the reverse
order (a small model may favour the first or last option it reads). Per answer mode:

- ``named_tool``: a tool call the server's grammar constrains to the enum of enabled names
  (llama-cpp-python's profile, first form);
- ``json_object_schema``: llama.cpp's ``response_format: {"type": "json_object", "schema": ...}``,
  also grammar-constrained;
- ``prompt``: nothing enforced; the names are listed in the prompt and the reply parsed.

Figures: **valid** = the model's first answer was an enabled transition (no rejection); a rejected
answer is fed back (up to the run's 3 policy attempts), so **valid after feedback** counts runs that
ended in one of the three terminals at all. **sensible** = the transition taken is the one a person
would take. **latency** = the model call's seconds (``ModelCall.latency``), median and slowest, over
all the mode's calls; input tokens are the prompt's size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import urllib.request

from statemachine_agent import Context, Workflow
from statemachine_agent.compile import CompiledWorkflow
from statemachine_agent.llm import ChatModel, LLMPolicy, Mode

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


def chat_for(mode: str, url: str) -> ChatModel:
    """A ChatModel that sends ``mode`` first (the profile's earlier forms marked as refused)."""
    if mode == "named_tool":
        return ChatModel(base_url=url, model="smollm2", server="llama-cpp-python", max_tokens=64, timeout=120.0)
    if mode == "json_object_schema":
        chat = ChatModel(base_url=url, model="smollm2", server="llama.cpp", max_tokens=64, timeout=120.0)
        chat.refused.add(Mode.JSON_SCHEMA)  # known: this server answers HTTP 500 to it
        return chat
    if mode == "prompt":
        chat = ChatModel(base_url=url, model="smollm2", server="generic", max_tokens=64, timeout=120.0)
        chat.refused.update({Mode.NAMED_TOOL, Mode.JSON_SCHEMA, Mode.JSON_OBJECT_SCHEMA})
        return chat
    raise ValueError(f"unknown mode {mode!r}")


def bench(mode: str, url: str) -> dict[str, object]:
    chat = chat_for(mode, url)
    policy = LLMPolicy(chat=chat)
    workflows = {False: triage(False), True: triage(True)}
    n = valid = valid_after = sensible = 0
    latencies: list[float] = []
    tokens: list[int] = []
    modes: set[str] = set()
    misses: list[str] = []
    for text, expected in CASES:
        for reverse in (False, True):
            result = workflows[reverse].run_sync(PullRequest(description=text), policy=policy, raise_errors=False)
            n += 1
            (step,) = result.path
            calls = step.model_calls
            latencies.extend(c.latency for c in calls)
            tokens.extend(c.input_tokens for c in calls)
            modes.update(c.mode for c in calls)
            taken = step.transition if step.transition in {e[0] for e in EXITS} else None
            if taken is not None:
                valid_after += 1
                valid += not step.rejected
            if taken == expected:
                sensible += 1
            else:
                got = taken or step.transition
                misses.append(f"{'rev' if reverse else 'fwd'} expected {expected:<15} got {got:<15} {text[:60]}")
    return {"mode": mode, "n": n, "valid": valid, "valid_after": valid_after, "sensible": sensible,
            "median": statistics.median(latencies), "max": max(latencies), "calls": len(latencies),
            "tokens": statistics.median(tokens), "sent": ", ".join(sorted(modes)), "misses": misses}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Decision validity and sensibleness of a real model, per mode.")
    parser.add_argument("--url", default=os.environ.get("STATEMACHINE_AGENT_LLM_URL") or "http://127.0.0.1:8765/v1")
    parser.add_argument("--modes", default="named_tool,json_object_schema,prompt")
    parser.add_argument("--misses", action="store_true", help="list the cases the model got wrong")
    args = parser.parse_args(argv)
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        opener.open(f"{args.url.rstrip('/')}/models", timeout=5).close()
    except OSError as exc:
        print(f"error: no model server answers at {args.url} ({getattr(exc, 'reason', exc)}); "
              "start one with `make llm-server`", file=sys.stderr)
        return 2
    print(f"{len(CASES)} pull requests x 2 asks (exits in order, then reversed), temperature 0, at {args.url}")
    print(f"{'mode':<20}{'valid':>8}{'valid*':>8}{'sensible':>10}{'median s':>10}{'max s':>8}"
          f"{'calls':>7}{'in tok':>8}  sent")
    t0 = time.perf_counter()
    for mode in args.modes.split(","):
        r = bench(mode.strip(), args.url)
        print(f"{r['mode']:<20}{r['valid']:>5}/{r['n']:<2}{r['valid_after']:>5}/{r['n']:<2}{r['sensible']:>7}/{r['n']:<2}"
              f"{r['median']:>10.2f}{r['max']:>8.2f}{r['calls']:>7}{r['tokens']:>8.0f}  {r['sent']}")
        if args.misses:
            for line in r["misses"]:  # type: ignore[attr-defined]
                print(f"    {line}")
    print(f"valid: first answer enabled; valid*: after feedback (3 policy attempts); sensible: what a person "
          f"would pick. {time.perf_counter() - t0:.0f} s in all.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
