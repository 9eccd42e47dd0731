"""Protocol implementations with a mistake each: ``mypy --strict`` reports exactly the marked lines."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any

from statemachine_agent import Context, Decision, Event
from statemachine_agent.protocols import Clock, Hook, Policy, Store
from statemachine_agent.stores import StoredRun


class Ticket(Context):
    text: str


class NoTimeoutClock:
    """Lacks timeout_at."""

    def now(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class HalfStore(Store):
    """Implements one method of the contract, and that one with the wrong return type."""

    def load(self, run_id: str, *, at_step: int | None = None) -> StoredRun:  # E: override
        raise NotImplementedError

    def create(self, run: Any, context: Any) -> Future[None]:
        raise NotImplementedError


def by_number(decision: int) -> str:
    return str(decision)


def for_another_context(decision: Decision[int]) -> str:
    return decision.options[0].name


def hook_of_text(event: str) -> None:
    pass


def hook_with_a_result(event: Event) -> int:
    return 1


clock: Clock = NoTimeoutClock()  # E: assignment
store: Store = HalfStore()  # E: abstract
policy: Policy[Ticket] = by_number  # E: assignment
other: Policy[Ticket] = for_another_context  # E: assignment
hook: Hook = hook_of_text  # E: assignment
counted: Hook = hook_with_a_result  # E: assignment
