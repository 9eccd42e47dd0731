"""Clocks: where runs and tools read the time, sleep and time out, so tests never really wait.

Every timeout and deadline of the library (a run's ``timeout=``, a tool's ``timeout=``, a state's
``tool_deadline=``, retry backoff, rate limits) goes through the run's clock. With a
:class:`FakeClock` nothing depends on how fast the machine is: time moves only when the code under
test sleeps on the clock or the test advances it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock", "wall_time"]


@runtime_checkable
class Clock(Protocol):
    """A monotonic time source, a matching async sleep, and timeouts on the same scale."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch on this clock: what a stored wait's deadline is kept in, to
        outlive the process (a fake clock gives its own, so waits time out on fake time)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...

    def timeout_at(self, when: float | None) -> asyncio.Timeout:
        """An ``async with`` block cancelled when :meth:`now` reaches ``when`` (``None``: never).

        As with :func:`asyncio.timeout_at`, the block then raises :class:`TimeoutError` and the
        returned object's ``expired()`` says the timeout, not the code inside, caused it.
        """
        ...


class SystemClock:
    """The real thing: ``time.monotonic``, ``asyncio.sleep`` and the event loop's timeouts."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        """Seconds since the epoch: what a wait's deadline is stored in, to outlive the process."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def timeout_at(self, when: float | None) -> asyncio.Timeout:
        if when is None:
            return asyncio.timeout_at(None)
        loop = asyncio.get_running_loop()
        # The loop's clock is monotonic too, but a custom loop may count from elsewhere.
        return asyncio.timeout_at(loop.time() + (when - time.monotonic()))


class FakeClock:
    """A clock for tests: ``sleep`` advances time at once (yielding to the loop) and is recorded.

    Timeouts made with :meth:`timeout_at` fire when fake time reaches them, through a sleep or
    :meth:`advance`: a test never waits, and a busy machine cannot make a timeout fire early.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.time = start
        """The current fake time."""
        self.sleeps: list[float] = []
        """Every sleep asked for, in order."""
        self._timeouts: list[tuple[float, int, asyncio.Timeout]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self.time

    def wall(self) -> float:
        """The test's time stands for wall-clock time too (a stored wait's deadline)."""
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        """Move time forward without sleeping; timeouts that are due fire."""
        self.time += seconds
        self._fire()

    def timeout_at(self, when: float | None) -> asyncio.Timeout:
        return _FakeTimeout(self, when)

    def _watch(self, when: float, timeout: asyncio.Timeout) -> None:
        heapq.heappush(self._timeouts, (when, next(self._order), timeout))
        self._fire()

    def _fire(self) -> None:
        due = self._timeouts
        while due and due[0][0] <= self.time:
            _, _, timeout = heapq.heappop(due)
            # Due now on the loop's own scale: asyncio cancels the block and raises TimeoutError
            # when it exits, exactly as for a real timeout. A block that already ended is skipped.
            with contextlib.suppress(RuntimeError):
                timeout.reschedule(asyncio.get_running_loop().time())


def wall_time(clock: Clock | None) -> float:
    """Seconds since the epoch on ``clock`` (the system's for ``None``): what a stored wait's
    deadline is compared with."""
    if clock is None:
        return time.time()
    now = clock.wall()
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise ValueError(f"the clock's wall() gave {now!r:.80}: a Clock's wall() must give seconds since the "
                         "epoch, a finite number")
    return float(now)


class _FakeTimeout(asyncio.Timeout):  # type: ignore[misc]  # final in typeshed only; reusing it keeps asyncio's exact cancel semantics
    """An asyncio timeout that a :class:`FakeClock` fires, watched from the moment it is entered."""

    def __init__(self, clock: FakeClock, when: float | None) -> None:
        super().__init__(None)
        self._fake = (clock, when)

    async def __aenter__(self) -> _FakeTimeout:
        await super().__aenter__()
        clock, when = self._fake
        if when is not None:
            clock._watch(when, self)
        return self
