"""Run the test suite beside busy-looping processes: timing must never decide a test's outcome.

Every timeout, deadline, backoff and rate limit the tests exercise runs on a fake clock, so the
suite passes however starved the machine is. This proves it: two (``--busy N``) processes spin
on the CPU for as long as pytest runs. Not a benchmark; ``make test-busy`` runs it.
Run: ``python benchmarks/busy.py [--busy N] [PYTEST ARGS...]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import time


def spin() -> None:
    """Burn one core until terminated."""
    n = 0
    while True:
        n += 1


def main(argv: list[str] | None = None) -> int:
    """Start the spinners, run pytest, stop the spinners; exit with pytest's code."""
    parser = argparse.ArgumentParser(prog="python benchmarks/busy.py", description=main.__doc__)
    parser.add_argument("--busy", type=int, default=2, help="busy-looping processes (default: 2)")
    args, pytest_args = parser.parse_known_args(argv)
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(max(0, args.busy))]
    for p in spinners:
        p.start()
    print(f"busy.py: {len(spinners)} busy-looping processes beside pytest", flush=True)
    t0 = time.perf_counter()
    try:
        code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                *pytest_args])
    finally:
        for p in spinners:
            p.terminate()
        for p in spinners:
            p.join()
    print(f"busy.py: pytest exited {code} after {time.perf_counter() - t0:.1f} s under load", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
