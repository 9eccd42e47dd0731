"""The ``statemachine-agent`` command: check, run and draw workflows named as ``MODULE:OBJECT``."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import traceback
import typing
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .check import CheckReport, analyze
from .compile import CompiledWorkflow, compile_spec
from .diagrams import GraphvizMissing, render, to_dot, to_mermaid
from .errors import DefinitionError
from .policies import Policy, first_enabled, seeded_random
from .result import result_of
from .spec import WorkflowSpec
from .workflow import Workflow

__all__ = ["main"]


class UsageError(Exception):
    """Bad command-line input: printed, exit code 2."""


def _version() -> str:
    try:
        return version("statemachine-agent")
    except PackageNotFoundError:
        return "unknown"


def import_object(target: str, example: str = "myagent.workflows:research") -> Any:
    """Import ``MODULE:OBJECT`` and return the object (``UsageError`` saying why not).

    A module that raises :class:`DefinitionError` while importing (it compiles its workflow at
    import, as the README does) lets it through: its problems are reported like a bad workflow's.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{target!r} is not MODULE:OBJECT, e.g. {example}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules in the current folder import
    try:
        module = importlib.import_module(module_name)
    except DefinitionError:
        raise
    except ModuleNotFoundError as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc}. Run from the folder that "
                         "contains it, or install its package") from exc
    except Exception as exc:  # the user's module failed while importing: say so, no traceback
        raise UsageError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = ", ".join(n for n in dir(module) if not n.startswith("_"))
            raise UsageError(f"module {module_name!r} has no {attr!r}; it has: {names}") from None
    return obj


def load_spec(target: str) -> WorkflowSpec:
    """Import ``MODULE:OBJECT`` and return the workflow spec it names."""
    obj = import_object(target)
    if isinstance(obj, (Workflow, CompiledWorkflow)):
        return obj.spec if isinstance(obj, CompiledWorkflow) else obj.spec()
    if isinstance(obj, WorkflowSpec):
        return obj
    raise UsageError(f"{target} is a {type(obj).__name__}, not a Workflow, CompiledWorkflow or "
                     "WorkflowSpec")


def _summary(spec: WorkflowSpec, report: CheckReport) -> str:
    terminals = sum(1 for s in spec.states if s.terminal)
    return (f"workflow {spec.name!r}: {len(spec.states)} states ({terminals} terminal), "
            f"{len(spec.transitions)} transitions, {len(spec.error_transitions)} error transitions")


def cmd_check(args: argparse.Namespace) -> int:
    spec = load_spec(args.target)
    report = analyze(spec)
    if report.problems:
        print(DefinitionError(report.workflow, report.problems), file=sys.stderr)
        return 1
    print(f"ok: {_summary(spec, report)}")
    print(f"worst-case steps: {report.worst_case_steps}")
    return 0


def _read_input(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    text, where = raw, "--input"
    if raw.startswith("@"):
        path = Path(raw[1:])
        where = f"input file {str(path)!r}"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {where}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise UsageError(f"{where} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                             f"{exc.start}): save it as UTF-8 JSON") from exc
        except ValueError as exc:  # e.g. a NUL byte in the path
            raise UsageError(f"cannot read {where}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                         """give an object such as '{"question": "..."}' or @file.json""") from exc
    except RecursionError as exc:
        raise UsageError(f"{where} nests too deeply for Python's JSON reader: flatten it (context "
                         "fields rarely need more than a few levels)") from exc
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise UsageError(f"{where} cannot be read as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"--input must be a JSON object of context fields, got {type(data).__name__}")
    return data


def _policy(name: str) -> Policy[Any]:
    """``first``, ``random[:SEED]``, or ``MODULE:OBJECT`` naming a policy callable itself (called
    with each :class:`~.policies.Decision`; for a policy built by a factory, name the built one)."""
    if name == "first":
        return first_enabled
    kind, _, seed = name.partition(":")
    if kind == "random":
        try:
            return seeded_random(int(seed) if seed else 0)
        except ValueError:
            raise UsageError(f"--policy {name!r}: the seed must be a whole number, e.g. random:7") from None
    if ":" in name:
        obj = import_object(name, example="mypolicies:ask_llm")
        if not callable(obj) or isinstance(obj, type):
            raise UsageError(f"--policy {name!r} is a {type(obj).__name__}, not a policy: name a callable "
                             "taking a Decision and returning an Option or a transition name (for a "
                             "class or factory, name an instance it built)")
        return typing.cast("Policy[Any]", obj)
    raise UsageError(f"unknown --policy {name!r}: use 'first', 'random[:SEED]' or MODULE:OBJECT naming "
                     "a policy callable")


def _positive_option(value: float | None, option: str, what: str) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{option} {value!r}: give {what}")


def _user_traceback(exc: BaseException) -> str:
    """The exception's traceback without this library's frames: where the user's code failed."""
    package = str(Path(__file__).resolve().parent)
    examples = str(Path(package) / "examples")
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(package) or f.filename.startswith(examples)]
    lines = ["Traceback (most recent call last, in your workflow's code):\n"]
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def _print_result(result: Any, compiled: CompiledWorkflow[Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return
    print(f"terminal: {result.terminal} ({result.outcome.value})")
    if result.reason:
        print(f"reason:   {result.reason}")
    print(f"path:     {' -> '.join(result.states)}  ({result.steps} steps, bound {compiled.max_steps})")
    print("context:  " + json.dumps(result.to_dict()["context"], default=str))


def cmd_run(args: argparse.Namespace) -> int:
    _positive_option(args.max_steps, "--max-steps", "a whole number of steps of at least 1")
    _positive_option(args.timeout, "--timeout", "a positive, finite number of seconds")
    spec = load_spec(args.target)
    compiled = compile_spec(spec)
    data = _read_input(args.input)
    policy = _policy(args.policy)
    try:
        context = compiled.context_type.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"--input does not fit {compiled.context_type.__name__}:\n{exc}") from exc
    except RecursionError as exc:
        raise UsageError("--input nests too deeply to validate: flatten it") from exc
    try:
        result = compiled.run_sync(context, policy=policy, max_steps=args.max_steps, timeout=args.timeout)
    except Exception as exc:
        ended = result_of(exc)
        if ended is None:
            raise
        # An exception no error transition routes: a bug in the workflow's code, not bad input.
        _print_result(ended, compiled, args.json)
        if not args.json:
            print(f"error:    {type(exc).__name__}: {exc}")
        print(_user_traceback(exc), file=sys.stderr, end="")
        return 1
    _print_result(result, compiled, args.json)
    return 0 if result.ok else 1


_FORMATS = {".dot": "dot", ".gv": "dot", ".svg": "svg", ".png": "png", ".pdf": "pdf", ".mmd": "mermaid",
            ".mermaid": "mermaid"}


def cmd_diagram(args: argparse.Namespace) -> int:
    spec = load_spec(args.target)
    compiled = compile_spec(spec)
    out = Path(args.output)
    fmt = args.format or _FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UsageError(f"cannot tell the format from {out.name!r}: use a .dot, .svg, .png, .pdf or .mmd "
                         "name, or --format")
    run = None
    if args.run:
        if fmt == "mermaid":
            raise UsageError("--run draws a run over the workflow in DOT, SVG, PNG or PDF; Mermaid has no "
                             "highlighting: drop --run or pick another format")
        try:
            run = json.loads(Path(args.run).read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot read run file {args.run!r}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise UsageError(f"{args.run!r} is not JSON ({exc.msg}); write it with "
                             "`statemachine-agent run ... --json` or RunResult.to_dict()") from exc
        except (ValueError, RecursionError) as exc:  # not UTF-8, nested too deep, a huge number
            raise UsageError(f"cannot read run file {args.run!r} ({type(exc).__name__}: {exc!s:.100}); "
                             "write it with `statemachine-agent run ... --json`") from exc
    if run is not None and not isinstance(run, dict):
        raise UsageError(f"--run {args.run!r} holds a JSON {type(run).__name__}, not a recorded run: write "
                         "it with `statemachine-agent run ... --json`")
    try:
        graph = to_dot(compiled, run, rankdir=args.rankdir)
    except ValueError as exc:
        raise UsageError(f"--run {args.run!r}: {exc}") from exc
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "mermaid":
            out.write_text(to_mermaid(compiled), encoding="utf-8")
        elif fmt == "dot":
            out.write_text(graph.source, encoding="utf-8")
        else:
            render(graph, out, fmt)
    except OSError as exc:
        raise UsageError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from exc
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="statemachine-agent", description="Check, run and draw "
                                     "statemachine-agent workflows named as MODULE:OBJECT.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="check a workflow; print its worst-case step bound (exit 1 on problems)")
    p.add_argument("target", help="MODULE:OBJECT naming a Workflow")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("run", help="run a workflow once and print the result (exit 1 on a failure outcome)")
    p.add_argument("target", help="MODULE:OBJECT naming a Workflow")
    p.add_argument("--input", help="the context as a JSON object, or @FILE.json")
    p.add_argument("--policy", default="first", help="decision policy: first (default), random[:SEED], "
                   "or MODULE:OBJECT naming a policy callable (Decision -> Option or transition name)")
    p.add_argument("--max-steps", type=int, help="step budget (default: the checker's worst-case bound)")
    p.add_argument("--timeout", type=float, help="wall-clock deadline in seconds")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("diagram", help="draw a workflow (DOT, SVG, PNG, PDF or Mermaid)")
    p.add_argument("target", help="MODULE:OBJECT naming a Workflow")
    p.add_argument("-o", "--output", required=True, help="file to write; its extension picks the format")
    p.add_argument("--format", choices=sorted(set(_FORMATS.values())), help="override the format")
    p.add_argument("--run", help="a recorded run (JSON from `run --json`) to draw over the workflow")
    p.add_argument("--rankdir", choices=["LR", "TB"], help="left to right or top to bottom (default: "
                   "left to right up to 12 states)")
    p.set_defaults(func=cmd_diagram)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``statemachine-agent`` command."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"statemachine-agent: {exc}", file=sys.stderr)
        return 2
    except DefinitionError as exc:
        print(exc, file=sys.stderr)
        return 1
    except GraphvizMissing as exc:
        print(f"statemachine-agent: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad budgets and the like
        print(f"statemachine-agent: {exc}", file=sys.stderr)
        return 2
    except RecursionError:
        print("statemachine-agent: the input nests too deeply to handle: flatten it", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
