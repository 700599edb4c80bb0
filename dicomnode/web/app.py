"""The node's web face: a status page, a JSON API, Prometheus ``/metrics`` and ``/healthz``.

The page lists recent jobs (state, stage timings, failure reasons, where the
results went and the preview image) and recent series, and refreshes
itself.  It shows no patient names or IDs: series are described by
modality, body part, description and the sending AE.  Serve it on an
internal interface only (``[web] host``).
"""

from __future__ import annotations

import html
import io
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import Engine, text

from dicomnode import __version__
from dicomnode.config import Config
from dicomnode.metrics import CONTENT_TYPE, Metrics
from storage.errors import StorageError
from storage.outbox import list_deliveries, outputs_for
from storage.listings import JobRow, list_jobs, list_series
from storage.states import FINISHED_JOB_STATES, DeliveryState, JobState, OutputKind

logger = logging.getLogger(__name__)

STATE_COLOURS: dict[str, str] = {
    JobState.QUEUED: "#888", JobState.RUNNING: "#1f77b4", JobState.DELIVERING: "#9467bd", JobState.DONE: "#2ca02c",
    JobState.FAILED: "#d62728", JobState.DELIVERY_FAILED: "#d62728", JobState.IGNORED: "#aaa", JobState.NOT_APPLICABLE: "#aaa", JobState.INCOMPLETE: "#ff7f0e",
    DeliveryState.PENDING: "#888", DeliveryState.AWAITING_COMMITMENT: "#9467bd",
}
_CSS = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;width:100%}th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
th{background:#f4f4f4}.state{color:#fff;border-radius:3px;padding:1px 6px;font-size:12px}.err{color:#b00}.sel{color:#555;font-size:12px}
img.preview{height:96px;border:1px solid #ccc}small{color:#666}
"""


def _state(s: str) -> str:
    return f'<span class="state" style="background:{STATE_COLOURS.get(s, "#555")}">{html.escape(s)}</span>'


def _preview_path(engine: Engine, cfg: Config, job_id: int) -> Any:
    previews = [o for o in outputs_for(engine, job_id) if o.kind == OutputKind.PREVIEW]
    return cfg.node.storage_dir / previews[0].path if previews else None


def preview_png(path: Any) -> bytes:
    """The first frame of a Secondary Capture preview, as PNG."""
    from PIL import Image
    from pydicom import dcmread

    ds = dcmread(path)
    frame = ds.pixel_array
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        frame = frame[0]
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def create_app(
    engine: Engine, cfg: Config, metrics: Metrics, is_listening: Callable[[], bool] = lambda: True, dicom_port: int | None = None
) -> FastAPI:
    """The FastAPI application of one node (``dicom_port``: the listener's actual port, shown on the page)."""
    app = FastAPI(title="dicomnode", version=__version__, docs_url="/api/docs", redoc_url=None)

    def jobs(limit: int = 50, state: str | None = None) -> list[JobRow]:
        return list_jobs(engine, state=state, limit=limit)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        checks = {"listener": is_listening()}
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception:  # any database failure makes the node unhealthy
            checks["database"] = False
        ok = all(checks.values())
        return JSONResponse({"status": "ok" if ok else "unhealthy", **checks}, status_code=200 if ok else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/api/jobs")
    def api_jobs(limit: int = 50, state: str | None = None) -> list[dict[str, Any]]:
        return [j.as_json() for j in jobs(limit, state)]

    @app.get("/api/jobs/{job_id}")
    def api_job(job_id: int) -> dict[str, Any]:
        found = list_jobs(engine, job_id=job_id)
        if not found:
            raise HTTPException(404, f"no job {job_id}")
        return {
            **found[0].as_json(),
            "outputs": [vars(o) for o in outputs_for(engine, job_id)],
            "deliveries": [d.as_json() for d in list_deliveries(engine, job_id)],
        }

    @app.get("/api/series")
    def api_series(limit: int = 50) -> list[dict[str, Any]]:
        return [s.as_json() for s in list_series(engine, limit)]

    @app.get("/api/deliveries")
    def api_deliveries(limit: int = 100) -> list[dict[str, Any]]:
        return [d.as_json() for d in list_deliveries(engine, limit=limit)]

    @app.get("/jobs/{job_id}/preview.png")
    def job_preview(job_id: int) -> Response:
        path = _preview_path(engine, cfg, job_id)
        if path is None or not path.is_file():
            raise HTTPException(404, f"job {job_id} has no preview image")
        return Response(preview_png(path), media_type="image/png")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        try:
            return _page(engine, cfg, jobs(50), dicom_port or cfg.node.port)
        except StorageError as exc:
            return f"<h1>dicomnode</h1><p class=err>database unavailable: {html.escape(str(exc))}</p>"

    return app


def _page(engine: Engine, cfg: Config, jobs: list[JobRow], port: int) -> str:
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
        preview = _preview_path(engine, cfg, j.id) if j.state in FINISHED_JOB_STATES else None
        img = (
            f'<a href="/jobs/{j.id}/preview.png"><img class="preview" alt="preview of job {j.id}" '
            f'src="/jobs/{j.id}/preview.png" onload="this.dataset.loaded=1"></a>' if preview is not None else ""
        )
        what = " / ".join(html.escape(x) for x in (j.modality or "?", j.series_description or "") if x)
        rows.append(
            f'<tr id="job-{j.id}"><td>{j.id}</td><td>{what}<br><small>from {html.escape(j.calling_ae or "?")}, '
            f"{j.instance_count} images, {html.escape(j.completion_reason)}</small></td><td>{_state(j.state)}"
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
    return f"""<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>dicomnode {html.escape(cfg.node.ae_title)}</title><style>{_CSS}</style></head><body>
<h1>dicomnode {html.escape(cfg.node.ae_title)} <small>{__version__}, DICOM port {port}</small></h1>
<p><a href="/api/jobs">JSON</a> · <a href="/metrics">metrics</a> · <a href="/healthz">health</a> · <a href="/api/docs">API</a></p>
<h2>Jobs</h2><table><tr><th>Job</th><th>Series</th><th>State</th><th>Model and timings</th><th>Deliveries</th><th>Preview</th><th>Created (UTC)</th></tr>
{"".join(rows) or '<tr><td colspan=7>no jobs yet</td></tr>'}</table>
<h2>Delivery log</h2><table><tr><th>Job</th><th>Destination</th><th>State</th><th>Attempts</th><th>Objects sent</th><th>Done / next try (UTC)</th><th>Last error</th></tr>
{log or '<tr><td colspan=7>nothing sent yet</td></tr>'}</table>
<h2>Series received</h2><table><tr><th>#</th><th>Series</th><th>From</th><th>State</th><th>Images</th><th>Last image (UTC)</th></tr>
{series or '<tr><td colspan=6>none yet</td></tr>'}</table></body></html>"""


def _when(t: Any) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S}" if t is not None else ""


class WebServer:
    """Uvicorn in a background thread, on a socket bound up front (so port 0 works)."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)  # connections wait in the backlog until uvicorn's loop runs
        self.port = int(self.sock.getsockname()[1])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="dicomnode-web", daemon=True)

    def start(self) -> int:
        """Serve; returns the bound port."""
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Stop serving."""
        self.server.should_exit = True
        self._thread.join(10)
        self.sock.close()
