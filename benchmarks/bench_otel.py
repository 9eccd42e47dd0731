"""What tracing costs per step: the OpenTelemetry hook and the JSONL writer, against no hook, in one run.

Run it from the repository's root: ``.venv/bin/python benchmarks/bench_otel.py`` (about 20 s on 2 cores;
``--quick`` for a smoke run). It needs opentelemetry-sdk (in the ``dev`` extra).

The workflow is bench_runner.py's one-state loop: ``work`` adds 1 to ``counter`` and loops back while
``counter < 50`` (``max_traversals=50``), then goes to ``done``: 50 steps per run, with ``run_sync``.
Variants, each timed back to back in rotating order per repeat:

* no hook;
* ``OpenTelemetry()`` with the API only (no SDK installed as the global provider: every span is the
  API's non-recording one, so the hook keeps nothing past ``RunStarted``);
* ``OpenTelemetry(tracer_provider=...)`` on the SDK with a ``BatchSpanProcessor`` over an exporter that
  discards what it is given (a run makes 51 spans: the agent's and one per step);
* ``TraceWriter`` writing to ``/dev/null`` (one JSON line per event: three per step).

A figure is CPU time of this thread per step (the batch processor's export thread is not counted:
it runs beside the run, as in production), and a ratio is the median over repeats of the per-repeat
ratio against no hook.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from statemachine_agent import Context, Workflow
from statemachine_agent.otel import OpenTelemetry
from statemachine_agent.traces import TraceWriter

STEPS = 50


class Counter(Context):
    counter: int = 0


def loop() -> Any:
    wf = Workflow("loop", Counter)

    @wf.state(initial=True, reads=["counter"], writes=["counter"])
    def work(ctx: Counter) -> None:
        ctx.counter += 1

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition(work, work, guard=lambda c: c.counter < STEPS, max_traversals=STEPS)
    wf.transition(work, "done")
    return wf.compile()


class Discard(SpanExporter):
    """Takes every batch and keeps nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def per_step(compiled: Any, hooks: list[Any], runs: int) -> float:
    t0 = time.thread_time()
    for _ in range(runs):
        compiled.run_sync(Counter(), hooks=hooks)
    return (time.thread_time() - t0) / (runs * STEPS)


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    runs, repeats = (20, 3) if quick else (200, 9)
    compiled = loop()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=1 << 16))
    devnull = open("/dev/null", "w", encoding="utf-8")  # noqa: SIM115  (closed below)
    variants: dict[str, Callable[[], list[Any]]] = {
        "no hook": lambda: [],
        "OpenTelemetry, API only (no-op)": lambda: [OpenTelemetry()],
        "OpenTelemetry, SDK + BatchSpanProcessor": lambda: [OpenTelemetry(tracer_provider=provider)],
        "TraceWriter to /dev/null": lambda: [TraceWriter(devnull)],
    }
    for make in variants.values():  # warm up
        per_step(compiled, make(), 5)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            samples[name].append(per_step(compiled, variants[name](), runs))
    provider.shutdown()
    devnull.close()
    base = samples["no hook"]
    print(f"per step, {runs} runs of {STEPS} steps x {repeats} repeats (CPU time of this thread)")
    print(f"{'variant':42} {'median us/step':>15} {'ratio (min/median/max)':>28}")
    for name in names:
        ratios = [s / b for s, b in zip(samples[name], base, strict=True)]
        print(f"{name:42} {statistics.median(samples[name]) * 1e6:15.2f} "
              f"{min(ratios):8.2f} / {statistics.median(ratios):5.2f} / {max(ratios):5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
