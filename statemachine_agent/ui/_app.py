"""The run explorer's web application (Starlette): pages, the live poll, diagrams and the actions.

Security, in the order a request meets it:

- the ``Host`` header must name the address the explorer was bound to (a page on another site
  cannot reach it through a DNS name it points at 127.0.0.1: DNS rebinding);
- every path but the stylesheet and the script needs the token printed at start: given once as
  ``?token=...``, it is kept in an HttpOnly, SameSite=Strict cookie named after the port;
- an action (a POST) also needs the form's CSRF token (an HMAC of the token) and, when the browser
  says where the request comes from (``Origin``, ``Referer``, ``Sec-Fetch-Site``), this origin;
- every response forbids inline scripts and styles, framing and sniffing (Content-Security-Policy
  and friends); the pages escape everything a store holds (Jinja2's autoescape) and the diagram is
  an image, whose scripts a browser never runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from markupsafe import Markup
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..compile import CompiledWorkflow
from ..diagrams import GraphvizMissing, to_dot, to_svg
from ..errors import RunNotFound, StoreError
from ..policies import Policy
from ..result import result_of
from ..runner import ResumeOptions
from ..secrets import SecretCodec
from ..stores import RunRecord, RunStatus, SQLiteStore, StoredRun
from . import _html, _model

__all__ = ["Explorer", "Flash", "FlashKind"]

T = TypeVar("T")

MAX_BODY = 1 << 20
"""The largest form accepted (1 MiB)."""

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'"
"""A diagram opened on its own: Graphviz's SVG styles itself inline, and nothing in it may run."""


class FlashKind:
    """How an action's message is shown."""

    INFO = "info"
    OK = "ok"
    ERROR = "error"


@dataclass(frozen=True)
class Flash:
    """What the last action on a run did (or is doing)."""

    kind: str
    text: str


class _Headers:
    """Adds the security headers to every response (pure ASGI, so streaming stays untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                for name, value in ((b"content-security-policy", CSP), (b"x-content-type-options", "nosniff"),
                                    (b"x-frame-options", "DENY"), (b"referrer-policy", "same-origin"),
                                    (b"cache-control", "no-store"), (b"cross-origin-opener-policy", "same-origin"),
                                    (b"cross-origin-resource-policy", "same-origin")):
                    if name not in have:
                        headers.append((name, value.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _signature(path: str, *, wal: bool = False) -> tuple[object, ...]:
    """What says a reader opened before may no longer see the store as it is: the file's size and
    time, and whether a -wal and -shm are beside it (a writer opened or closed). ``wal``: the -wal's
    size and time too, which change with every commit."""
    out: list[object] = []
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            st = os.stat(name)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_size, st.st_mtime_ns) if name == path or (wal and name.endswith("-wal")) else True)
    return tuple(out)


class _Readers:
    """Read-only stores of one file, each opened when the file changed under the last one.

    A store opened read-only while no writer has the file open reads it as immutable (it writes
    nothing, not even a -shm), and so never sees a later commit; one opened beside a writer's -wal
    reads through it. So each read takes the reader opened for the file as it now is (by
    :func:`_signature`), and a reader left behind is closed once no read uses it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._current: SQLiteStore | None = None
        self._signature: tuple[object, ...] | None = None
        self._users: dict[int, int] = {}
        self._retired: list[SQLiteStore] = []
        self._closed = False
        self._listed: tuple[tuple[object, ...], list[RunRecord]] | None = None

    def read(self, op: Callable[[SQLiteStore], T]) -> T:
        with self._lock:
            if self._closed:
                raise StoreError("the explorer is closed")
            signature = _signature(self.path)
            if self._current is None or signature != self._signature:
                fresh = SQLiteStore(self.path, readonly=True)
                if self._current is not None:
                    self._retired.append(self._current)
                self._current, self._signature = fresh, signature
            store = self._current
            self._users[id(store)] = self._users.get(id(store), 0) + 1
        try:
            return op(store)
        finally:
            with self._lock:
                self._users[id(store)] -= 1
                self._close_unused()

    def list_runs(self) -> list[RunRecord]:
        """Every run, newest update first; read again only when the files changed since the last
        read (their sizes and times, the -wal's too), so paging through a large store reads it once."""
        before = _signature(self.path, wal=True)
        with self._lock:
            if self._listed is not None and self._listed[0] == before:
                return self._listed[1]
        records = self.read(lambda store: store.list_runs().result())
        if _signature(self.path, wal=True) == before:  # nothing committed while it was read
            with self._lock:
                self._listed = (before, records)
        return records

    def _close_unused(self) -> None:
        for old in [s for s in self._retired if not self._users.get(id(s))]:
            self._retired.remove(old)
            self._users.pop(id(old), None)
            old.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._current is not None:
                self._retired.append(self._current)
                self._current = None
            self._close_unused()


class Explorer:
    """The explorer of one store: ``Explorer(path, workflows, token=...).app()`` is the ASGI app.

    ``workflows``: the compiled workflows whose runs may be acted on (delivered to, resumed,
    forked) and drawn, by name. ``hosts``: the ``host:port`` values the ``Host`` header may hold.
    ``poll``: seconds between a live page's polls. ``secrets``: the codec of the runs' secret
    fields, for the actions (pages never need it: they show a secret as a mask).
    """

    def __init__(self, store_path: str, workflows: Mapping[str, CompiledWorkflow[Any]], *, token: str,
                 hosts: frozenset[str], cookie: str = "sma_explorer", poll: float = 1.0,
                 secrets: SecretCodec | None = None, label: str | None = None, policy: Policy[Any] | None = None
                 ) -> None:
        if len(token) < 16:
            raise ValueError("the explorer's token must be at least 16 characters: use secrets.token_urlsafe()")
        self.store_path = store_path
        self.workflows = dict(workflows)
        self.token = token
        self.csrf = hmac.new(token.encode(), b"statemachine-agent explorer csrf", hashlib.sha256).hexdigest()
        self.hosts = hosts
        self.cookie = cookie
        self.poll_ms = max(50, round(poll * 1000))
        self.secrets = secrets
        self.label = label or store_path
        self.options: ResumeOptions[Any] = {"policy": policy} if policy is not None else {}
        self._readers = _Readers(store_path)
        self._readers.read(lambda store: None)  # opened now: a store that cannot be read fails here
        self._writer: SQLiteStore | None = None
        self._lock = threading.Lock()
        self._actions = ThreadPoolExecutor(max_workers=1, thread_name_prefix="explorer-action")
        self._jobs: dict[str, Future[None]] = {}
        self._flash: dict[str, Flash] = {}
        self._svgs: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()

    # --- the application ---------------------------------------------------------------------
    def app(self) -> ASGIApp:
        routes = [
            Route("/", self.runs_page), Route("/run", self.run_page), Route("/run/live", self.run_live),
            Route("/run/diagram.svg", self.run_diagram), Route("/run/step", self.run_step),
            Route("/api/runs", self.runs_json),
            Route("/run/deliver", self.deliver, methods=["POST"]), Route("/run/resume", self.resume, methods=["POST"]),
            Route("/run/fork", self.fork, methods=["POST"]),
            Route("/static/explorer.css", self.static), Route("/static/explorer.js", self.static),
        ]
        return _Headers(Starlette(routes=routes))

    def close(self) -> None:
        """Finish a running action, then close the stores."""
        self._actions.shutdown(wait=True)
        self._readers.close()
        if self._writer is not None:
            self._writer.close()

    # --- security --------------------------------------------------------------------------------
    def _refused(self, request: Request, *, action: bool = False) -> Response | None:
        """The response refusing ``request``, or None when it may go on."""
        host = request.headers.get("host", "")
        if host not in self.hosts:
            return self._message(400, "Wrong host", f"This explorer answers at {sorted(self.hosts)[0]} only.")
        given = request.cookies.get(self.cookie, "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return self._message(401, "Token needed", "Open the address the explorer printed when it started "
                                 "(it ends in ?token=...).")
        if action:
            origin = f"http://{host}"
            said = request.headers.get("origin")
            if said is None and request.headers.get("referer"):
                parts = urlsplit(request.headers["referer"])
                said = f"{parts.scheme}://{parts.netloc}"
            site = request.headers.get("sec-fetch-site")
            if (said is not None and said != origin) or (site is not None and site not in ("same-origin", "none")):
                return self._message(403, "Refused", "An action must come from the explorer's own pages.")
        return None

    def _token_redirect(self, request: Request) -> Response | None:
        """``?token=...`` given and right: keep it in the cookie and show the page without it."""
        given = request.query_params.get("token")
        if given is None or request.headers.get("host", "") not in self.hosts:
            return None
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return self._message(401, "Wrong token", "That token is not this explorer's: open the address it "
                                 "printed when it started.")
        rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
        response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
        response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
        return response

    def _checked(self, request: Request) -> Response | None:
        return self._token_redirect(request) or self._refused(request)

    def _hidden(self, run_id: str) -> Markup:
        return Markup('<input type="hidden" name="id" value="{}"><input type="hidden" name="csrf" value="{}">').format(
            run_id, self.csrf)

    # --- rendering -------------------------------------------------------------------------------
    def _page(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        base = {"store": self.label, "workflows": sorted(self.workflows), "live": None, "version": "",
                "poll": self.poll_ms, "when": _model.when, "hidden": self._hidden}
        return HTMLResponse(_html.render(template, **{**base, **values}), status_code=status)

    def _message(self, status: int, title: str, message: str) -> HTMLResponse:
        return self._page("message.html", status, title=title, message=message)

    def static(self, request: Request) -> Response:
        if request.url.path.endswith(".css"):
            return Response(_html.STYLE, media_type="text/css")
        return Response(_html.SCRIPT, media_type="text/javascript")

    # --- the list --------------------------------------------------------------------------------
    def _filters(self, request: Request) -> tuple[dict[str, str], int]:
        p = request.query_params
        filters = {k: p.get(k, "")[:500] for k in ("workflow", "status", "waiting", "q")}
        try:
            page = max(1, int(p.get("page", "1")))
        except ValueError:
            page = 1
        return filters, page

    def _list(self, filters: Mapping[str, str], page: int) -> _model.ListPage:
        records = self._readers.list_runs()
        return _model.list_page(records, workflow=filters["workflow"], status=filters["status"],
                                waiting=filters["waiting"], query=filters["q"], page=page)

    def runs_page(self, request: Request) -> Response:
        if (refused := self._checked(request)) is not None:
            return refused
        filters, page_number = self._filters(request)
        q = filters["q"]
        if q:  # an exact id goes straight to its run
            with contextlib.suppress(RunNotFound, StoreError, ValueError):
                records = [r for r in self._readers.list_runs() if r.run_id == q]
                if records:
                    return RedirectResponse("/run?" + urlencode({"id": q}), status_code=303)
        page = self._list(filters, page_number)
        return self._page("list.html", title="Runs", page=page, f=filters, statuses=[str(s) for s in RunStatus],
                          filters={k: v for k, v in filters.items() if v})

    def runs_json(self, request: Request) -> Response:
        if (refused := self._checked(request)) is not None:
            return refused
        filters, page_number = self._filters(request)
        page = self._list(filters, page_number)
        return JSONResponse({"total": page.total, "page": page.page, "pages": page.pages, "runs": [
            {"run_id": r.run_id, "workflow": r.workflow, "status": str(r.status), "state": r.state,
             "terminal": r.terminal, "outcome": None if r.outcome is None else str(r.outcome),
             "steps": r.next_step, "waiting_for": r.wait.event if r.wait is not None else None,
             "updated_at": r.updated_at} for r in page.runs]})

    # --- one run ---------------------------------------------------------------------------------
    def _load(self, run_id: str) -> StoredRun:
        return self._readers.read(lambda store: store.load(run_id).result())

    def _diagram(self, stored: StoredRun) -> tuple[str | None, str]:
        """The diagram's address, or why there is none."""
        r = stored.run
        compiled = self.workflows.get(r.workflow)
        if compiled is None:
            return None, (f"The diagram needs the code of workflow {r.workflow!r}: start the explorer with "
                          "--workflow MODULE:OBJECT naming it.")
        names = {s.state for s in stored.steps} | {r.state} | {s.target for s in stored.steps}
        unknown = sorted(n for n in names if not compiled.spec.has_state(n))
        if unknown:
            return None, (f"The run went through {', '.join(map(repr, unknown))}, which this version of "
                          f"{r.workflow!r} does not declare: no diagram.")
        if shutil.which("dot") is None:
            return None, "Graphviz's dot is not installed (Debian: apt-get install graphviz): no diagram."
        return "/run/diagram.svg?" + urlencode({"id": r.run_id, "v": _model.version_of(r)}), ""

    def _actions_for(self, r: RunRecord, *, deliver_problems: list[str] | None = None,
                     fork_at: int | None = None, fork_patch: str = "", fork_problems: list[str] | None = None
                     ) -> dict[str, Any] | None:
        compiled = self.workflows.get(r.workflow)
        if compiled is None:
            return None
        at_step = max(0, r.next_step - 1) if fork_at is None else fork_at
        actions: dict[str, Any] = {"deliver": None, "resume": None, "fork": {"at_step": at_step,
                                            "patch": fork_patch, "problems": fork_problems or []}}
        if r.status is not RunStatus.DONE:
            actions["resume"] = ("continues the run until it ends or waits: only when no worker runs it"
                                 if r.status is RunStatus.RUNNING else
                                 "continues it now if its event came or its timeout passed")
        wait = r.wait if r.status is RunStatus.WAITING else None
        if wait is not None and compiled.spec.has_state(wait.state):
            spec = compiled.spec.state(wait.state).wait
            if spec is not None and spec.event == wait.event:
                actions["deliver"] = {"event": wait.event, "fields": _model.payload_fields(spec.payload),
                                      "problems": deliver_problems or []}
        return actions

    def _body(self, stored: StoredRun, *, opened: frozenset[int] = frozenset(), **action_args: Any) -> dict[str, Any]:
        r = stored.run
        view = _model.run_view(stored, self.workflows.get(r.workflow))
        diagram, no_diagram = self._diagram(stored)
        with self._lock:
            flash = self._flash.get(r.run_id)
            busy = r.run_id in self._jobs
        live = r.status is not RunStatus.DONE or busy
        return {"v": view, "diagram": diagram, "no_diagram": no_diagram, "flash": flash,
                "actions": self._actions_for(r, **action_args), "opened": opened,
                "live": "/run/live?" + urlencode({"id": r.run_id}) if live else None,
                "version": view.version + (".busy" if busy else "")}

    def run_page(self, request: Request, *, status: int = 200, **action_args: Any) -> Response:
        if (refused := self._checked(request)) is not None:
            return refused
        run_id = request.query_params.get("id", "")
        return self._run_response(run_id, status=status, **action_args)

    def _run_response(self, run_id: str, *, status: int = 200, **action_args: Any) -> Response:
        try:
            stored = self._load(run_id)
        except RunNotFound:
            with self._lock:
                pending = run_id in self._jobs
                flash = self._flash.get(run_id)
            if pending or flash is not None:
                return self._page("message.html", title="Starting", message=(flash.text if flash else "starting"),
                                  live="/run/live?" + urlencode({"id": run_id}), version="pending")
            return self._message(404, "No such run", f"The store has no run {run_id!r}.")
        except (StoreError, ValueError) as exc:
            return self._message(500, "Cannot read the run", f"{type(exc).__name__}: {exc}")
        body = self._body(stored, **action_args)
        return self._page("run.html", status, title=f"Run {run_id}", **body)

    def run_live(self, request: Request) -> Response:
        if (refused := self._checked(request)) is not None:
            return refused
        run_id = request.query_params.get("id", "")
        try:
            stored = self._load(run_id)
        except RunNotFound:
            with self._lock:
                pending = run_id in self._jobs
                flash = self._flash.get(run_id)
            text = flash.text if flash is not None else "no such run"
            note = Markup('<h1>Run {}</h1><p class="message">{}</p>').format(run_id, text)
            return JSONResponse({"version": "pending", "live": pending, "html": str(note)})
        except (StoreError, ValueError) as exc:
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)
        body = self._body(stored)
        html = _html.render("run_body.html", hidden=self._hidden, when=_model.when, **body)
        return JSONResponse({"version": body["version"], "live": body["live"] is not None, "html": html})

    def run_step(self, request: Request) -> Response:
        """What step ``n`` of a run did to the fields it wrote: an HTML fragment the page loads when
        the step is opened."""
        if (refused := self._checked(request)) is not None:
            return refused
        run_id = request.query_params.get("id", "")
        try:
            n = int(request.query_params.get("n", ""))
            stored = self._readers.read(lambda store: store.load(run_id, at_step=n).result())
            step = next(s for s in stored.steps if s.number == n)
            changes = _model.step_changes(step, stored.context, run_id)
        except (StoreError, ValueError, StopIteration) as exc:
            return HTMLResponse(Markup('<p class="error">The changes cannot be shown: {}</p>').format(
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, StopIteration) else "no such step"),
                status_code=404)
        return HTMLResponse(_html.render("changes.html", changes=changes, writes=list(step.writes)))

    def run_diagram(self, request: Request) -> Response:
        if (refused := self._checked(request)) is not None:
            return refused
        run_id = request.query_params.get("id", "")
        try:
            stored = self._readers.read(lambda store: store.load(run_id).result())
        except (StoreError, ValueError):
            return Response("no such run", status_code=404, media_type="text/plain")
        r = stored.run
        compiled = self.workflows.get(r.workflow)
        if compiled is None:
            return Response("no code for this run's workflow", status_code=404, media_type="text/plain")
        key = (r.run_id, _model.version_of(r), compiled.fingerprint)
        with self._lock:
            svg = self._svgs.get(key)
        if svg is None:
            try:
                svg = to_svg(to_dot(compiled, _model.overlay_of(stored))).encode("utf-8")
            except (ValueError, GraphvizMissing) as exc:
                return Response(f"no diagram: {exc}", status_code=404, media_type="text/plain")
            with self._lock:
                self._svgs[key] = svg
                while len(self._svgs) > 64:
                    self._svgs.popitem(last=False)
        return Response(svg, media_type="image/svg+xml", headers={"content-security-policy": SVG_CSP})

    # --- actions ---------------------------------------------------------------------------------
    async def _form(self, request: Request) -> dict[str, str] | Response:
        if (refused := self._refused(request, action=True)) is not None:
            return refused
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return self._message(413, "Too large", "The form is larger than 1 MiB.")
        try:
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=1000))
        except (UnicodeDecodeError, ValueError):
            return self._message(400, "Bad form", "The form could not be read.")
        if not hmac.compare_digest(form.get("csrf", "").encode(), self.csrf.encode()):
            return self._message(403, "Refused", "The form's CSRF token is missing or wrong: reload the page and "
                                 "try again.")
        return form

    def _writer_store(self) -> SQLiteStore:
        with self._lock:
            if self._writer is None:
                self._writer = SQLiteStore(self.store_path, secrets=self.secrets)
            return self._writer

    def _start(self, run_id: str, what: str, job: Callable[[SQLiteStore], Any], flash_id: str | None = None) -> bool:
        """Run ``job`` (an action) in the explorer's action thread; False when one is running on this run."""
        target = flash_id or run_id
        with self._lock:
            if run_id in self._jobs or target in self._jobs:
                return False
            self._flash[target] = Flash(FlashKind.INFO, f"{what}: running")

        def work() -> None:
            try:
                result = job(self._writer_store())
            except Exception as exc:
                ended = result_of(exc)
                text = f"{what}: {type(exc).__name__}: {exc}"
                if ended is not None:
                    text = f"{what}: the run ended in {ended.terminal} after an error its workflow does not route: " \
                           f"{type(exc).__name__}: {exc}"
                flash = Flash(FlashKind.ERROR, text)
            else:
                if result is None:
                    flash = Flash(FlashKind.OK, f"{what}: stored; the run takes it when it reaches its wait")
                elif getattr(result, "waiting", None):
                    flash = Flash(FlashKind.OK, f"{what}: the run waits for {result.waiting}")
                else:
                    flash = Flash(FlashKind.OK, f"{what}: the run ended in {result.terminal} ({result.outcome})")
            with self._lock:
                self._flash[target] = flash
                self._jobs.pop(run_id, None)
                self._jobs.pop(target, None)

        with self._lock:
            future = self._actions.submit(work)
            self._jobs[run_id] = future
            self._jobs[target] = future
        return True

    def _busy(self, run_id: str) -> Response:
        return self._message(409, "Busy", f"An action on run {run_id!r} is still running: wait for it to end.")

    def _see(self, run_id: str) -> Response:
        return RedirectResponse("/run?" + urlencode({"id": run_id}), status_code=303)

    def _record(self, run_id: str) -> tuple[RunRecord, CompiledWorkflow[Any]] | Response:
        try:
            r = self._readers.read(lambda store: store.load(run_id).result().run)
        except RunNotFound:
            return self._message(404, "No such run", f"The store has no run {run_id!r}.")
        except (StoreError, ValueError) as exc:
            return self._message(500, "Cannot read the run", f"{type(exc).__name__}: {exc}")
        compiled = self.workflows.get(r.workflow)
        if compiled is None:
            return self._message(400, "No code", f"Start the explorer with --workflow MODULE:OBJECT naming workflow "
                                 f"{r.workflow!r} to act on its runs.")
        return r, compiled

    async def _act(self, request: Request, action: Callable[[dict[str, str]], Response]) -> Response:
        """An action's checked form (token, CSRF, origin), then the action in a worker thread."""
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        return await run_in_threadpool(action, form)

    async def deliver(self, request: Request) -> Response:
        return await self._act(request, self._deliver)

    def _deliver(self, form: dict[str, str]) -> Response:
        run_id, event = form.get("id", ""), form.get("event", "")
        found = self._record(run_id)
        if isinstance(found, Response):
            return found
        r, compiled = found
        wait = r.wait if r.status is RunStatus.WAITING else None
        spec = compiled.spec.state(wait.state).wait if wait is not None and compiled.spec.has_state(wait.state) \
            else None
        if wait is None or spec is None or wait.event != event or spec.event != event:
            return self._message(409, "Not waiting", f"Run {run_id!r} does not wait for event {event!r} (any more).")
        fields = _model.payload_fields(spec.payload)
        payload, problems = _model.payload_from_form(fields, form)
        if not problems:
            try:
                spec.payload.model_validate(payload)
            except ValidationError as exc:
                problems = [f"field {'.'.join(map(str, e['loc'])) or '(payload)'}: {e['msg']}"
                            for e in exc.errors(include_url=False)]
        if problems:
            return self._run_response(run_id, status=400, deliver_problems=problems)
        if not self._start(run_id, f"delivered {event}",
                           lambda store: compiled.deliver_sync(run_id, event, payload, store=store, **self.options)):
            return self._busy(run_id)
        return self._see(run_id)

    async def resume(self, request: Request) -> Response:
        return await self._act(request, self._resume)

    def _resume(self, form: dict[str, str]) -> Response:
        run_id = form.get("id", "")
        found = self._record(run_id)
        if isinstance(found, Response):
            return found
        r, compiled = found
        if r.status is RunStatus.DONE:
            return self._message(409, "Ended", f"Run {run_id!r} has ended: fork it to run it again from a step.")
        if not self._start(run_id, "resumed", lambda store: compiled.resume_sync(run_id, store=store, **self.options)):
            return self._busy(run_id)
        return self._see(run_id)

    async def fork(self, request: Request) -> Response:
        return await self._act(request, self._fork)

    def _fork(self, form: dict[str, str]) -> Response:
        run_id = form.get("id", "")
        found = self._record(run_id)
        if isinstance(found, Response):
            return found
        r, compiled = found
        raw_step, raw_patch = form.get("at_step", "").strip(), form.get("patch", "")
        problems: list[str] = []
        at_step = -1
        try:
            at_step = int(raw_step)
        except ValueError:
            problems.append(f"the step {raw_step[:40]!r} is not a whole number")
        if not problems and not 0 <= at_step <= r.next_step:
            problems.append(f"give a step from 0 to {r.next_step}")
        patch: dict[str, Any] | None = None
        if raw_patch.strip():
            try:
                loaded = json.loads(raw_patch)
            except (ValueError, RecursionError):
                loaded = None
                problems.append("the changes are not JSON: give an object such as {\"amount\": 50}")
            if loaded is not None and not isinstance(loaded, dict):
                problems.append("the changes must be a JSON object of context fields")
            elif isinstance(loaded, dict):
                unknown = sorted(set(loaded) - set(compiled.field_names))
                if unknown:
                    problems.append(f"the context of {compiled.name!r} has no field {', '.join(map(repr, unknown))}")
                patch = loaded
        if problems:
            return self._run_response(run_id, status=400, fork_at=max(at_step, 0), fork_patch=raw_patch,
                                      fork_problems=problems)
        new_id = f"{run_id}.fork-{uuid.uuid4().hex[:8]}"
        if not self._start(run_id, f"forked from {run_id!r} at step {at_step}",
                           lambda store: compiled.fork_sync(run_id, at_step=at_step, patch=patch, store=store,
                                                            new_run_id=new_id, **self.options), flash_id=new_id):
            return self._busy(run_id)
        return self._see(new_id)
