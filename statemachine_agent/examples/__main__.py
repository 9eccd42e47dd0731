"""Write the diagrams of every example workflow: ``python -m statemachine_agent.examples --diagrams DIR``."""

from __future__ import annotations

import argparse
import sys

from statemachine_agent.cli import load_spec
from statemachine_agent.compile import compile_spec
from statemachine_agent.diagrams import write_diagrams
from statemachine_agent.examples import EXAMPLES


def main(argv: list[str] | None = None) -> int:
    """Regenerate DOT, Mermaid and (with Graphviz installed) SVG for each example."""
    parser = argparse.ArgumentParser(prog="python -m statemachine_agent.examples", description=main.__doc__)
    parser.add_argument("--diagrams", default="diagrams", help="output folder (default: diagrams)")
    args = parser.parse_args(argv)
    for target in EXAMPLES.values():
        for path in write_diagrams(compile_spec(load_spec(target)), args.diagrams):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
