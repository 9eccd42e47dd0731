"""The agents behind benchmarks/kit_hit_rate.py (issue 18, item 7), made deterministic: each correct
agent passes its user's tests, and each bug class seeded into it is found, as that bug's kind of
failure. The script measures the same over 20 random seeds per cell; this keeps its agents and its
classification honest in every `make test` (a seed that stops being found, or a correct agent that
starts failing, fails here)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import kit_agents
import kit_hit_rate


@pytest.fixture(autouse=True)
def derandomized() -> Iterator[None]:
    kit_agents.DERANDOMIZE = True
    try:
        yield
    finally:
        kit_agents.DERANDOMIZE = False


@pytest.mark.parametrize("agent", list(kit_agents.AGENTS))
def test_each_correct_agent_passes_its_tests(agent: str) -> None:
    kit_agents.case(agent, None).test()


@pytest.mark.parametrize("bug", list(kit_agents.Bug), ids=lambda b: b.name)
@pytest.mark.parametrize("agent", list(kit_agents.AGENTS))
def test_each_seeded_bug_is_found_as_its_kind_of_failure(agent: str, bug: kit_agents.Bug) -> None:
    trial = kit_hit_rate.one(agent, bug.name)
    assert trial.found, f"{agent} with {bug.value!r}: {trial.first_line}"
    assert re.search(kit_agents.EXPECT[bug], trial.first_line)


def test_a_failure_of_another_kind_is_not_counted() -> None:
    """The classification is not 'any failure': a seeded bug found as an unrelated failure is a miss."""
    case = kit_agents.case("refunds", kit_agents.Bug.CRASH)
    assert re.search(case.expect, "state 'pay_again' raised ToolFailed: ...; no error transition routes it") is None
