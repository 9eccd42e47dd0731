"""The ``statemachine-agent`` command: check, run and draw workflows named as ``MODULE:OBJECT``, and
list, show, check, resume, deliver to and fork the durable runs of a store (``runs ... --store FILE``)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import select
import shlex
import sqlite3
import stat
import sys
import time
import traceback
import typing
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .check import CheckReport, analyze
from .compile import CompiledWorkflow, compile_spec
from .context import first_non_finite
from .diagrams import FORMATS, GraphvizMissing, OutputRefused, format_of, write_file
from .errors import DefinitionError, Problem, ResumeCode, StoreCorrupted, StoreError
from .policies import Policy, first_enabled, seeded_random
from .result import result_of
from .secrets import secret_fields, unseal
from .spec import WorkflowSpec
from .stores import RunRecord, RunStatus, SQLiteStore, Store, StoredRun
from .workflow import Workflow

__all__ = ["MAX_INPUT_BYTES", "main", "non_finite_field", "printable"]


class UsageError(Exception):
    """Bad command-line input: printed, exit code 2."""


# --- text a person reads -----------------------------------------------------------------------------
# Everything the command prints goes through _say, and every name it interpolates through _name (or
# _json): a run id, state, event, workflow name or error message can hold any character, and one that a
# terminal acts on (ESC sequences, carriage returns, newlines, C1 controls, bidi overrides that reorder
# what follows) must never reach it raw. Such characters are shown as escapes (\x1b, \n, \u202e).
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(c: str) -> str:
    o = ord(c)
    if c in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[c]
    if o < 0x100:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every character that is not printable escaped: control characters (C0, DEL, C1,
    ESC), line and paragraph separators, bidi marks and overrides (U+200E/F, U+061C, U+202A-202E,
    U+2066-2069) and other format characters, lone surrogates and unassigned code points. With
    ``keep_newlines``, ``\\n`` is kept (for the command's own multi-line messages)."""
    if (text.replace("\n", "") if keep_newlines else text).isprintable():
        return text
    return "".join(c if c.isprintable() or (keep_newlines and c == "\n") else _escape_char(c) for c in text)


def _say(text: object = "", *, err: bool = False, end: str = "\n") -> None:
    """Print a line (or the command's own lines) with nothing in it that a terminal would act on."""
    print(printable(str(text), keep_newlines=True), file=sys.stderr if err else sys.stdout, end=end)


def _json_escape(c: str) -> str:
    o = ord(c)
    if o < 0x10000:
        return f"\\u{o:04x}"
    o -= 0x10000
    return f"\\u{0xD800 + (o >> 10):04x}\\u{0xDC00 + (o & 0x3FF):04x}"


def _finite(value: Any) -> Any:
    """``value`` with NaN and the infinities as the strings JSON readers know them by (JSON itself
    has no such numbers): ``"NaN"``, ``"Infinity"``, ``"-Infinity"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {_finite(k) if isinstance(k, float) else k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json(value: Any, indent: int | None = None) -> str:
    """``value`` as strict JSON (no NaN or Infinity: see :func:`_finite`), non-ASCII text kept
    readable, and every character that is not printable as a ``\\u`` escape: valid JSON that is
    also safe to show on a terminal."""
    text = json.dumps(_finite(value), indent=indent, ensure_ascii=False, allow_nan=False, default=str)
    # Raw characters can only be inside strings (json escapes C0 itself), where \\u escapes are valid.
    if text.replace("\n", "").isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in text)


# --- input files and values --------------------------------------------------------------------------
MAX_INPUT_BYTES = 16 * 1024 * 1024
"""The largest ``@FILE`` (``--input``, ``--payload``, ``--patch``) or run file read: 16 MiB."""


PIPE_WAIT = 10.0
"""The longest an ``@FILE`` that is a pipe (a FIFO, ``@/dev/stdin`` piped) may take to give all of its
content, in seconds: a pipe nobody writes to, or that never ends, would otherwise block the command."""


def _read_bounded(path: Path, where: str) -> str:
    """The UTF-8 text of ``path``, read with a bounded read: a file over :data:`MAX_INPUT_BYTES` (or a
    device that never ends, such as /dev/zero) is refused after reading that much, and a pipe that has
    not ended within :data:`PIPE_WAIT` seconds is refused too (opening one never blocks)."""
    try:
        # O_NONBLOCK: opening a FIFO nobody has open for writing would block until somebody does.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UsageError(f"cannot read {where}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise UsageError(f"cannot read {where}: {exc}") from exc
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode) and hasattr(select, "poll"):
            data = _read_pipe(fd, where)
        else:
            os.set_blocking(fd, True)
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {where}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_INPUT_BYTES:
        raise UsageError(f"{where} is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB: give a smaller "
                         "JSON file (a regular file, not a device)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                         f"{exc.start}): save it as UTF-8 JSON") from exc


def _read_pipe(fd: int, where: str) -> bytes:
    """What a pipe (opened non-blocking) gives until its writer closes it: at most one byte over
    :data:`MAX_INPUT_BYTES`, within :data:`PIPE_WAIT` seconds."""
    deadline = time.monotonic() + PIPE_WAIT
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_INPUT_BYTES:
        left = deadline - time.monotonic()
        if left <= 0:
            raise UsageError(f"{where} is a pipe that did not end within {PIPE_WAIT:g} s (nobody wrote to it, or "
                             "its writer never closed it): write the JSON and close it, or give a regular file")
        if not poller.poll(max(1, int(left * 1000))):
            continue
        try:
            chunk = os.read(fd, min(1 << 16, MAX_INPUT_BYTES + 1 - size))
        except BlockingIOError:
            continue
        if not chunk:  # every writer closed it
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _field_path(parts: Sequence[str | int]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.isidentifier():
            text += f".{part}" if text else part
        else:
            text += f"[{_json(part)}]"  # a JSON string: any key reads back, escapes and all
    return printable(text)


def _first_non_finite(value: Any) -> tuple[str, float] | None:
    found = first_non_finite(value)
    return None if found is None else (_field_path(found[0]), found[1])


def non_finite_field(value: Any) -> str | None:
    """The path (``amount``, ``order.items[2].price``) of the first number in ``value`` (JSON-like
    data: dicts, lists, tuples) that is NaN or infinite, or ``None`` when there is none. JSON has no
    such numbers, so a store cannot keep them: the command line refuses them naming the field (and
    the library's ``deliver`` can do the same). Iterative, so any nesting depth is fine."""
    found = _first_non_finite(value)
    return None if found is None else found[0]


def _refuse_non_finite(data: Any, where: str) -> None:
    found = _first_non_finite(data)
    if found is None:
        return
    field, value = found
    what = "NaN" if math.isnan(value) else "infinite (Infinity, or a number too large for a float, such as 1e999)"
    raise UsageError(f"{where}: field '{field}' is {what}, which JSON cannot hold: give a finite number")


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
    except KeyboardInterrupt:
        raise
    except SystemExit as exc:  # sys.exit() or exit() at import, whatever the code: never a silent exit
        raise UsageError(f"importing {module_name!r} failed: it raised SystemExit({exc.code!r}) (sys.exit() "
                         "at import); keep its script part under `if __name__ == \"__main__\":`") from exc
    except BaseException as exc:  # the user's module failed while importing: say so, no traceback
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
        _say(_error_text(DefinitionError(report.workflow, report.problems)), err=True)
        return 1
    _say(f"ok: {_summary(spec, report)}")
    _say(f"worst-case steps: {report.worst_case_steps}")
    return 0


def _read_input(raw: str | None, option: str = "--input", *, example: str = '{"question": "..."}',
                what: str = "context fields") -> dict[str, Any]:
    """The JSON object given to ``option`` (inline, or ``@FILE``); ``{}`` when it is not given."""
    if raw is None:
        return {}
    text, where = raw, option
    if raw.startswith("@"):
        path = Path(raw[1:])
        where = f"{'input' if option == '--input' else option} file {str(path)!r}"
        text = _read_bounded(path, where)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                         f"give an object such as '{example}' or @file.json") from exc
    except RecursionError as exc:
        raise UsageError(f"{where} nests too deeply for Python's JSON reader: flatten it ({what} rarely "
                         "need more than a few levels)") from exc
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise UsageError(f"{where} cannot be read as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{option} must be a JSON object of {what}, got {type(data).__name__}")
    _refuse_non_finite(data, where)
    return data


def _invalid_fields(exc: ValidationError, most: int = 5) -> str:
    """What pydantic found wrong, on one line: ``field 'question': String should have at least 1
    character; field 'n': ...`` (the first ``most`` of them)."""
    errors = exc.errors(include_url=False)
    parts = [f"field '{_field_path([str(x) if not isinstance(x, int) else x for x in e['loc']])}': {e['msg']}"
             for e in errors[:most]]
    more = f"; and {len(errors) - most} more" if len(errors) > most else ""
    return "; ".join(parts) + more


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
        _say(_json(result.to_dict(), indent=2))
        return
    _say(f"terminal: {_name(result.terminal)} ({result.outcome.value})")
    if result.reason:
        _say(f"reason:   {printable(result.reason)}")
    _say(f"path:     {' -> '.join(_name(s) for s in result.states)}  ({result.steps} steps, bound "
         f"{compiled.max_steps})")
    _say("context:  " + _json(result.to_dict()["context"]))


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
        raise UsageError(f"--input does not fit {compiled.context_type.__name__}: {_invalid_fields(exc)}") from exc
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
            _say(f"error:    {type(exc).__name__}: {printable(str(exc))}")
        _say(_user_traceback(exc), err=True, end="")
        return 1
    _print_result(result, compiled, args.json)
    return 0 if result.ok else 1


def _one_of(names: Sequence[str]) -> str:
    """``a, b or c``: the diagram formats of the registry, in messages."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def cmd_diagram(args: argparse.Namespace) -> int:
    spec = load_spec(args.target)
    compiled = compile_spec(spec)
    out = Path(args.output)
    fmt = FORMATS[args.format] if args.format else format_of(out)
    if fmt is None:
        raise UsageError(f"cannot tell the format from {out.name!r}: use a "
                         f"{_one_of([f.suffixes[0] for f in FORMATS.values()])} name, or --format")
    run = None
    if args.store is not None and not args.run:
        raise UsageError("--store names where the run given by --run RUN_ID is stored: give --run too, or "
                         "drop --store")
    if args.run and not fmt.draws_runs:
        raise UsageError(f"--run draws a run over the workflow in "
                         f"{_one_of([f.label for f in FORMATS.values() if f.draws_runs])}; {fmt.label} has no "
                         "highlighting: drop --run or pick another format")
    if args.run and args.store is not None:
        run = _stored_run_drawing(compiled, args.run, args.store)
    elif args.run and args.run.endswith(".jsonl"):
        run = _traced_run_drawing(compiled, args.run)
    elif args.run:
        where = f"run file {args.run!r}"
        text = _read_bounded(Path(args.run), where)
        try:
            run = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); write "
                             "it with `statemachine-agent run ... --json` or RunResult.to_dict()") from exc
        except (ValueError, RecursionError) as exc:  # nested too deep, a huge number
            raise UsageError(f"cannot read {where} ({type(exc).__name__}: {exc!s:.100}); write it with "
                             "`statemachine-agent run ... --json`") from exc
    if run is not None and not isinstance(run, dict):
        raise UsageError(f"--run {args.run!r} holds a JSON {type(run).__name__}, not a recorded run: write "
                         "it with `statemachine-agent run ... --json`")
    try:
        data = fmt.draw(compiled, run, args.rankdir)
    except ValueError as exc:
        raise UsageError(f"--run {args.run!r}: {exc}") from exc
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_file(out, data)
    except OutputRefused as exc:
        raise UsageError(f"{exc}") from exc
    except OSError as exc:
        raise UsageError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from exc
    _say(f"wrote {printable(str(out))}")
    return 0


# --- stored runs -----------------------------------------------------------------------------------
def _open_store(raw: str, *, readonly: bool = False, secrets_env: str | None = None) -> SQLiteStore:
    """The store at ``raw``, which must exist: a command never creates an empty store by mistake.
    ``readonly``: opened read-only (``runs list``, ``runs show``, ``diagram --run``): nothing is written.
    ``secrets_env``: the environment variable holding the Fernet key of the runs' secret fields."""
    if not raw:
        raise UsageError("--store '': give the file the runs were stored in, e.g. --store runs.db")
    path = Path(raw)
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot open the store {raw!r}: {exc}") from exc
    if not exists:
        parent = path.absolute().parent
        if not parent.is_dir():
            raise UsageError(f"no store at {raw!r}: folder {str(parent)!r} does not exist")
        raise UsageError(f"no store at {raw!r}: give the file a durable run was stored in "
                         "(SQLiteStore(path), run(ctx, store=...))")
    if is_dir:
        raise UsageError(f"no store at {raw!r}: it is a folder; give the store's file, e.g. {raw}/runs.db")
    try:
        regular = path.is_file()  # a FIFO would block opening it; a device is no store either
    except OSError as exc:
        raise UsageError(f"cannot open the store {raw!r}: {exc}") from exc
    if not regular:
        raise UsageError(f"no store at {raw!r}: it is not a regular file (a pipe or a device); give the file a "
                         "durable run was stored in")
    _refuse_what_is_no_store(path, raw)
    try:
        codec = None
        if secrets_env is not None:
            from .secrets import FernetSecrets  # noqa: PLC0415  (needs the [secrets] extra)

            codec = FernetSecrets.from_env(secrets_env)
        return SQLiteStore(path, readonly=readonly, secrets=codec)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"cannot open the store {raw!r}: {exc}") from exc


def _peek(path: Path) -> sqlite3.Connection | None:
    """A read-only SQLite connection to ``path`` that writes nothing, not even a -wal or -shm; None
    when SQLite cannot open it so (SQLiteStore then explains why)."""
    try:
        # immutable: no -wal/-shm is made; readonly_shm: SQLite's shared memory of a live (or killed) writer
        # is read, never written (a reader would otherwise write its read mark, or recover it, into the -shm)
        wal, shm = Path(f"{path}-wal").exists(), Path(f"{path}-shm").exists()
        return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro"
                               + (("&readonly_shm=1" if shm else "") if wal else "&immutable=1"), uri=True)
    except (sqlite3.Error, ValueError, OSError):
        return None


def _refuse_what_is_no_store(path: Path, raw: str) -> None:
    """Refuse an empty file, or an SQLite database without a store's tables, before SQLiteStore would
    make a store of it: the commands read runs, so a file with none was given by mistake. Read-only;
    anything this look cannot read is left to SQLiteStore to explain."""
    conn = _peek(path)
    if conn is None:
        return
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error:
        return
    finally:
        conn.close()
    if "sma_meta" not in tables:
        what = "the file is empty" if not tables else f"it is an SQLite database of another program (tables: " \
            f"{', '.join(sorted(tables)[:5])})"
        raise UsageError(f"no store at {raw!r}: {what}; give the file a durable run was stored in")


def _run_id(raw: str, option: str = "the run id") -> str:
    if not raw:
        raise UsageError(f"{option} is empty: list the runs with `statemachine-agent runs list --store FILE`")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 reach argv as lone surrogates
        raise UsageError(f"{option} {raw!r} holds bytes that are not UTF-8 text: run ids are text; list the runs "
                         "with `statemachine-agent runs list --store FILE`") from None
    return raw


def _load(store: Store, run_id: str) -> StoredRun:
    return store.load(_run_id(run_id)).result()


def _when(ts: float | None) -> str:
    """A wall-clock time as ISO 8601 in UTC, to the second."""
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return repr(ts)


def _name(text: str) -> str:
    """A name as it can be read on one line: as it is, or quoted when it has odd characters."""
    return text if text and text.isprintable() and text.strip() == text and " " not in text else _json(text)


def _brief(value: Any, width: int = 80) -> str:
    """``value`` as one line of JSON, cut at ``width`` characters."""
    text = _json(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def _cut(text: str, width: int = 200) -> str:
    """A message on one line, cut at ``width`` characters."""
    text = text if text.isprintable() else _json(text)
    return text if len(text) <= width else text[:width - 1] + "…"


def _where(r: RunRecord) -> str:
    """The state a stored run is in, or the terminal it ended in (with its outcome)."""
    if r.status is RunStatus.DONE:
        return f"{_name(r.terminal or r.state)} ({r.outcome or 'failure'})"
    return _name(r.state)


def _shell_quote(text: str) -> str:
    """``text`` quoted for a POSIX shell, and printable: a word with characters that are not printable
    is written in ANSI-C quotes (``$'it\\'s\\tmine'``, which bash, zsh and ksh read back as the word)."""
    if text.isprintable():
        return shlex.quote(text)
    return "$'" + "".join(_shell_char(c) for c in text) + "'"


def _shell_char(c: str) -> str:
    o = ord(c)
    if c in "\\'":
        return "\\" + c
    if c.isprintable():
        return c
    if c in _SHORT_ESCAPES or o < 0x80:
        return _escape_char(c)
    if 0xDC80 <= o <= 0xDCFF:  # a byte of a command-line word that was not UTF-8: that byte again
        return f"\\x{o - 0xDC00:02x}"
    return f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def _command(*parts: str) -> str:
    return " ".join(["statemachine-agent", *(p if p == "MODULE:OBJECT" else _shell_quote(p) for p in parts)])


def _resume_hint(r: RunRecord, store: str) -> str | None:
    if r.status is RunStatus.DONE:
        return None
    if r.status is RunStatus.WAITING and r.wait is not None:
        return (f"{_command('runs', 'deliver', 'MODULE:OBJECT', r.run_id, r.wait.event, '--store', store)}"
                f" (or: {_command('runs', 'resume', 'MODULE:OBJECT', r.run_id, '--store', store)})")
    return _command("runs", "resume", "MODULE:OBJECT", r.run_id, "--store", store)


def _version_of(r: RunRecord) -> str:
    """A run's version as a person reads it: the first 8 hex digits of its workflow's fingerprint."""
    return _name(r.fingerprint[:8] or "-")


def _newest_versions(records: Sequence[RunRecord]) -> dict[str, str]:
    """Each workflow's newest version: the fingerprint of its most recently created run (of those
    created at the same time, the one ``list_runs`` gives first: the most recently updated)."""
    newest: dict[str, RunRecord] = {}
    for r in records:
        seen = newest.get(r.workflow)
        if seen is None or r.created_at > seen.created_at:
            newest[r.workflow] = r
    return {w: r.fingerprint for w, r in newest.items()}


def _against(target: str | None) -> CompiledWorkflow[Any] | None:
    return None if target is None else _compiled(target)


def _version_note(store_path: str, against: str | None, *, many: bool, newest: str | None = None) -> str:
    """What a ``*`` after a version means (``newest``: the version compared with), and the command
    that says more."""
    them = "them" if many else "it"
    other = f" ({_name(newest[:8])})" if newest is not None else ""
    if against is None:
        return (f"stored under an earlier version of its workflow{other}: "
                f"`{_command('runs', 'check', 'MODULE:OBJECT', '--store', store_path)}` says whether the current "
                f"one can continue {them}")
    return (f"stored under another version than {printable(against)}'s{other}: "
            f"`{_command('runs', 'check', against, '--store', store_path)}` says whether it can continue {them}")


def cmd_runs_list(args: argparse.Namespace) -> int:
    compiled = _against(args.against)
    workflow = args.workflow
    if compiled is not None:
        if workflow is not None and workflow != compiled.name:
            raise UsageError(f"--workflow {workflow!r} and --against {args.against} (workflow {compiled.name!r}) "
                             "name different workflows: --against lists its own workflow's runs; drop --workflow")
        workflow = compiled.name
    with _open_store(args.store, readonly=True) as store:
        records = store.list_runs(workflow).result()
    newest = _newest_versions(records) if compiled is None else {compiled.name: compiled.fingerprint}
    changed = [r.fingerprint != newest.get(r.workflow, r.fingerprint) for r in records]
    if args.json:
        _say(_json([{**r.model_dump(mode="json"), "version_changed": c} for r, c in zip(records, changed,
                                                                                      strict=True)], indent=2))
        return 0
    if not records:
        of = f" of workflow {workflow!r}" if workflow is not None else ""
        _say(f"no runs{of} in the store {args.store!r}")
        return 0
    rows = [("RUN", "WORKFLOW", "STATUS", "STATE", "STEPS", "VERSION", "UPDATED (UTC)")]
    rows += [(_name(r.run_id), _name(r.workflow), str(r.status), _where(r), str(r.next_step),
              _version_of(r) + ("*" if c else ""), _when(r.updated_at)) for r, c in zip(records, changed, strict=True)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        _say("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]).rstrip())
    if any(changed):
        _say(f"* {_version_note(args.store, args.against, many=sum(changed) > 1)}")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    compiled = _against(args.against)
    with _open_store(args.store, readonly=True) as store:
        stored = _load(store, args.run_id)
        r = stored.run
        if compiled is not None and r.workflow != compiled.name:
            raise UsageError(f"run {r.run_id!r} is a run of workflow {r.workflow!r}, not {compiled.name!r}: compare "
                             "it with the workflow that made it (--against MODULE:OBJECT), or drop --against")
        changed, version = _show_version(store, r, args.store, compiled, args.against)
    hint = _resume_hint(r, args.store)
    if args.json:
        _say(_json({**stored.model_dump(mode="json"), "version_changed": changed, "resume": hint}, indent=2))
        return 0
    lines = _show_lines(stored)
    lines.insert(next(i for i, line in enumerate(lines) if line.startswith("created:")) + 1, version)
    for line in lines:
        _say(line)
    if hint is not None:
        _say(f"resume it: {hint}")
    return 0


def _show_version(store: Store, r: RunRecord, store_path: str, compiled: CompiledWorkflow[Any] | None,
                  against: str | None) -> tuple[bool | None, str]:
    """Whether the run was stored under another version than its workflow's newest (or than
    ``compiled``), and the ``version:`` line saying so; None when another run's damaged record
    keeps the newest version from being known."""
    mine = _version_of(r)
    if compiled is not None:
        if r.fingerprint == compiled.fingerprint:
            return False, f"version:  {mine} (the version of {printable(str(against))})"
        return True, f"version:  {mine}* {_version_note(store_path, against, many=False, newest=compiled.fingerprint)}"
    try:
        newest = _newest_versions(store.list_runs(r.workflow).result()).get(r.workflow, r.fingerprint)
    except StoreError as exc:
        return None, (f"version:  {mine} (not compared with the newest run of workflow {_name(r.workflow)}: "
                      f"{_cut(str(exc), 200)})")
    if r.fingerprint == newest:
        return False, f"version:  {mine} (the newest of workflow {_name(r.workflow)})"
    return True, f"version:  {mine}* {_version_note(store_path, None, many=False, newest=newest)}"


def _usage(calls: list[dict[str, Any]]) -> str:
    """Model calls summed for a person: what a stored step's records say, whatever is in them."""

    def number(c: dict[str, Any], key: str) -> float:
        v = c.get(key)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else 0

    tokens_in = int(sum(number(c, "input_tokens") for c in calls))
    tokens_out = int(sum(number(c, "output_tokens") for c in calls))
    priced = [c for c in calls if c.get("cost") is not None]
    models = sorted({_name(str(c.get("model", "?"))) for c in calls})
    text = (f"{len(calls)} call{'s' if len(calls) != 1 else ''} to {', '.join(models)}, {tokens_in} tokens in, "
            f"{tokens_out} out, {sum(number(c, 'latency') for c in calls):.2f} s")
    if priced:
        text += f", cost {sum(number(c, 'cost') for c in priced):.6g}"
    return text


def _show_lines(stored: StoredRun) -> list[str]:
    r = stored.run
    n = r.next_step
    lines = [f"run {_name(r.run_id)} of workflow {_name(r.workflow)}"]
    if r.status is RunStatus.DONE:
        lines.append(f"status:   done: ended in {_where(r)}")
    elif r.status is RunStatus.WAITING:
        lines.append(f"status:   waiting in state {_name(r.state)}")
    else:
        lines.append(f"status:   running: next step {n} is in state {_name(r.state)} (a worker runs it, or it "
                     "stopped in a crash)")
    if r.reason:
        lines.append(f"reason:   {_cut(r.reason, 300)}")
    steps = f"steps:    {n} committed, {r.counters.actions_run} actions run (budget {r.max_steps}); epoch {r.epoch}"
    if r.status is not RunStatus.DONE:
        steps += f", step {n} resumed {r.restarts} time{'s' if r.restarts != 1 else ''} after crashes"
    lines.append(steps)
    lines.append(f"created:  {_when(r.created_at)}   updated: {_when(r.updated_at)}")
    if r.parent is not None:
        lines.append(f"forked:   from run {_name(r.parent)} at step {r.parent_step}")
    lines.append(f"context:  {_brief(stored.context, 200)}")
    lines.append(f"path ({len(stored.steps)} step{'s' if len(stored.steps) != 1 else ''}):")
    for s in stored.steps:
        line = f"  {s.number:>3}  {_name(s.state)} -> {_name(s.target)} via {_name(s.transition)} ({s.kind})"
        if not s.ran:
            line += ", action not run"
        if s.writes:
            line += f", writes {', '.join(_name(w) for w in sorted(s.writes))}"
        lines.append(line)
        if s.error:
            lines.append(f"       error: {_cut(s.error, 200)}")
        if s.model_calls:
            lines.append(f"       models: {_usage(s.model_calls)}")
    if not stored.steps:
        lines.append("  (none committed)")
    every = [c for s in stored.steps for c in s.model_calls]
    if every:
        lines.append(f"models:   {_usage(every)}")
    lines.append("waits:")
    if r.wait is None:
        lines.append("  waiting for: nothing")
    else:
        deadline = f", deadline {_when(r.wait.deadline)}" if r.wait.deadline is not None else ", no deadline"
        lines.append(f"  waiting for: event {_name(r.wait.event)} in state {_name(r.wait.state)}{deadline}")
    if not stored.inbox:
        lines.append("  inbox: empty")
    for e in stored.inbox:
        consumed = f"consumed at step {e.consumed_step}" if e.consumed_step is not None else "not consumed yet"
        lines.append(f"  inbox #{e.seq}  {_name(e.event)}  delivered {_when(e.at)}, {consumed}  "
                     f"payload {_brief(e.payload, 60)}")
    lines.append(f"journal ({len(stored.calls)} call{'s' if len(stored.calls) != 1 else ''}):")
    for c in stored.calls:
        outcome = f"error {_brief(c.error, 80)}" if c.error is not None else f"result {_brief(c.result, 60)}"
        pending = "  (step not committed: resuming it reuses this)" if c.step >= n else ""
        tries = (f"  after {c.attempts} attempts (" + "; ".join(_cut(f, 60) for f in c.failures[:3])
                 + ("; ..." if len(c.failures) > 3 else "") + ")") if c.attempts > 1 else ""
        lines.append(f"  {c.step:>3}/{c.call}  {_name(c.tool)}  {c.effect}  {c.status}  key {_name(c.key)}  "
                     f"arguments {_brief(c.arguments, 60)}  {outcome}{tries}{pending}")
    if not stored.calls:
        lines.append("  (no tool calls)")
    return lines


def _compiled(target: str) -> CompiledWorkflow[Any]:
    return compile_spec(load_spec(target))


def _drive(compiled: CompiledWorkflow[Any], store: Store, store_path: str, call: Callable[[], Any],
           as_json: bool) -> int:
    """Run ``call`` (a resume, a delivery or a fork) and print where the run got to, like ``run``."""
    try:
        result = call()
    except StoreError:
        raise
    except Exception as exc:
        ended = result_of(exc)
        if ended is None:
            if isinstance(exc, (TypeError, ValueError)):  # the library refused the arguments
                raise UsageError(_error_text(exc)) from exc
            raise
        _print_result(ended, compiled, as_json)
        if not as_json:
            _say(f"error:    {type(exc).__name__}: {printable(str(exc))}")
        _say(_user_traceback(exc), err=True, end="")
        return 1
    run_id = getattr(result, "run_id", None)
    record = None
    if isinstance(run_id, str) and run_id:
        try:
            record = store.load(run_id).result().run
        except (StoreError, ValueError, TypeError):
            record = None
    if record is not None and record.status is not RunStatus.DONE:
        return _print_unfinished(result, record, store_path, as_json)
    _print_result(result, compiled, as_json)
    return 0 if result.ok else 1


def _print_unfinished(result: Any, r: RunRecord, store_path: str, as_json: bool) -> int:
    """A run that stopped without ending: it waits for an event (or its timeout)."""
    wait = r.wait.model_dump(mode="json") if r.wait is not None else None
    if as_json:
        try:
            data = result.to_dict()
        except Exception:
            data = {"workflow": r.workflow, "run_id": r.run_id}
        _say(_json({**data, "status": str(r.status), "state": r.state, "wait": wait}, indent=2))
        return 0
    if r.wait is not None:
        deadline = f" (deadline {_when(r.wait.deadline)})" if r.wait.deadline is not None else " (no deadline)"
        _say(f"waiting:  run {_name(r.run_id)} waits in state {_name(r.wait.state)} for event "
              f"{_name(r.wait.event)}{deadline}")
    else:
        _say(f"{r.status}:  run {_name(r.run_id)} stopped in state {_name(r.state)} without ending")
    _say(f"steps:    {r.next_step} committed")
    hint = _resume_hint(r, store_path)
    if hint is not None:
        _say(f"next:     {hint}")
    return 0


def _resume_options(args: argparse.Namespace) -> dict[str, Any]:
    _positive_option(args.max_steps, "--max-steps", "a whole number of steps of at least 1")
    _positive_option(args.timeout, "--timeout", "a positive, finite number of seconds")
    options: dict[str, Any] = {}
    if args.max_steps is not None:
        options["max_steps"] = args.max_steps
    if args.timeout is not None:
        options["timeout"] = args.timeout
    return options


def cmd_runs_resume(args: argparse.Namespace) -> int:
    options = _resume_options(args)
    run_id = _run_id(args.run_id)
    compiled = _compiled(args.target)
    with _open_store(args.store, secrets_env=args.secrets_env) as store:
        return _drive(compiled, store, args.store,
                      lambda: compiled.resume_sync(run_id, store=store, **options), args.json)


def cmd_runs_deliver(args: argparse.Namespace) -> int:
    run_id = _run_id(args.run_id)
    if not args.event:
        raise UsageError("the event's name is empty: give the event the run waits for (see `runs show`)")
    payload = _read_input(args.payload, "--payload", example='{"approved": true}', what="the event's fields")
    compiled = _compiled(args.target)
    with _open_store(args.store, secrets_env=args.secrets_env) as store:
        return _drive(compiled, store, args.store,
                      lambda: compiled.deliver_sync(run_id, args.event, payload, store=store), args.json)


def cmd_runs_fork(args: argparse.Namespace) -> int:
    run_id = _run_id(args.run_id)
    if args.at_step < 0:
        raise UsageError(f"--at-step {args.at_step}: give a step number from 0 (see `runs show` for the path)")
    patch = _read_input(args.patch, "--patch", example='{"n": 1}', what="context fields") \
        if args.patch is not None else None
    if args.new_id is not None and not args.new_id:
        raise UsageError("--new-id '': give the fork a non-empty id, or drop --new-id for a random one")
    if args.new_id is not None:
        _run_id(args.new_id, "--new-id")
    compiled = _compiled(args.target)
    with _open_store(args.store, secrets_env=args.secrets_env) as store:
        return _drive(compiled, store, args.store,
                      lambda: compiled.fork_sync(run_id, at_step=args.at_step, patch=patch, store=store,
                                                 new_run_id=args.new_id),
                      args.json)


@dataclass(frozen=True)
class _Verdict:
    """One run ``runs check`` refuses: its record (None when that cannot be read) and why."""

    run_id: str
    record: RunRecord | None
    problems: tuple[Problem, ...]


class _OneRun(Store):
    """A read-only view of a store whose ``list_runs`` gives one run: ``runs check`` asks
    ``compiled.check_runs`` about each run apart, so that one damaged run hides no other."""

    def __init__(self, store: Store, record: RunRecord) -> None:
        self._store, self._record = store, record
        self.secrets = store.secrets

    def __getattr__(self, name: str) -> Any:  # what else the check reads of the store (its path, ...)
        if name.startswith("__") or name in ("_store", "_record"):  # copy/pickle before __init__: no recursion
            raise AttributeError(name)
        return getattr(self._store, name)

    def list_runs(self, workflow: str | None = None) -> Future[list[RunRecord]]:
        future: Future[list[RunRecord]] = Future()
        future.set_result([self._record] if workflow in (None, self._record.workflow) else [])
        return future

    def load(self, run_id: str, *, at_step: int | None = None) -> Future[StoredRun]:
        return self._store.load(run_id, at_step=at_step)

    def due_runs(self, workflow: str, now: float) -> Future[list[str]]:
        return self._store.due_runs(workflow, now)

    def _refuse(self, *_: Any, **__: Any) -> Future[Any]:
        raise StoreError("runs check writes nothing to the store")

    create = claim = claim_waiting = mark_started = commit = suspend = record_call = deliver = fork = _refuse

    def close(self) -> None:
        """The store it views is closed by its owner."""


def _runs_to_check(store: SQLiteStore, workflow: str) -> list[tuple[str, RunRecord | StoreError]]:
    """Every run of ``workflow`` in the store, newest first: its record, or why it cannot be read.
    ``list_runs`` refuses the whole list when one record is damaged; then the runs are found by the
    table's own columns (read-only) and loaded one by one. Damage that is no run's of these (runs
    lost from the table, say) is raised as the list raised it."""
    try:
        return [(r.run_id, r) for r in store.list_runs(workflow).result()]
    except StoreCorrupted as exc:
        refused = exc
    conn = _peek(Path(store.path))
    if conn is None:
        raise StoreCorrupted(f"the store {store.path!r} cannot be read to list its runs: restore it from a backup")
    try:
        ids = [str(run_id) for run_id, name in conn.execute(
            "SELECT run_id, workflow FROM sma_runs NOT INDEXED ORDER BY updated_at DESC") if name == workflow]
    except sqlite3.Error as exc:
        raise StoreCorrupted(f"the store {store.path!r} is damaged ({exc}): restore it from a backup") from exc
    finally:
        conn.close()
    found: list[tuple[str, RunRecord | StoreError]] = []
    for run_id in ids:
        try:
            found.append((run_id, store.load(run_id).result().run))
        except StoreCorrupted as exc:
            found.append((run_id, exc))
    if not any(isinstance(f, StoreError) for _, f in found):
        raise refused
    return found


def _unreadable(exc: BaseException) -> Problem:
    """The problem of a run that cannot be read at all, as ``check_runs`` words it."""
    return Problem(ResumeCode.UNREADABLE, f"the stored run cannot be read: {type(exc).__name__}: {exc}")


def _check_one(compiled: CompiledWorkflow[Any], store: Store, record: RunRecord) -> tuple[Problem, ...]:
    """Why ``compiled`` would refuse the run (empty: it fits); a run whose records are damaged gets
    that as its problem."""
    try:
        refused = compiled.check_runs(_OneRun(store, record))
    except StoreCorrupted as exc:
        return (_unreadable(exc),)
    return tuple(p for r in refused for p in r.problems)


def _refuse_without_key(compiled: CompiledWorkflow[Any], store: Store, run_id: str) -> None:
    """SecretsNotStorable (exit 2, naming --secrets-env) when the run holds a secret and no key was
    given: ``check_runs`` would list it as unreadable, when all it lacks is the option."""
    try:
        stored = store.load(run_id).result()
        unseal(compiled.context_type, stored.context, None, run_id)
    except StoreCorrupted:  # damaged, or not a stored secret: the check itself reports it
        return


def cmd_runs_check(args: argparse.Namespace) -> int:
    """Which stored runs of a workflow this version of it would refuse, and why (exit 1 if any)."""
    compiled = _compiled(args.target)
    needs_key = args.secrets_env is None and bool(secret_fields(compiled.context_type).top)
    store = _open_store(args.store, readonly=True, secrets_env=args.secrets_env)
    with store:
        runs = _runs_to_check(store, compiled.name)
        refused: list[_Verdict] = []
        for run_id, found in runs:
            if isinstance(found, StoreError):
                refused.append(_Verdict(run_id, None, (_unreadable(found),)))
                continue
            if needs_key:
                _refuse_without_key(compiled, store, run_id)
            problems = _check_one(compiled, store, found)
            if problems:
                refused.append(_Verdict(run_id, found, problems))
    if args.json:
        _say(_json([{"run_id": v.run_id, "status": None if v.record is None else str(v.record.status),
                     "state": None if v.record is None else v.record.state,
                     "problems": [{"code": str(p.code), "message": p.message, "where": _problem_where(p)}
                                  for p in v.problems]} for v in refused], indent=2))
        return 1 if refused else 0
    for v in refused:
        _say(f"run {_name(v.run_id)}: {_check_where(v.record)}")
        for p in v.problems:
            _say(f"  - [{printable(str(p.code))}] {printable(p.message)}")
        _say()
    _say(_check_summary(compiled.name, len(runs), refused, args.store))
    return 1 if refused else 0


def _problem_where(p: Problem) -> str | None:
    """The state, transition, tool or field a problem is about (``Problem.subject``), if it names one."""
    where = getattr(p, "where", None) or p.subject
    return str(where) if where else None


def _check_where(r: RunRecord | None) -> str:
    """Where a refused run is (its status and state)."""
    if r is None:
        return "it cannot be read from the store"
    if r.status is RunStatus.DONE:
        return f"ended in {_where(r)}"
    if r.status is RunStatus.WAITING and r.wait is not None:
        return f"waiting in state {_name(r.state)} for event {_name(r.wait.event)}"
    return f"{r.status} in state {_name(r.state)}"


def _check_summary(workflow: str, total: int, refused: list[_Verdict], store_path: str) -> str:
    runs = f"run{'s' if total != 1 else ''} of workflow {workflow!r}"
    if not total:
        return f"no runs of workflow {workflow!r} in the store {store_path!r}"
    if not refused:
        return f"the 1 {runs} fits this version" if total == 1 else f"all {total} {runs} fit this version"
    one = len(refused) == 1
    text = (f"{len(refused)} of {total} {runs} would be refused; resume {'it' if one else 'them'} with migrate=, "
            f"or keep the old version running until {'it ends' if one else 'they end'}")
    damaged = sum(1 for v in refused if any(p.code == ResumeCode.UNREADABLE for p in v.problems))
    if damaged:
        text += (f" ({damaged} of them cannot be read from the store at all: restore the store from a backup)"
                 if not one else " (it cannot be read from the store at all: restore the store from a backup)")
    return text


def _traced_run_drawing(compiled: CompiledWorkflow[Any], path: str) -> dict[str, Any]:
    """The run of ``compiled``'s workflow in the JSONL trace at ``path`` (TraceWriter's), as the
    recorded-run dict diagrams draw."""
    from .traces import TraceError, read_trace, runs_of  # noqa: PLC0415  (only `diagram --run FILE.jsonl`)

    try:
        runs = runs_of(read_trace(path))
    except TraceError as exc:
        raise UsageError(f"--run {path!r}: {exc}") from None
    mine = [r for r in runs.values() if r["workflow"] == compiled.name]
    if len(mine) != 1:
        held = ", ".join(sorted({f"{r['run_id']} ({r['workflow']})" for r in runs.values()})) or "no runs"
        raise UsageError(f"--run {path!r} holds {len(mine)} runs of workflow {compiled.name!r} ({held}): give a "
                         "trace of one run of it (one TraceWriter file per run)")
    return mine[0]


def _stored_run_drawing(compiled: CompiledWorkflow[Any], run_id: str, store_path: str) -> dict[str, Any]:
    """A stored run as the recorded-run dict (``RunResult.to_dict()``'s shape) that diagrams draw; a
    run that has not ended is drawn up to the state it is in, with its status as the outcome."""
    with _open_store(store_path, readonly=True) as store:
        stored = _load(store, run_id)
    r = stored.run
    if r.workflow != compiled.name:
        raise UsageError(f"--run {run_id!r} is a run of workflow {r.workflow!r}, not {compiled.name!r}: draw it "
                         "over the workflow that made it")
    done = r.status is RunStatus.DONE
    return {
        "workflow": r.workflow, "run_id": r.run_id,
        "terminal": (r.terminal or r.state) if done else r.state,
        "outcome": (r.outcome or "failure") if done else str(r.status),
        "steps": sum(1 for s in stored.steps if s.ran), "reason": r.reason,
        "path": [{"number": s.number, "state": s.state, "target": s.target, "transition": s.transition,
                  "kind": s.kind, "ran": s.ran, "error": s.error, "writes": list(s.writes)} for s in stored.steps],
    }



class _Parser(argparse.ArgumentParser):
    """argparse, printing through the same escaping: its "unrecognized arguments" echo the words
    as they are, and a word can hold ESC or a right-to-left override."""

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            (file or sys.stderr).write(printable(message, keep_newlines=True))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="statemachine-agent", description="Check, run and draw "
                                     "statemachine-agent workflows named as MODULE:OBJECT, and list, show, "
                                     "resume, deliver to and fork the durable runs of a store.")
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
    p = sub.add_parser("diagram", help=f"draw a workflow ({_one_of([f.label for f in FORMATS.values()])})")
    p.add_argument("target", help="MODULE:OBJECT naming a Workflow")
    p.add_argument("-o", "--output", required=True, help="file to write; its extension picks the format")
    p.add_argument("--format", choices=sorted(FORMATS), help="override the format")
    p.add_argument("--run", help="a recorded run to draw over the workflow: a JSON file from `run --json`, a "
                   "JSONL trace (TraceWriter's FILE.jsonl), or with --store the id of a stored run")
    p.add_argument("--store", help="with --run RUN_ID: the store file (SQLiteStore) the run is in")
    p.add_argument("--rankdir", choices=["LR", "TB"], help="left to right or top to bottom (default: "
                   "left to right up to 12 states)")
    p.set_defaults(func=cmd_diagram)
    _add_runs(sub)
    p = sub.add_parser("ui", help="serve the run explorer: a local web page over a store's runs (the ui extra)",
                       description="A local web page over the runs of a store: the list, each run's path on its "
                       "diagram, steps, tool and model calls, and, with the workflows' code, actions (deliver, "
                       "resume, fork) that need the token printed at start.")
    p.add_argument("--store", required=True, help="the store's file (SQLiteStore), e.g. runs.db")
    p.add_argument("--workflow", action="append", metavar="MODULE:OBJECT", help="a workflow whose runs may be drawn "
                   "and acted on (repeat for several); without it the explorer only reads")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine "
                   "only)")
    p.add_argument("--port", type=int, default=8000, help="the port (default 8000; 0: any free one)")
    p.add_argument("--policy", default="first", help="what answers the decisions of runs an action continues: "
                   "first (default), random[:SEED], or MODULE:OBJECT naming a policy callable")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between a live page's looks at the store "
                   "(default 1)")
    p.add_argument("--secrets-env", metavar="NAME", help="the environment variable holding the Fernet key of runs "
                   "whose context has SecretStr/SecretBytes fields (for the actions; pages show secrets masked)")
    p.set_defaults(func=cmd_ui)
    return parser


def _add_runs(sub: Any) -> None:
    runs = sub.add_parser("runs", help="list, show, check, resume, deliver to, fork and wake the durable runs of a "
                          "store",
                          description="The durable runs of a store (SQLiteStore file): list and show read its "
                          "records only; check, resume, deliver and fork need the workflow as MODULE:OBJECT.")
    rsub = runs.add_subparsers(dest="runs_command", required=True)

    def store_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", required=True, help="the store's file (SQLiteStore), e.g. runs.db")
        p.add_argument("--json", action="store_true", help="print it as JSON")

    def secrets_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--secrets-env", metavar="NAME", help="the environment variable holding the Fernet key "
                       "(FernetSecrets.from_env) of runs whose context has SecretStr/SecretBytes fields")

    def against_option(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--against", metavar="MODULE:OBJECT", help=f"mark {what} stored under another version than "
                       "this workflow's (default: than the newest run of the same workflow)")

    p = rsub.add_parser("list", help="one line per run, most recently updated first; a * marks a run stored under an "
                        "earlier version of its workflow")
    store_option(p)
    p.add_argument("--workflow", help="only the runs of this workflow (by name)")
    against_option(p, "the runs of that workflow (only those are listed)")
    p.set_defaults(func=cmd_runs_list)
    p = rsub.add_parser("show", help="a run's record, path, waits and tool-call journal (no workflow code needed)")
    p.add_argument("run_id", help="the run's id (see `runs list`)")
    store_option(p)
    against_option(p, "the run if it is")
    p.set_defaults(func=cmd_runs_show)
    p = rsub.add_parser("check", help="before a deploy: list every stored run of a workflow that this version of it "
                        "would refuse to continue, and why (exit 1 if any; writes nothing)")
    p.add_argument("target", help="MODULE:OBJECT naming the new version of the Workflow")
    store_option(p)
    secrets_option(p)
    p.set_defaults(func=cmd_runs_check)
    p = rsub.add_parser("resume", help="continue a stored run until it ends (exit 1 on a failure outcome)")
    p.add_argument("target", help="MODULE:OBJECT naming the Workflow the run belongs to")
    p.add_argument("run_id", help="the run's id (see `runs list`)")
    store_option(p)
    p.add_argument("--max-steps", type=int, help="step budget (default: the one the run was started with)")
    p.add_argument("--timeout", type=float, help="wall-clock deadline in seconds")
    secrets_option(p)
    p.set_defaults(func=cmd_runs_resume)
    p = rsub.add_parser("deliver", help="deliver an event to a waiting run and continue it")
    p.add_argument("target", help="MODULE:OBJECT naming the Workflow the run belongs to")
    p.add_argument("run_id", help="the run's id (see `runs list`)")
    p.add_argument("event", help="the event's name (see `runs show`)")
    p.add_argument("--payload", help="the event's payload as a JSON object, or @FILE.json")
    store_option(p)
    secrets_option(p)
    p.set_defaults(func=cmd_runs_deliver)
    p = rsub.add_parser("fork", help="start a new run from a stored run's state before a step, maybe patched")
    p.add_argument("target", help="MODULE:OBJECT naming the Workflow the run belongs to")
    p.add_argument("run_id", help="the run's id (see `runs list`)")
    p.add_argument("--at-step", type=int, required=True, help="fork before this step (0 = from the start)")
    p.add_argument("--patch", help="context fields to change at the fork, as a JSON object or @FILE.json")
    p.add_argument("--new-id", help="the new run's id (default: a random one)")
    store_option(p)
    secrets_option(p)
    p.set_defaults(func=cmd_runs_fork)
    p = rsub.add_parser("wake", help="continue every waiting run whose timeout passed or whose event arrived")
    p.add_argument("target", nargs="?", help="MODULE:OBJECT naming the Workflow whose runs to continue (without "
                   "it: say which runs are due)")
    store_option(p)
    secrets_option(p)
    p.set_defaults(func=cmd_runs_wake)


def cmd_runs_wake(args: argparse.Namespace) -> int:
    """Continue the waiting runs that can go on now (deadline passed, or event in the inbox)."""
    if args.target is None:  # which runs are due can be read without code; continuing them needs it
        now = time.time()
        with _open_store(args.store, readonly=True) as store:
            workflows = sorted({r.workflow for r in store.list_runs().result() if r.status == "waiting"})
            due = {w: store.due_runs(w, now).result() for w in workflows}
        count = sum(len(ids) for ids in due.values())
        if not count:
            _say(_json([], indent=2) if args.json else "no waiting run can go on now (none is past its "
                 "deadline or has its event in its inbox)")
            return 0
        names = ", ".join(_name(w) for w, ids in due.items() if ids)
        raise UsageError(f"{count} waiting run(s) can go on now (past their deadline, or their event came; "
                         f"workflow {names}): name the workflow to continue them: runs wake MODULE:OBJECT "
                         "--store FILE")
    compiled = _compiled(args.target)
    with _open_store(args.store, secrets_env=args.secrets_env) as store:
        results = compiled.wake_due_sync(store)
    if args.json:
        _say(_json([{"run_id": r.run_id, "terminal": r.terminal, "outcome": str(r.outcome),
                     "waiting": r.waiting} for r in results], indent=2))
        return 0
    for r in results:
        where = f"waits for {_name(r.waiting)}" if r.waiting is not None else f"ended in {_name(r.terminal)}"
        _say(f"{_name(r.run_id)}: {where} ({r.outcome})")
    _say(f"{len(results)} run(s) continued")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Serve the run explorer of a store until Ctrl-C (docs/observability.md, "The run explorer")."""
    try:
        from .ui import PortInUse, is_loopback, serve  # noqa: PLC0415  (the ui extra)
    except ImportError as exc:
        raise UsageError(f"the explorer needs the ui extra ({exc.name or exc} is not installed): "
                         "pip install 'statemachine-agent[ui]'") from None
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: give a port from 1 to 65535 (or 0 for any free one)")
    _positive_option(args.poll, "--poll", "a positive, finite number of seconds")
    workflows: dict[str, CompiledWorkflow[Any]] = {}
    for target in args.workflow or ():
        compiled = _compiled(target)
        if compiled.name in workflows:
            raise UsageError(f"--workflow {target}: workflow {compiled.name!r} is given twice; give each once")
        workflows[compiled.name] = compiled
    policy = _policy(args.policy)
    codec = None
    if args.secrets_env is not None:
        from .secrets import FernetSecrets  # noqa: PLC0415  (needs the [secrets] extra)

        codec = FernetSecrets.from_env(args.secrets_env)
    with _open_store(args.store, readonly=True) as store:  # a store it is, and its runs can be read
        store.list_runs().result()
    if not is_loopback(args.host):
        _say(f"statemachine-agent: warning: --host {printable(args.host)} is reachable from other machines; "
             "anyone with the token can act on the runs", err=True)

    def ready(url: str) -> None:
        _say(f"explorer of {printable(args.store)}: {url}")
        _say("(the token in this address lets its holder act on the runs; Ctrl-C stops the explorer)")
        sys.stdout.flush()

    try:
        serve(args.store, workflows, host=args.host, port=args.port, secrets_codec=codec, poll=args.poll,
              policy=policy, ready=ready)
    except PortInUse as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        return 0
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``statemachine-agent`` command."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, so that a reader gone (`| head`) is met below
    except UsageError as exc:  # the command's own message, on one line
        _say(f"statemachine-agent: {printable(str(exc))}", err=True)
        return 2
    except DefinitionError as exc:
        _say(_error_text(exc), err=True)
        return 1
    except (StoreError, GraphvizMissing, ValueError) as exc:
        # An unknown run, a damaged file, another workflow's run, no Graphviz, a bad budget: bad input.
        hint = ""
        if type(exc).__name__ == "SecretsNotStorable" and getattr(args, "secrets_env", "") is None:
            hint = " (on the command line: --secrets-env NAME, the variable holding the key)"
        _say(f"statemachine-agent: {_error_text(exc)}{hint}", err=True)
        return 2
    except RecursionError:
        _say("statemachine-agent: the input nests too deeply to handle: flatten it", err=True)
        return 2
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more, like other commands
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


def _error_text(exc: BaseException) -> str:
    """A library error's message for the terminal: on one line, with anything in it that is not
    printable escaped, newlines too (a name could hold one); an error listing problems (a
    ``DefinitionError``, ``IncompatibleRun``) keeps one line per problem."""
    text = str(exc)
    problems = getattr(exc, "problems", None)
    if isinstance(problems, tuple) and problems and all(isinstance(p, Problem) for p in problems):
        head = text.split("\n  - ", 1)[0]
        return "\n".join([printable(head), *(f"  - {printable(str(p))}" for p in problems)])
    return printable(text)


if __name__ == "__main__":
    sys.exit(main())
