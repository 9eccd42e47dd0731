"""The protocols a user implements, in one public place.

Each is defined where the library uses it and only re-exported here:

- :class:`Store`: where durable runs are committed (an abstract class; subclass it, and pass
  :mod:`statemachine_agent.stores.conformance`). :class:`~statemachine_agent.stores.SQLiteStore` is
  the reference.
- :data:`Policy`: picks among the enabled transitions in a decision state (a sync or async callable
  of a :class:`~statemachine_agent.policies.Decision`).
- :class:`Clock`: time for a run (a monotonic ``now``, ``wall`` time, an async ``sleep``, ``timeout_at``);
  :class:`~statemachine_agent.clock.FakeClock` is the one for tests.
- :data:`Hook`: a sync or async callable that receives every :class:`~statemachine_agent.events.Event`.
- :class:`Journal`: a run's link to its store, as the runner sees it (``_durable.Durable`` and
  replay's journal implement it), with :class:`RunState`, the run's resumable state as a value.

``tests/typing/protocols_ok.py`` implements each in user code checked by ``mypy --strict``.
"""

from __future__ import annotations

from ._journal import Journal, RunState
from .clock import Clock
from .events import Hook
from .policies import Policy
from .stores._base import Store

__all__ = ["Clock", "Hook", "Journal", "Policy", "RunState", "Store"]
