"""A worker process for tests/test_attack_durable.py: it resumes, delivers to, or wakes the same
waiting runs as other workers at the same moment (race_worker's approval workflow, whose charge is
an at_most_once tool logging every effect).

``python attack_worker.py MODE DB LOG GO RUN_ID...``: MODE is ``deliver``, ``resume`` or ``wake``;
the worker waits for the file GO, then acts on each run in the order given and prints one line per
run: its id and what happened (a terminal, ``none``, or the name of the typed error it got).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import race_worker

from statemachine_agent.errors import StateMachineAgentError
from statemachine_agent.stores import SQLiteStore


def main(argv: list[str]) -> int:
    mode, db, log, go, *runs = argv
    compiled = race_worker.make(log, pause=0.002)
    with SQLiteStore(db) as store:
        while not Path(go).exists():
            time.sleep(0.001)
        if mode == "wake":
            for _ in range(3):
                for result in compiled.wake_due_sync(store):
                    print(result.run_id, result.terminal, flush=True)
            return 0
        for run_id in runs:
            try:
                if mode == "deliver":
                    out = compiled.deliver_sync(run_id, "approval", {"ok": True}, store=store)
                    print(run_id, "none" if out is None else out.terminal, flush=True)
                else:
                    print(run_id, compiled.resume_sync(run_id, store=store).terminal, flush=True)
            except StateMachineAgentError as exc:  # fenced by another worker, or the run has ended
                print(run_id, type(exc).__name__, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
