"""What the store's readers cost: the figures docs/design.md quotes for msgspec.

1. A chat agent's step row (about 600 bytes: a counter written whole, one message appended):
   ``fast_step`` (msgspec into a struct of the row's exact types) against what it replaced,
   ``StepRecord.model_validate_json`` plus the walk that refused NaN in the untyped delta and ops.
2. A snapshot of 2,000 such messages (about 370 KB): ``_sqlite._json`` (msgspec, then ``json`` for
   what msgspec refuses) against Python's ``json`` with the store's hooks.

Each pair is timed back to back in rotating order over 7 rounds; a ratio is the median of the
per-round ratios, with its spread. Targets (issue 17, item 3: serialization at native speed): the
row reader at most half the time of the one it replaced, the snapshot reader at most 0.65x.

    python benchmarks/bench_store_read.py
"""

from __future__ import annotations

import json
import statistics
import sys
import timeit
from collections.abc import Callable

from statemachine_agent.context import all_finite
from statemachine_agent.result import StepKind
from statemachine_agent.stores import _sqlite
from statemachine_agent.stores._records import StepRecord, fast_step, record_json, step_row

ROUNDS = 7
ROW_TARGET, SNAPSHOT_TARGET = 0.5, 0.65


def message(n: int) -> dict[str, str]:
    return {"role": "assistant" if n % 2 else "user",
            "content": f"message {n}: the assistant considers the question, looks up the sources and answers "
                       "in a few plain lines. " * 2}


def row_text(n: int) -> str:
    return record_json(step_row(number=n, state="work", target="work", transition="work_to_work",
                                kind=StepKind.TRANSITION, started_at=1_796_379_336.683 + n, duration=3.3e-05,
                                writes=["counter", "history"], delta={"counter": n + 1},
                                ops={"history": [["a", message(n + 1)]]}))


def before_row(text: str) -> StepRecord:
    record = StepRecord.model_validate_json(text)
    if not (all_finite(record.delta) and all_finite(record.ops)):
        raise ValueError("not finite")
    return record


def timed(fn: Callable[[], object], number: int) -> float:
    return timeit.timeit(fn, number=number) / number


def pair(name: str, fast: Callable[[], object], slow: Callable[[], object], *, number: int,
         unit: tuple[float, str], target: float) -> bool:
    fast_t: list[float] = []
    slow_t: list[float] = []
    for r in range(ROUNDS):
        for which in ((fast, fast_t), (slow, slow_t)) if r % 2 == 0 else ((slow, slow_t), (fast, fast_t)):
            which[1].append(timed(which[0], number))
    ratios = [f / s for f, s in zip(fast_t, slow_t, strict=True)]
    mid = statistics.median(ratios)
    scale, label = unit
    ok = mid <= target
    print(f"{name:44} {statistics.median(fast_t) * scale:8.2f} {label} vs {statistics.median(slow_t) * scale:8.2f} "
          f"{label}  {mid:.2f}x ({min(ratios):.2f}, {max(ratios):.2f})  <= {target}x  {'PASS' if ok else 'FAIL'}")
    return ok


def main() -> int:
    print(f"statemachine-agent store reader benchmark; Python {sys.version.split()[0]}")
    row = row_text(1500)
    assert fast_step(row) == before_row(row)
    snapshot = record_json({"counter": 2000, "note": "", "history": [message(n) for n in range(2000)]})
    assert _sqlite._json(snapshot) == json.loads(snapshot)
    print(f"  a step row of {len(row)} bytes; a snapshot of {len(snapshot) / 1e3:,.0f} KB")
    ok = pair("1. step row: fast_step vs model + NaN walk", lambda: fast_step(row), lambda: before_row(row),
              number=20_000, unit=(1e6, "µs"), target=ROW_TARGET)
    ok &= pair("2. snapshot: msgspec vs json with its hooks", lambda: _sqlite._json(snapshot),
               lambda: _sqlite._DECODER.decode(snapshot), number=50, unit=(1e3, "ms"), target=SNAPSHOT_TARGET)
    print(f"targets: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
