"""The run explorer in a real headless Chromium (Debian's, driven by Playwright) against a real server
(uvicorn on a loopback port) over a real SQLite store. Each test checks what the page shows against
the store, read on its own (a second, read-only SQLiteStore), never against what the explorer says.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from explorer_support import TOKEN, Served, browser_missing, chromium, served

missing = browser_missing()
pytestmark = pytest.mark.skipif(missing is not None, reason=missing or "")

if missing is None:
    import explorer_demo
    import httpx
    from pydantic import SecretStr

    from statemachine_agent import UNSET, Context, Tools, Workflow
    from statemachine_agent.secrets import FernetSecrets
    from statemachine_agent.stores import RunStatus, SQLiteStore, StoredRun

def apart(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a thread of its own: Playwright's sync API keeps an event loop running in the
    test's thread, where ``run_sync`` and ``asyncio.run`` refuse to run."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            out.append(fn(*args))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


DIAGRAM_LOADED = "() => { const d = document.getElementById('diagram'); return d !== null && d.complete; }"


def stored(path: Path, run_id: str) -> StoredRun:
    """The run as the store holds it, read apart from the explorer."""
    with SQLiteStore(path, readonly=True) as store:
        return store.load(run_id).result()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def demo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "runs.db"
    return path, apart(explorer_demo.fill, path)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    p = context.new_page()
    p.set_default_timeout(20_000)
    yield p
    context.close()


def workflows() -> dict[str, Any]:
    return {"refund": explorer_demo.compiled, "counter": explorer_demo.counting}


def open_run(page: Any, app: Served, run_id: str) -> None:
    page.goto(f"{app.url}/run?" + httpx.QueryParams({"id": run_id}).__str__())


# --- the list --------------------------------------------------------------------------------------
def test_the_list_shows_every_stored_run_and_filters_them(page: Any, demo: tuple[Path, dict[str, str]]) -> None:
    path, ids = demo
    with SQLiteStore(path, readonly=True) as store:
        records = store.list_runs().result()
    with served(path, workflows()) as app:
        page.goto(app.login)
        rows = page.locator("#runs tbody tr")
        assert [rows.nth(i).get_attribute("data-run-id") for i in range(rows.count())] == [r.run_id for r in records]
        for r in records:
            row = page.locator(f"#runs tr[data-run-id='{r.run_id}']")
            assert row.locator(".badge").inner_text() == str(r.status)
            assert row.locator("td.num").inner_text() == str(r.next_step)
        assert page.url == f"{app.url}/"  # the token went into the cookie, out of the address

        page.select_option("select[name=status]", "waiting")
        page.click("form.filters button")
        shown = page.locator("#runs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.runId)")
        assert shown == [r.run_id for r in records if r.status is RunStatus.WAITING] == [ids["waiting"]]

        page.goto(f"{app.url}/?workflow=counter")
        shown = page.locator("#runs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.runId)")
        assert shown == [r.run_id for r in records if r.workflow == "counter"]

        page.goto(f"{app.url}/?waiting=approval")
        shown = page.locator("#runs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.runId)")
        assert shown == [r.run_id for r in records if r.wait is not None and r.status is RunStatus.WAITING]

        page.goto(f"{app.url}/")
        page.fill("input[name=q]", "DECL")  # a part of an id, any case
        page.click("form.filters button")
        shown = page.locator("#runs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.runId)")
        assert shown == [ids["declined"]]

        page.fill("input[name=q]", ids["count"])  # an exact id opens its run
        page.click("form.filters button")
        page.locator("#run-id").wait_for()
        assert page.locator("#run-id").inner_text() == ids["count"]


def test_the_list_is_paginated(page: Any, tmp_path: Path) -> None:
    path = tmp_path / "many.db"

    async def fill() -> None:
        with SQLiteStore(path, synchronous="NORMAL") as store:
            await asyncio.gather(*(explorer_demo.counting.run(explorer_demo.Count(limit=1), store=store,
                                                              run_id=f"run-{i:03d}") for i in range(120)))

    apart(asyncio.run, fill())
    with SQLiteStore(path, readonly=True) as store:
        records = store.list_runs().result()
    with served(path, workflows()) as app:
        page.goto(app.login)
        seen: list[str] = []
        while True:
            seen += page.locator("#runs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.runId)")
            assert page.locator("#runs tbody tr").count() <= 50
            nxt = page.locator("a[rel=next]")
            if not nxt.count():
                break
            nxt.click()
            page.locator("#runs").wait_for()
        assert seen == [r.run_id for r in records]
        assert "page 3 of 3" in page.locator("#total").inner_text()


# --- one run ---------------------------------------------------------------------------------------
def test_a_run_page_shows_what_the_store_holds(page: Any, demo: tuple[Path, dict[str, str]]) -> None:
    path, ids = demo
    run = stored(path, ids["done"])
    with served(path, workflows()) as app:
        page.goto(app.login)
        open_run(page, app, ids["done"])
        assert page.locator("#status").inner_text() == str(run.run.status)
        assert run.run.terminal in page.locator("#where").inner_text()
        steps = page.locator("#timeline > li")
        assert steps.count() == len(run.steps)
        for s in run.steps:
            item = page.locator(f"#timeline > li[data-step='{s.number}']")
            assert item.locator(".state").inner_text() == s.state
            assert item.locator(".target").inner_text() == s.target
            assert s.transition in item.locator(".via").inner_text()
            item.locator("summary").click()
            detail = item.locator(".detail")
            detail.locator(".changes[data-loaded=yes]").wait_for()
            # the changes: every field the step wrote, its new value in the diff's added lines
            for field in s.writes:
                change = detail.locator(".change", has=page.locator(".field", has_text=field))
                assert change.count() == 1
            for field, value in s.delta.items():
                added = "\n".join(detail.locator(".change", has=page.locator(".field", has_text=field))
                                  .locator(".add").all_inner_texts())
                assert json.dumps(value, ensure_ascii=False, indent=2).splitlines()[0].strip() in added
            # the tool calls of that step, with their effect class and status
            calls = [c for c in run.calls if c.step == s.number]
            assert detail.locator("table.calls tbody tr").count() == len(calls)
            for i, c in enumerate(calls):
                cells = detail.locator("table.calls tbody tr").nth(i).locator("td").all_inner_texts()
                assert cells[1:4] == [c.tool, str(c.effect), str(c.status)]
                # its attempts, and what each failed one raised, as journaled
                row = detail.locator("table.calls tbody tr").nth(i)
                assert cells[4].split()[0] == str(c.attempts)
                assert row.locator("ol.failures li").all_inner_texts() == c.failures
            assert any(c.attempts > 1 and c.failures for c in run.calls), "the demo retries a call"
            # the decision: the answer and every rejected answer
            if s.rejected:
                assert detail.locator(".answer").inner_text() == s.transition
                assert detail.locator("ol.rejected li").all_inner_texts() == s.rejected
            # the model calls: tokens as recorded
            for i, m in enumerate(s.model_calls):
                cells = detail.locator("table.models tbody tr").nth(i).locator("td").all_inner_texts()
                assert cells[0] == m["model"]
                assert (int(cells[3]), int(cells[4])) == (m["input_tokens"], m["output_tokens"])
        total_in = sum(int(str(m["input_tokens"])) for s in run.steps for m in s.model_calls)
        assert f"{total_in} tokens in" in page.locator("#models").inner_text()
        # the diagram: Graphviz's SVG of this workflow with the run drawn over it, loaded as an image
        page.wait_for_function(DIAGRAM_LOADED)
        assert page.locator("#diagram").evaluate("img => img.naturalWidth") > 0
        svg = page.request.get(app.url + str(page.locator("#diagram").get_attribute("src"))).text()
        assert "<svg" in svg and all(f">{s.state}" in svg for s in run.steps)


def test_a_running_run_updates_live_without_a_reload(page: Any, tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    gate = threading.Event()
    explorer_demo.GATE["current"] = gate
    done = threading.Event()

    def work() -> None:
        try:
            with SQLiteStore(path) as store:
                explorer_demo.counting.run_sync(explorer_demo.Count(limit=3), store=store, run_id="live")
        finally:
            done.set()

    worker = threading.Thread(target=work)
    worker.start()
    try:
        gate.set()  # step 0 runs and commits; step 1 waits at the gate
        while not path.exists() or stored_steps(path, "live") < 1:
            threading.Event().wait(0.01)
        with served(path, workflows(), poll=0.05) as app:
            page.goto(app.login)
            open_run(page, app, "live")
            page.evaluate("window.__same_page = true")
            assert page.locator("#timeline > li").count() == stored_steps(path, "live")
            while not done.is_set():
                gate.set()
                done.wait(0.01)
            final = stored(path, "live")
            assert final.run.status is RunStatus.DONE
            page.locator("#status", has_text="done").wait_for()
            assert page.locator("#timeline > li").count() == len(final.steps)
            assert page.evaluate("window.__same_page") is True  # the page was updated in place, not reloaded
    finally:
        explorer_demo.GATE.pop("current", None)
        gate.set()
        worker.join(30)


def stored_steps(path: Path, run_id: str) -> int:
    try:
        return len(stored(path, run_id).steps)
    except Exception:
        return 0


# --- actions ---------------------------------------------------------------------------------------
def test_deliver_from_the_generated_form(page: Any, demo: tuple[Path, dict[str, str]]) -> None:
    path, ids = demo
    with served(path, workflows(), policy=explorer_demo.policy) as app:
        page.goto(app.login)
        open_run(page, app, ids["waiting"])
        form = page.locator("#deliver")
        assert form.locator("label.field > span").all_inner_texts() == ["approved *", "note", "cap", "channel"]
        assert form.locator("select[name='field.channel'] option").all_inner_texts() == ["card", "voucher"]
        # a payload the wait's model refuses: shown, nothing stored
        form.locator("input[name='field.cap']").evaluate("i => { i.removeAttribute('max'); i.value = '20000'; }")
        form.locator("button[type=submit]").click()
        assert "cap" in page.locator("#problems").inner_text()
        after = stored(path, ids["waiting"])
        assert after.run.status is RunStatus.WAITING and not after.inbox
        form = page.locator("#deliver")
        form.locator("input[name='field.approved']").check()
        form.locator("input[name='field.note']").fill("ok <b>by</b> me")
        form.locator("input[name='field.cap']").fill("900")
        form.locator("select[name='field.channel']").select_option("voucher")
        form.locator("button[type=submit]").click()
        page.locator("#status", has_text="done").wait_for()
        run = stored(path, ids["waiting"])
        assert run.run.status is RunStatus.DONE and run.run.terminal == "refunded"
        assert run.inbox[0].payload == {"approved": True, "note": "ok <b>by</b> me", "cap": 900, "channel": "voucher"}
        assert run.context["approval"] == run.inbox[0].payload
        page.locator("#flash", has_text="ended in refunded").wait_for()


def test_fork_from_a_step_with_changes(page: Any, demo: tuple[Path, dict[str, str]]) -> None:
    path, ids = demo
    with served(path, workflows(), policy=explorer_demo.policy) as app:
        page.goto(app.login)
        open_run(page, app, ids["declined"])
        form = page.locator("#fork")
        form.locator("input[name=at_step]").fill("2")
        form.locator("textarea[name=patch]").fill('{"amount": 60}')
        form.locator("button[type=submit]").click()
        page.wait_for_url(lambda url: ".fork-" in url)
        page.locator("#status", has_text="done").wait_for()
        new_id = page.locator("#run-id").inner_text()
        assert new_id != ids["declined"]
        run = stored(path, new_id)
        assert (run.run.parent, run.run.parent_step) == (ids["declined"], 2)
        assert run.context["amount"] == 60 and run.run.terminal == "refunded"
        assert [s.state for s in run.steps] == page.locator("#timeline .state").all_inner_texts()
        # the fork button of one step forks before it (from the fork's context there: amount 500 again)
        page.locator("#step-1 > summary").click()
        page.locator("#step-1 .fork-here").click()
        page.wait_for_url(lambda url: url.count(".fork-") == 2)
        page.locator("#status", has_text="waiting").wait_for()
        again = stored(path, page.locator("#run-id").inner_text())
        assert (again.run.parent, again.run.parent_step) == (new_id, 1)
        assert again.run.status is RunStatus.WAITING and again.context["amount"] == 500


def test_resume_a_run_that_stopped(page: Any, tmp_path: Path) -> None:
    path = tmp_path / "stopped.db"

    async def two_steps() -> None:
        with SQLiteStore(path) as store:
            run = explorer_demo.counting.start(explorer_demo.Count(limit=4), store=store, run_id="stopped")
            n = 0
            async for _ in run:
                n += 1
                if n == 2:
                    break

    apart(asyncio.run, two_steps())
    assert stored(path, "stopped").run.status is RunStatus.RUNNING
    with served(path, workflows()) as app:
        page.goto(app.login)
        open_run(page, app, "stopped")
        assert page.locator("#timeline > li").count() == 2
        page.click("#resume")
        page.locator("#status", has_text="done").wait_for()
        run = stored(path, "stopped")
        assert run.run.status is RunStatus.DONE and run.context["n"] == 4
        assert page.locator("#timeline > li").count() == len(run.steps)


# --- what a store holds is text, never markup --------------------------------------------------------
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">"\'&amp;'


def hostile_store(path: Path) -> tuple[str, Any]:
    class Evil(Context):
        note: str
        out: str = UNSET

    wf = Workflow("evil" + HOSTILE, Evil)

    def boom(ctx: Evil) -> None:
        raise ValueError("bad " + HOSTILE)

    wf.add_state("start" + HOSTILE, lambda c: setattr(c, "out", c.note + HOSTILE), initial=True, reads=["note"],
                 writes=["out"])
    wf.add_state("fail" + HOSTILE, boom)
    wf.terminal("end" + HOSTILE)
    wf.terminal("failed" + HOSTILE, outcome="failure")
    wf.transition("start" + HOSTILE, "fail" + HOSTILE)
    wf.transition("fail" + HOSTILE, "end" + HOSTILE)
    wf.on_error("fail" + HOSTILE, ValueError, "failed" + HOSTILE)
    compiled = wf.compile()
    run_id = "run" + HOSTILE
    with SQLiteStore(path) as store:
        compiled.run_sync(Evil(note=HOSTILE), store=store, run_id=run_id)
    return run_id, compiled


def test_nothing_from_the_store_runs_as_markup(page: Any, tmp_path: Path) -> None:
    path = tmp_path / "evil.db"
    run_id, compiled = apart(hostile_store, path)
    run = stored(path, run_id)
    with served(path, {compiled.name: compiled}) as app:
        page.goto(app.login)
        assert page.locator("#runs td.id").inner_text() == run_id  # shown as the text it is
        page.locator("#runs td.id a").click()
        page.locator("#run-id").wait_for()
        assert page.locator("#run-id").inner_text() == run_id
        assert run.run.terminal is not None and run.run.terminal in page.locator("#where").inner_text()
        page.locator("#step-1 > summary").click()
        assert page.locator("#step-1 .error-text").inner_text() == run.steps[1].error
        assert page.locator("#timeline .state").all_inner_texts() == [s.state for s in run.steps]
        assert json.loads(page.locator("#context").inner_text())["out"] == run.context["out"]
        page.wait_for_function(DIAGRAM_LOADED)
        assert page.locator("#diagram").evaluate("img => img.naturalWidth") > 0
        page.goto(f"{app.url}/run/diagram.svg?" + str(httpx.QueryParams({"id": run_id})))  # the SVG opened alone
        assert page.evaluate("window.__pwned") is None
        page.goto(f"{app.url}/?" + str(httpx.QueryParams({"q": "run<script>"})))
        assert page.locator("input[name=q]").input_value() == "run<script>"
        assert page.evaluate("window.__pwned") is None


# --- the token and CSRF --------------------------------------------------------------------------------
def test_actions_need_the_token_the_csrf_token_and_this_origin(page: Any, demo: tuple[Path, dict[str, str]]) -> None:
    path, ids = demo
    before = stored(path, ids["waiting"])
    with served(path, workflows()) as app:
        form = {"id": ids["waiting"], "event": "approval", "field.approved": "true", "field.cap": "1"}
        cookie = {"cookie": f"sma_explorer_{app.port}={TOKEN}"}
        page.goto(app.login)
        open_run(page, app, ids["waiting"])
        csrf = page.locator("#deliver input[name=csrf]").get_attribute("value")
        with httpx.Client(base_url=app.url) as http:
            assert http.get("/").status_code == 401  # no token: no page either
            assert http.get("/", headers={**cookie, "host": "evil.example:80"}).status_code == 400
            assert http.get("/", headers=cookie).status_code == 200
            assert http.post("/run/deliver", data={**form, "csrf": csrf}).status_code == 401
            assert http.post("/run/deliver", data=form, headers=cookie).status_code == 403
            assert http.post("/run/deliver", data={**form, "csrf": "0" * 64}, headers=cookie).status_code == 403
            assert http.post("/run/deliver", data={**form, "csrf": csrf},
                             headers={**cookie, "origin": "http://evil.example"}).status_code == 403
            assert http.post("/run/deliver", data={**form, "csrf": csrf},
                             headers={**cookie, "sec-fetch-site": "cross-site"}).status_code == 403
            assert http.post("/run/fork", data={"id": ids["waiting"], "at_step": "0", "csrf": csrf},
                             headers={"cookie": f"sma_explorer_1={TOKEN}"}).status_code == 401
        # a page of another origin posting to the explorer from the same browser (its cookie is there)
        evil = _serve_html(f"""<form id=f method=post action="{app.url}/run/deliver">
            <input name=id value="{ids['waiting']}"><input name=event value=approval>
            <input name="field.approved" value=true><input name=csrf value="{csrf}"></form>
            <script>document.getElementById('f').submit()</script>""")
        try:
            page.goto(evil)
            page.wait_for_url(f"{app.url}/run/deliver")
            assert page.locator("h1").inner_text() in ("Token needed", "Refused")
        finally:
            evil.shutdown()  # type: ignore[attr-defined]
        after = stored(path, ids["waiting"])
        assert after == before  # nothing changed in the store


class _Evil(str):
    shutdown: Any


def _serve_html(html: str) -> _Evil:
    """A page on another loopback origin (the standard library's server), its address."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = _Evil(f"http://127.0.0.1:{server.server_address[1]}/")

    def shutdown() -> None:
        server.shutdown()
        server.server_close()
        thread.join(10)

    url.shutdown = shutdown
    return url


# --- secrets -------------------------------------------------------------------------------------------
CANARY = "canary-7f3a9c1e-never-shown"


def test_secrets_never_reach_a_page_or_json(page: Any, tmp_path: Path) -> None:
    class Account(Context):
        user: str
        password: SecretStr
        token: str = UNSET

    wf = Workflow("login", Account)

    @wf.tool(effect="read")
    def sign_in(user: str, password: SecretStr) -> str:
        return f"signed in {user}"

    @wf.state(initial=True, reads=["user", "password"], writes=["token"], tools=["sign_in"])
    async def login(ctx: Account, tools: Tools) -> None:
        ctx.token = await tools.call("sign_in", user=ctx.user, password=ctx.password)

    wf.terminal("in")
    wf.terminal("out", outcome="failure")
    wf.transition("login", "in")
    compiled = wf.compile()
    path = tmp_path / "secret.db"
    codec = FernetSecrets(FernetSecrets.generate_key())

    def start() -> None:
        with SQLiteStore(path, secrets=codec) as store:
            compiled.run_sync(Account(user="ada", password=SecretStr(CANARY)), store=store, run_id="secret-run")

    apart(start)
    bodies: list[str] = []
    responses: list[Any] = []
    with served(path, {"login": compiled}, secrets=codec) as app:
        page.on("response", lambda r: responses.append(r))  # noqa: PLW0108  (Playwright takes no built-in method)
        page.goto(app.login)
        open_run(page, app, "secret-run")
        page.wait_for_function(DIAGRAM_LOADED)
        page.locator("#step-0 > summary").click()
        assert "••••••" in page.locator("#context").inner_text()
        for r in responses:  # what the browser was served for this page (the list's was navigated away from)
            if r.ok and r.url.startswith(app.url + "/run"):
                bodies.append(r.text())
        with httpx.Client(base_url=app.url, headers={"cookie": f"sma_explorer_{app.port}={TOKEN}"}) as http:
            for url in ("/api/runs", "/run/live?id=secret-run", "/run/step?id=secret-run&n=0",
                        "/run/diagram.svg?id=secret-run", "/?q=secret",
                        "/run?id=secret-run"):
                response = http.get(url)
                assert response.status_code == 200, url
                bodies.append(response.text)
        bodies.append(page.content())
    assert len(bodies) >= 8
    assert not [b[:200] for b in bodies if CANARY in b]
