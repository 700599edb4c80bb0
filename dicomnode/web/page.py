"""The HTML of the web face: the status page, the login form and short messages.

No script at all, and one style sheet, inline in ``<style>`` and allowed by
its hash (:data:`PAGE_CSP`): no ``style=`` attributes, no event handlers, so
the Content-Security-Policy needs neither ``'unsafe-inline'`` nor any script
source.  Every value from the database is escaped.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from typing import Any

from sqlalchemy import Engine

from dicomnode import __version__
from dicomnode.config import Config
from dicomnode.web.auth import Principal, Via
from storage.listings import JobRow, list_series
from storage.outbox import list_deliveries, outputs_for
from storage.states import FINISHED_JOB_STATES, DeliveryState, JobState, OutputKind

STATE_COLOURS: dict[str, str] = {
    JobState.QUEUED: "#888", JobState.RUNNING: "#1f77b4", JobState.DELIVERING: "#9467bd", JobState.DONE: "#2ca02c",
    JobState.FAILED: "#d62728", JobState.DELIVERY_FAILED: "#d62728", JobState.IGNORED: "#aaa", JobState.NOT_APPLICABLE: "#aaa",
    JobState.INCOMPLETE: "#ff7f0e", DeliveryState.PENDING: "#888", DeliveryState.AWAITING_COMMITMENT: "#9467bd",
}
RETRYABLE = frozenset({JobState.FAILED, JobState.DELIVERY_FAILED})  # the page offers admins a retry button for these
CSS = (
    "\nbody{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}"
    "\ntable{border-collapse:collapse;width:100%}th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
    "\nth{background:#f4f4f4}.state{color:#fff;border-radius:3px;padding:1px 6px;font-size:12px;background:#555}.err{color:#b00}"
    "\n.sel{color:#555;font-size:12px}img.preview{height:96px;border:1px solid #ccc}small{color:#666}"
    "\nform.inline{display:inline;margin:0}nav{margin:.5em 0 1em}nav form{display:inline}"
    "\n.login{max-width:22em;margin:4em auto;padding:1.5em 2em;border:1px solid #ddd;border-radius:6px;background:#fafafa}"
    "\n.login label{display:block;margin:.8em 0 .2em}.login input[type=text],.login input[type=password]{width:100%;box-sizing:border-box;"
    "padding:6px;font-size:14px}.login button{margin-top:1.2em;padding:6px 18px;font-size:14px}.notice{color:#b00;margin:.8em 0}"
    + "".join(f"\n.st-{re.sub('[^a-z_]', '', s)}{{background:{c}}}" for s, c in STATE_COLOURS.items())
    + "\n"
)
_CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
PAGE_CSP = (
    f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _head(title: str, refresh: bool = False) -> str:
    meta = '<meta http-equiv="refresh" content="10">' if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}<title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>")


def _state(s: str) -> str:
    return f'<span class="state st-{re.sub("[^a-z_]", "", s)}">{html.escape(s)}</span>'


def _when(t: Any) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S}" if t is not None else ""


def preview_path(engine: Engine, cfg: Config, job_id: int) -> Any:
    """The stored preview (Secondary Capture) of a job, or ``None``."""
    previews = [o for o in outputs_for(engine, job_id) if o.kind == OutputKind.PREVIEW]
    return cfg.node.storage_dir / previews[0].path if previews else None


def _csrf(who: Principal) -> str:
    return f'<input type="hidden" name="csrf_token" value="{html.escape(who.csrf)}">'


def status_page(engine: Engine, cfg: Config, jobs: list[JobRow], port: int, who: Principal) -> str:
    """The status page as ``who`` sees it (admins also get retry buttons)."""
    deliveries: dict[int, list[Any]] = {}
    recent = list_deliveries(engine, limit=400)
    for d in recent:
        deliveries.setdefault(d.job_id, []).append(d)
    rows = []
    for j in jobs:
        t = j.timings or {}
        stages = " ".join(f"{k} {v:.1f}s" for k, v in t.items() if not k.startswith("model_"))
        sent = "<br>".join(
            f"{html.escape(d.destination)}: {_state(d.state)} <small>{d.attempts} attempt(s)</small>"
            + (f'<br><small class="err">{html.escape(d.last_error)}</small>' if d.last_error else "")
            for d in deliveries.get(j.id, [])
        )
        preview = preview_path(engine, cfg, j.id) if j.state in FINISHED_JOB_STATES else None
        img = (
            f'<a href="/jobs/{j.id}/preview.png"><img class="preview" alt="preview of job {j.id}" src="/jobs/{j.id}/preview.png"></a>'
            if preview is not None else ""
        )
        retry = (
            f'<form class="inline" method="post" action="/api/jobs/{j.id}/retry">{_csrf(who)}<button>retry</button></form>'
            if who.is_admin and j.state in RETRYABLE else ""
        )
        what = " / ".join(html.escape(x) for x in (j.modality or "?", j.series_description or "") if x)
        rows.append(
            f'<tr id="job-{j.id}"><td>{j.id}</td><td>{what}<br><small>from {html.escape(j.calling_ae or "?")}'
            f'{" (fetched from " + html.escape(j.fetched_from) + ")" if j.fetched_from else ""}, '
            f"{j.instance_count} images, {html.escape(j.completion_reason)}</small></td><td>{_state(j.state)} {retry}"
            f'{"<br><small>" + html.escape(j.stage) + "</small>" if j.stage and j.state == JobState.RUNNING else ""}</td>'
            f"<td>{html.escape(j.model or '')}<br><small>{stages}</small>"
            f'{"<br><span class=err>" + html.escape(j.error) + "</span>" if j.error else ""}'
            f'{"<br><span class=sel>" + html.escape(j.selection_reason) + "</span>" if j.selection == "chosen" and j.selection_reason else ""}'
            f'</td><td>{sent}</td><td>{img}</td>'
            f"<td><small>{j.created_at:%Y-%m-%d %H:%M:%S}</small></td></tr>"
        )
    series = "".join(
        f"<tr><td>{s.id}</td><td>{html.escape(s.modality or '?')} {html.escape(s.body_part or '')} "
        f"{html.escape(s.series_description or '')}</td><td>{html.escape(s.calling_ae or '?')}</td><td>{html.escape(s.state)}</td>"
        f"<td>{s.instance_count}</td><td><small>{s.last_received_at:%Y-%m-%d %H:%M:%S}</small></td></tr>"
        for s in list_series(engine, 20)
    )
    log = "".join(
        f"<tr><td>{d.job_id}</td><td>{html.escape(d.destination)}</td><td>{_state(d.state)}</td><td>{d.attempts}</td>"
        f"<td>{d.sent_count}</td><td><small>{_when(d.finished_at or d.next_attempt_at)}</small></td>"
        f'<td class="err">{html.escape(d.last_error or "")}</td></tr>'
        for d in recent[:30]
    )
    docs = ' · <a href="/api/docs">API</a>' if cfg.web.api_docs else ""
    if cfg.sources and who.is_admin:
        docs += ' · <a href="/fetch">fetch a study</a>'

    logout = (f'<form method="post" action="/logout">{_csrf(who)}<button>log out</button></form>' if who.via == Via.SESSION else "")
    return f"""{_head(f"dicomnode {cfg.node.ae_title}", refresh=True)}
<h1>dicomnode {html.escape(cfg.node.ae_title)} <small>{__version__}, DICOM port {port}</small></h1>
<nav><a href="/api/jobs">JSON</a> · <a href="/metrics">metrics</a> · <a href="/healthz">health</a>{docs} ·
<small>{html.escape(who.name)} ({html.escape(who.role)})</small> {logout}</nav>
<h2>Jobs</h2><table><tr><th>Job</th><th>Series</th><th>State</th><th>Model and timings</th><th>Deliveries</th><th>Preview</th><th>Created (UTC)</th></tr>
{"".join(rows) or '<tr><td colspan=7>no jobs yet</td></tr>'}</table>
<h2>Delivery log</h2><table><tr><th>Job</th><th>Destination</th><th>State</th><th>Attempts</th><th>Objects sent</th><th>Done / next try (UTC)</th><th>Last error</th></tr>
{log or '<tr><td colspan=7>nothing sent yet</td></tr>'}</table>
<h2>Series received</h2><table><tr><th>#</th><th>Series</th><th>From</th><th>State</th><th>Images</th><th>Last image (UTC)</th></tr>
{series or '<tr><td colspan=6>none yet</td></tr>'}</table></body></html>"""


def login_page(ae_title: str, login_token: str, next_path: str, notice: str = "", allowed: bool = True) -> str:
    """The login form (``notice``: why the last attempt failed; ``allowed``: false over plain HTTP from afar)."""
    form = (
        f'<form method="post" action="/login"><input type="hidden" name="login_token" value="{html.escape(login_token)}">'
        f'<input type="hidden" name="next" value="{html.escape(next_path)}">'
        '<label for="username">User name</label><input type="text" id="username" name="username" autocomplete="username" required autofocus>'
        '<label for="password">Password</label><input type="password" id="password" name="password" autocomplete="current-password" required>'
        "<button>Log in</button></form>"
        if allowed else ""
    )
    return (f"{_head(f'dicomnode {ae_title}: log in')}<div class=\"login\"><h1>dicomnode {html.escape(ae_title)}</h1>"
            f'{f"<p class=notice>{html.escape(notice)}</p>" if notice else ""}{form}</div></body></html>')


def message_page(title: str, text: str) -> str:
    """A short page that says what happened, with a way back to the status page."""
    return f'{_head(title)}<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p><p><a href="/">back to the status page</a></p></body></html>'


def fetch_page(cfg: Config, who: Principal, note: str = "") -> str:
    """The form that asks a configured source for one study (admins)."""
    options = "".join(f'<option value="{html.escape(src.name)}">{html.escape(src.name)} ({html.escape(src.describe())})</option>'
                      for src in cfg.sources)
    return (f'{_head("dicomnode: fetch a study")}<h1>Fetch a study</h1>'
            f'{"<p>" + html.escape(note) + "</p>" if note else ""}'
            "<p>The source sends the study to this node (C-MOVE, or WADO-RS for a DICOMweb source); it is then stored and "
            "processed as if it had been pushed, and appears on the status page.</p>"
            f'<form method="post" action="/api/fetch">{_csrf(who)}<label>Source <select name="source">{options}</select></label> '
            '<label>Study Instance UID <input name="study" size="64" maxlength="64" pattern="[0-9.]{1,64}" required></label> '
            '<button>fetch</button></form><p><a href="/">back to the status page</a></p></body></html>')
