"""The explorer's pages: Jinja2 templates with autoescaping on (every value is escaped unless a
template marks it safe, and none does), the stylesheet and the one script, served as files so the
pages' Content-Security-Policy allows no inline script or style at all."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import jinja2

__all__ = ["SCRIPT", "STYLE", "render"]

_BASE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} · statemachine-agent explorer</title>
<link rel="stylesheet" href="/static/explorer.css">
<script src="/static/explorer.js" defer></script>
</head>
<body>
<header class="top"><a class="brand" href="/">statemachine-agent <b>runs</b></a>
<span class="store" title="the store">{{ store }}</span>
{% if workflows %}<span class="code">code: {{ workflows | join(", ") }}</span>
{% else %}<span class="code muted">read-only: no workflow code given (--workflow MODULE:OBJECT)</span>{% endif %}
</header>
<main id="main"{% if live %} data-live="{{ live }}" data-version="{{ version }}" data-poll="{{ poll }}"{% endif %}>
{% block main %}{% endblock %}
</main>
</body>
</html>
"""

_LIST = """{% extends "base.html" %}
{% block main %}
<h1>Runs</h1>
<form class="filters" method="get" action="/" role="search">
  <label>Workflow <select name="workflow">
    <option value="">all</option>
    {% for w in page.workflows %}<option value="{{ w }}"{% if w == f.workflow %} selected{% endif %}>{{ w }}</option>{% endfor %}
  </select></label>
  <label>Status <select name="status">
    <option value="">any</option>
    {% for s in statuses %}<option value="{{ s }}"{% if s == f.status %} selected{% endif %}>{{ s }} ({{ page.counts.get(s, 0) }})</option>{% endfor %}
  </select></label>
  <label>Waiting for <select name="waiting">
    <option value="">any event</option>
    {% for e in page.events %}<option value="{{ e }}"{% if e == f.waiting %} selected{% endif %}>{{ e }}</option>{% endfor %}
  </select></label>
  <label>Run id <input type="search" name="q" value="{{ f.q }}" placeholder="a part of the id"></label>
  <button type="submit">Filter</button>
  {% if f.workflow or f.status or f.waiting or f.q %}<a class="clear" href="/">clear</a>{% endif %}
</form>
<p class="total" id="total">{{ page.total }} run{{ "" if page.total == 1 else "s" }}{% if page.pages > 1 %}, page {{ page.page }} of {{ page.pages }}{% endif %}</p>
{% if page.runs %}
<table class="runs" id="runs">
<thead><tr><th>Run</th><th>Workflow</th><th>Status</th><th>State</th><th>Steps</th><th>Waiting for</th><th>Updated (UTC)</th></tr></thead>
<tbody>
{% for r in page.runs %}
<tr class="run status-{{ r.status }}" data-run-id="{{ r.run_id }}">
<td class="id"><a href="/run?{{ q(id=r.run_id) }}">{{ r.run_id }}</a></td>
<td>{{ r.workflow }}</td>
<td><span class="badge {{ r.status }}">{{ r.status }}</span></td>
<td>{% if r.status == "done" %}{{ r.terminal or r.state }} <span class="outcome {{ r.outcome }}">{{ r.outcome or "failure" }}</span>{% else %}{{ r.state }}{% endif %}</td>
<td class="num">{{ r.next_step }}</td>
<td>{% if r.status == "waiting" and r.wait %}{{ r.wait.event }}{% endif %}</td>
<td class="when">{{ when(r.updated_at) }}</td>
</tr>
{% endfor %}
</tbody>
</table>
{% else %}
<p class="empty">No run matches.</p>
{% endif %}
{% if page.pages > 1 %}
<nav class="pages">
{% if page.page > 1 %}<a rel="prev" href="/?{{ q(page=page.page - 1, **filters) }}">← newer</a>{% endif %}
<span>page {{ page.page }} of {{ page.pages }}</span>
{% if page.page < page.pages %}<a rel="next" href="/?{{ q(page=page.page + 1, **filters) }}">older →</a>{% endif %}
</nav>
{% endif %}
{% endblock %}
"""

_RUN = """{% extends "base.html" %}
{% block main %}{% include "run_body.html" %}{% endblock %}
"""

_RUN_BODY = """{% set r = v.record %}
<nav class="crumbs"><a href="/">← all runs</a>{% if r.parent %} · forked from <a href="/run?{{ q(id=r.parent) }}">{{ r.parent }}</a> at step {{ r.parent_step }}{% endif %}</nav>
<h1>Run <span class="run-id" id="run-id">{{ r.run_id }}</span> <span class="badge {{ r.status }}" id="status">{{ r.status }}</span></h1>
{% if flash %}<p class="flash {{ flash.kind }}" id="flash">{{ flash.text }}</p>{% endif %}
<section class="summary">
<dl>
<dt>Workflow</dt><dd id="workflow">{{ r.workflow }} <span class="muted">version {{ r.fingerprint[:8] }}{% if v.known and not v.same_version %} (not the version of the code given: an action is checked before it changes anything){% endif %}</span></dd>
{% if r.status == "done" %}<dt>Ended in</dt><dd id="where">{{ r.terminal or r.state }} <span class="outcome {{ r.outcome }}">{{ r.outcome or "failure" }}</span></dd>
{% elif v.waiting %}<dt>Waiting</dt><dd id="where">in {{ r.state }} for event <b>{{ v.wait_event }}</b>{% if v.wait_deadline %} until {{ v.wait_deadline }}{% endif %}</dd>
{% else %}<dt>Running</dt><dd id="where">next step {{ r.next_step }} in {{ r.state }} <span class="muted">(a worker runs it, or it stopped in a crash)</span></dd>{% endif %}
{% if r.reason %}<dt>Reason</dt><dd id="reason">{{ r.reason }}</dd>{% endif %}
<dt>Steps</dt><dd id="steps">{{ r.next_step }} committed, {{ r.counters.actions_run }} actions run (budget {{ r.max_steps }}); epoch {{ r.epoch }}, {{ r.restarts }} restart{{ "" if r.restarts == 1 else "s" }}</dd>
<dt>Model calls</dt><dd id="models">{{ v.model_calls }} call{{ "" if v.model_calls == 1 else "s" }}, {{ v.tokens_in }} tokens in, {{ v.tokens_out }} out, cost {{ v.cost }}</dd>
<dt>Created</dt><dd>{{ v.started }}</dd><dt>Updated</dt><dd>{{ v.updated }}</dd>
</dl>
</section>
{% if actions %}{% include "actions.html" %}{% elif r.status != "done" %}<p class="muted actions-off">To deliver to, resume or fork this run, start the explorer with its workflow's code: --workflow MODULE:OBJECT.</p>{% endif %}
<section class="diagram">
<h2>Path</h2>
{% if diagram %}<img id="diagram" src="{{ diagram }}" alt="the workflow {{ r.workflow }} with the run's path drawn over it">
{% else %}<p class="muted" id="no-diagram">{{ no_diagram }}</p>{% endif %}
</section>
<section class="timeline">
<h2>Timeline <span class="muted">({{ v.steps | length }} step{{ "" if v.steps | length == 1 else "s" }}; open a step for its changes, tool calls, decision and model calls)</span></h2>
<ol class="steps" id="timeline">
{% for s in v.steps %}
<li class="step kind-{{ s.kind }}{% if s.error %} failed{% endif %}" data-step="{{ s.number }}">
<details id="step-{{ s.number }}"{% if s.number in opened %} open{% endif %}>
<summary>
<span class="num">#{{ s.number }}</span>
<span class="move"><span class="state">{{ s.state }}</span> → <span class="target">{{ s.target }}</span></span>
<span class="via">{{ s.transition }}{% if s.kind != "transition" %} ({{ s.kind }}){% endif %}</span>
<meter min="0" max="1000" value="{{ s.share }}" title="duration"></meter>
<span class="dur">{{ s.duration }}</span>
<span class="at muted">+{{ s.offset }}</span>
{% if s.decision %}<span class="tag decision">decision</span>{% endif %}
{% if s.calls %}<span class="tag tools">{{ s.calls | length }} tool call{{ "" if s.calls | length == 1 else "s" }}</span>{% endif %}
{% if s.models %}<span class="tag models">{{ s.models | length }} model call{{ "" if s.models | length == 1 else "s" }}</span>{% endif %}
{% if not s.ran %}<span class="tag">action not run</span>{% endif %}
</summary>
<div class="detail">
{% if s.error %}<p class="error">error: <span class="error-text">{{ s.error }}</span></p>{% endif %}
<p class="muted">started {{ s.started }}</p>
{% if s.writes or s.ran %}<div class="changes" data-src="/run/step?{{ q(id=r.run_id, n=s.number) }}"><p class="muted">{% if s.writes %}writes {{ s.writes | join(", ") }}{% else %}writes nothing{% endif %}</p></div>{% endif %}
{% if s.decision %}<h3>Decision</h3>
<p>answer: <b class="answer">{{ s.decision.answer }}</b></p>
{% if s.decision.options %}<table class="options"><thead><tr><th>option</th><th>to</th><th>meaning</th></tr></thead><tbody>
{% for name, target, description, chosen in s.decision.options %}<tr class="{{ "chosen" if chosen else "" }}"><td>{{ name }}{% if chosen %} ✓{% endif %}</td><td>{{ target }}</td><td>{{ description }}</td></tr>{% endfor %}
</tbody></table><p class="muted">The state's declared exits; the policy was offered those whose guards held.</p>{% endif %}
{% if s.decision.rejected %}<p>rejected answers:</p><ol class="rejected">{% for why in s.decision.rejected %}<li>{{ why }}</li>{% endfor %}</ol>{% endif %}
{% endif %}
{% if s.calls %}<h3>Tool calls</h3>{% with calls = s.calls %}{% include "calls.html" %}{% endwith %}{% endif %}
{% if s.models %}<h3>Model calls</h3>
<table class="models"><thead><tr><th>model</th><th>purpose</th><th>mode</th><th>tokens in</th><th>out</th><th>cost</th><th>latency</th><th>ask</th><th>HTTP attempts</th></tr></thead><tbody>
{% for m in s.models %}<tr><td>{{ m.model }}</td><td>{{ m.purpose }}</td><td>{{ m.mode }}</td><td class="num">{{ m.input_tokens }}</td><td class="num">{{ m.output_tokens }}</td><td class="num">{{ m.cost }}</td><td class="num">{{ m.latency }}</td><td class="num">{{ m.attempt }}</td><td class="num">{{ m.http_attempts }}</td></tr>{% endfor %}
</tbody></table>{% endif %}
{% if actions and actions.fork %}<form class="inline" method="post" action="/run/fork">{{ hidden(r.run_id) }}<input type="hidden" name="at_step" value="{{ s.number }}"><button type="submit" class="fork-here">Fork before this step</button></form>{% endif %}
</div>
</details>
</li>
{% endfor %}
</ol>
{% if not v.steps %}<p class="muted">No step committed yet.</p>{% endif %}
</section>
{% if v.calls %}<section><h2>Journal rows of the next step</h2><p class="muted">Not committed with a step yet: resuming the run reuses them.</p>{% with calls = v.calls %}{% include "calls.html" %}{% endwith %}</section>{% endif %}
<section class="inbox"><h2>Inbox</h2>
{% if v.inbox %}<table><thead><tr><th>#</th><th>event</th><th>payload</th><th>delivered</th><th></th></tr></thead><tbody>
{% for seq, event, payload, at, consumed in v.inbox %}<tr><td>{{ seq }}</td><td>{{ event }}</td><td><code>{{ payload }}</code></td><td class="when">{{ at }}</td><td>{{ consumed }}</td></tr>{% endfor %}
</tbody></table>{% else %}<p class="muted">empty</p>{% endif %}
</section>
<section class="context"><h2>Context <span class="muted">({{ "at the end" if r.status == "done" else "before step %d" % r.next_step }})</span></h2><pre id="context">{{ v.context }}</pre></section>
"""

_CHANGES = """{% if changes %}<h3>Context changes</h3>
{% for c in changes %}<div class="change {{ c.kind }}"><div class="field">{{ c.field }} <span class="muted">{{ c.kind }}</span></div>
<pre class="diff">{% for mark, line in c.lines %}<span class="l{{ {"+": " add", "-": " del", "@": " hunk"}.get(mark, "") }}">{{ mark }} {{ line }}</span>{% endfor %}{% if c.cut %}<span class="l hunk">… (cut)</span>{% endif %}</pre></div>{% endfor %}
{% else %}<p class="muted">no change to the context</p>{% endif %}
"""

_CALLS = """<table class="calls"><thead><tr><th>#</th><th>tool</th><th>effect</th><th>status</th><th>attempts</th><th>arguments</th><th>result or error</th><th>at</th></tr></thead><tbody>
{% for c in calls %}<tr class="call {{ c.status }}"><td>{{ c.call }}</td><td>{{ c.tool }}</td><td><span class="effect {{ c.effect }}">{{ c.effect }}</span></td><td>{{ c.status }}</td><td class="attempts">{{ c.attempts }}{% if c.failures %}<ol class="failures">{% for f in c.failures %}<li class="error-text">{{ f }}</li>{% endfor %}</ol>{% endif %}</td><td><code>{{ c.arguments }}</code></td>
<td>{% if c.error %}<span class="error-text">{{ c.error }}</span>{% elif c.result is not none %}<code>{{ c.result }}</code>{% endif %}</td><td class="when">{{ c.at }}</td></tr>{% endfor %}
</tbody></table>
"""

_ACTIONS = """<section class="actions" id="actions"><h2>Actions</h2>
{% if actions.deliver %}<form class="deliver" id="deliver" method="post" action="/run/deliver">
<h3>Deliver <b>{{ actions.deliver.event }}</b></h3>
{{ hidden(r.run_id) }}<input type="hidden" name="event" value="{{ actions.deliver.event }}">
{% for p in actions.deliver.fields %}
<label class="field"><span>{{ p.name }}{% if p.required %} *{% endif %}</span>
{% if p.input == "checkbox" %}<input type="checkbox" name="field.{{ p.name }}" value="true"{% if p.default %} checked{% endif %}>
{% elif p.input == "choice" %}<select name="field.{{ p.name }}">{% for c in p.choices %}<option value="{{ c }}"{% if c == p.default %} selected{% endif %}>{{ c }}</option>{% endfor %}</select>
{% elif p.input == "integer" %}<input type="number" step="1" name="field.{{ p.name }}" value="{{ p.default }}"{% if p.minimum %} min="{{ p.minimum }}"{% endif %}{% if p.maximum %} max="{{ p.maximum }}"{% endif %}{% if p.required %} required{% endif %}>
{% elif p.input == "number" %}<input type="number" step="any" name="field.{{ p.name }}" value="{{ p.default }}"{% if p.minimum %} min="{{ p.minimum }}"{% endif %}{% if p.maximum %} max="{{ p.maximum }}"{% endif %}{% if p.required %} required{% endif %}>
{% elif p.input == "json" %}<textarea name="field.{{ p.name }}" rows="3" placeholder="JSON"{% if p.required %} required{% endif %}>{{ p.default }}</textarea>
{% else %}<input type="text" name="field.{{ p.name }}" value="{{ p.default }}"{% if p.required %} required{% endif %}>{% endif %}
{% if p.description %}<small class="muted">{{ p.description }}</small>{% endif %}
</label>
{% endfor %}
{% if actions.deliver.problems %}<ul class="problems" id="problems">{% for p in actions.deliver.problems %}<li>{{ p }}</li>{% endfor %}</ul>{% endif %}
<button type="submit">Deliver</button>
</form>{% endif %}
{% if actions.resume %}<form class="resume" method="post" action="/run/resume">{{ hidden(r.run_id) }}
<button type="submit" id="resume">Resume</button> <span class="muted">{{ actions.resume }}</span></form>{% endif %}
{% if actions.fork %}<form class="fork" id="fork" method="post" action="/run/fork">{{ hidden(r.run_id) }}
<label>Fork before step <input type="number" name="at_step" min="0" max="{{ r.next_step }}" value="{{ actions.fork.at_step }}" required></label>
<label>with changes <textarea name="patch" rows="2" placeholder='context fields to change, as JSON: {"amount": 50}'>{{ actions.fork.patch }}</textarea></label>
{% if actions.fork.problems %}<ul class="problems">{% for p in actions.fork.problems %}<li>{{ p }}</li>{% endfor %}</ul>{% endif %}
<button type="submit">Fork</button></form>{% endif %}
</section>
"""

_MESSAGE = """{% extends "base.html" %}
{% block main %}<h1>{{ title }}</h1><p class="message" id="message">{{ message }}</p><p><a href="/">all runs</a></p>{% endblock %}
"""

STYLE = """
:root { --fg:#1d2330; --muted:#6b7385; --line:#e3e6ec; --bg:#f7f8fa; --accent:#1565c0; --ok:#2e7d32; --bad:#c62828;
  --warn:#b26a00; font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
* { box-sizing: border-box; }
body { margin:0; color:var(--fg); background:var(--bg); font-size:14px; line-height:1.45; }
header.top { display:flex; gap:16px; align-items:baseline; padding:10px 24px; background:#fff;
  border-bottom:1px solid var(--line); flex-wrap:wrap; }
.brand { font-size:16px; color:var(--fg); text-decoration:none; } .brand b { color:var(--accent); }
.store, .code { color:var(--muted); font-family: ui-monospace, Menlo, Consolas, monospace; font-size:12px; }
main { max-width:1200px; margin:0 auto; padding:16px 24px 48px; }
h1 { font-size:20px; margin:8px 0 12px; word-break:break-all; } h2 { font-size:16px; margin:24px 0 8px; }
h3 { font-size:13px; margin:12px 0 4px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); }
a { color:var(--accent); } .muted { color:var(--muted); font-weight:normal; }
table { border-collapse:collapse; width:100%; background:#fff; border:1px solid var(--line); }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:12px; color:var(--muted); font-weight:600; background:#fbfbfc; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; }
td.id { font-family: ui-monospace, Menlo, Consolas, monospace; word-break:break-all; } .when { white-space:nowrap; color:var(--muted); }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; background:#eceff4; }
.badge.done { background:#e8f5e9; color:var(--ok); } .badge.waiting { background:#fff3e0; color:var(--warn); }
.badge.running { background:#e3f2fd; color:var(--accent); }
.outcome { font-size:12px; } .outcome.success { color:var(--ok); } .outcome.failure { color:var(--bad); }
form.filters { display:flex; gap:12px; align-items:end; flex-wrap:wrap; background:#fff; padding:10px 12px;
  border:1px solid var(--line); }
form.filters label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); gap:2px; }
input, select, textarea, button { font:inherit; } input, select, textarea { padding:4px 6px; border:1px solid #c9ced8; border-radius:4px; }
button { padding:5px 14px; border-radius:4px; border:1px solid var(--accent); background:var(--accent); color:#fff; cursor:pointer; }
button.fork-here { background:#fff; color:var(--accent); padding:2px 10px; font-size:12px; }
.clear { font-size:12px; align-self:center; } .total { color:var(--muted); }
nav.pages { display:flex; gap:16px; justify-content:center; margin-top:12px; }
.summary dl { display:grid; grid-template-columns: 120px 1fr; gap:4px 12px; margin:0; background:#fff; padding:12px;
  border:1px solid var(--line); } .summary dt { color:var(--muted); } .summary dd { margin:0; word-break:break-all; }
.flash { padding:8px 12px; border-radius:4px; background:#e3f2fd; } .flash.error { background:#ffebee; color:var(--bad); }
.flash.ok { background:#e8f5e9; color:var(--ok); }
.actions { background:#fff; border:1px solid var(--line); padding:4px 12px 12px; margin-top:16px; }
.actions h2 { margin-top:8px; } .actions form { margin:10px 0; }
form.deliver { display:grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap:8px 16px; align-items:start;
  padding:10px; background:#fffaf0; border:1px solid #f3e0bd; border-radius:4px; }
form.deliver h3, form.deliver .problems, form.deliver button { grid-column: 1 / -1; justify-self:start; }
label.field { display:flex; flex-direction:column; gap:2px; } label.field span { font-weight:600; }
label.field input[type=checkbox] { align-self:flex-start; width:18px; height:18px; margin:6px 0; }
form.fork { display:flex; gap:12px; align-items:end; flex-wrap:wrap; } form.fork label { display:flex; flex-direction:column; }
form.fork textarea { width:360px; } form.inline { margin-top:8px; }
.problems { color:var(--bad); margin:4px 0; }
.diagram img { max-width:100%; background:#fff; border:1px solid var(--line); padding:8px; }
ol.steps { list-style:none; padding:0; margin:0; background:#fff; border:1px solid var(--line); }
li.step { border-bottom:1px solid var(--line); } li.step.failed summary .num, li.step.kind-error .via, li.step.kind-fail .via { color:var(--bad); }
li.step summary { display:grid; grid-template-columns: 48px minmax(180px, 2fr) minmax(120px, 1.5fr) 120px 70px 80px auto;
  gap:8px; align-items:center; padding:5px 10px; cursor:pointer; list-style:none; }
li.step summary::-webkit-details-marker { display:none; }
li.step details[open] summary { background:#f2f6fc; }
.num { color:var(--muted); font-variant-numeric: tabular-nums; } .state, .target { font-weight:600; word-break:break-all; }
.via { color:var(--muted); font-size:12px; word-break:break-all; } .dur { text-align:right; font-variant-numeric: tabular-nums; }
meter { width:120px; height:10px; }
.tag { font-size:11px; padding:0 6px; border-radius:8px; background:#eceff4; margin-right:4px; white-space:nowrap; }
.tag.decision { background:#ede7f6; color:#5e35b1; } .tag.tools { background:#e0f2f1; color:#00695c; }
.tag.models { background:#fce4ec; color:#ad1457; }
.detail { padding:4px 16px 12px 58px; }
.error, .error-text { color:var(--bad); word-break:break-all; }
pre { background:#fbfbfc; border:1px solid var(--line); padding:8px; overflow:auto; max-height:420px; margin:4px 0;
  font: 12px/1.4 ui-monospace, Menlo, Consolas, monospace; white-space:pre-wrap; word-break:break-all; }
pre.diff .l { display:block; } pre.diff .add { background:#e6ffed; color:#1a7f37; } pre.diff .del { background:#ffeef0; color:#cf222e; }
pre.diff .hunk { color:var(--muted); } .change .field { font-weight:600; margin-top:6px; }
tr.chosen td { background:#f1f8e9; font-weight:600; } ol.rejected { color:var(--bad); margin:0; }
code { font: 12px ui-monospace, Menlo, Consolas, monospace; word-break:break-all; }
.failures { margin:2px 0 0 16px; padding:0; font-size:12px; }
.effect { font-size:12px; padding:0 6px; border-radius:8px; background:#eceff4; }
.effect.at_most_once { background:#fff3e0; color:var(--warn); } .effect.idempotent { background:#e3f2fd; color:var(--accent); }
.message { font-size:15px; }
"""

SCRIPT = """"use strict";
// The explorer's one script (no inline script runs: the pages' Content-Security-Policy forbids it).
// A step opened loads its context changes (built by the server, escaped there). A run that is not
// done is polled: when the store moved it, the run's part of the page is replaced by the server's new
// rendering, keeping open steps open.
(function () {
  document.addEventListener("toggle", async (event) => {
    const details = event.target;
    if (!(details instanceof HTMLDetailsElement) || !details.open) return;
    const box = details.querySelector(".changes[data-src]");
    if (!box || box.dataset.loaded) return;
    box.dataset.loaded = "loading";
    try {
      const r = await fetch(box.dataset.src, {credentials: "same-origin", cache: "no-store"});
      box.innerHTML = await r.text();
    } catch (e) {
      box.textContent = "The changes could not be loaded.";
    }
    box.dataset.loaded = "yes";
  }, true);
  const main = document.getElementById("main");
  if (!main || !main.dataset.live) return;
  const every = Math.max(50, Number(main.dataset.poll) || 1000);
  async function poll() {
    let again = true;
    try {
      const r = await fetch(main.dataset.live, {credentials: "same-origin", cache: "no-store"});
      if (r.ok) {
        const data = await r.json();
        if (data.version !== main.dataset.version) {
          const open = Array.from(main.querySelectorAll("details[open][id]"), (d) => d.id);
          main.innerHTML = data.html;
          for (const id of open) { const d = document.getElementById(id); if (d) d.open = true; }
          main.dataset.version = data.version;
        }
        again = data.live;
      }
    } catch (e) { /* the server went away: try again later */ }
    if (again) setTimeout(poll, every);
  }
  setTimeout(poll, every);
})();
"""

_ENV = jinja2.Environment(
    loader=jinja2.DictLoader({"base.html": _BASE, "list.html": _LIST, "run.html": _RUN, "run_body.html": _RUN_BODY,
                              "calls.html": _CALLS, "changes.html": _CHANGES, "actions.html": _ACTIONS, "message.html": _MESSAGE}),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False, lstrip_blocks=False)


def _query(**params: Any) -> str:
    """URL query text: every value percent-encoded (a run id may hold any character)."""
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


_ENV.globals["q"] = _query


def render(template: str, **values: Any) -> str:
    """The page ``template`` with ``values`` (each escaped where it is shown)."""
    return _ENV.get_template(template).render(**values)
