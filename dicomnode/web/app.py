"""The node's web face: a status page, a JSON API, Prometheus ``/metrics`` and ``/healthz``, behind a login.

The page lists recent jobs (state, stage timings, failure reasons, where the
results went and the preview image) and recent series, and refreshes
itself.  It shows no patient names or IDs: series are described by
modality, body part, description and the sending AE.  Everything but
``/healthz`` and the login form needs a user (:mod:`dicomnode.web.guard`);
retrying a job needs the admin role.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydicom.uid import UID
from sqlalchemy import Engine, text

from dicomnode import __version__
from dicomnode.audit import audit
from dicomnode.config import Config
from dicomnode.metrics import CONTENT_TYPE, Metrics
from dicomnode.web.auth import Authenticator, Principal
from dicomnode.web.guard import Guard, peer_of
from dicomnode.web.login import add_login_routes
from dicomnode.web.page import PAGE_CSP, fetch_page, message_page, preview_path, status_page
from dicomnode.web.stow import StowHooks, add_stow_routes
from dicomnode.web.users import ADMIN_PASSWORD_FILE, UserStore, ensure_first_admin
from storage.errors import StorageError
from storage.files import free_bytes
from storage.listings import list_jobs, list_series
from storage.outbox import list_deliveries, outputs_for
from storage.retry import RetryOutcome
from storage.retry import retry_job as retry

logger = logging.getLogger(__name__)

Limit = Query(50, ge=1, le=1000)


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


def retry_job(engine: Engine, job_id: int, rerun: bool) -> tuple[int, str]:
    """What ``dicomnode retry`` does (:func:`storage.retry.retry_job`): ``(HTTP status, what happened)``."""
    done = retry(engine, job_id, rerun)
    return {
        RetryOutcome.NO_JOB: (404, f"there is no job {job_id}"),
        RetryOutcome.RUNNING: (409, f"job {job_id} is running; wait for it to finish"),
        RetryOutcome.REQUEUED: (200, f"job {job_id} queued again"),
        RetryOutcome.RESENT: (200, f"job {job_id}: {done.deliveries} deliver{'y' if done.deliveries == 1 else 'ies'} will be sent again"),
        RetryOutcome.NO_DELIVERIES: (409, f"job {job_id} has no deliveries (no destinations were configured when it ran); retry with rerun=true"),
    }[done.outcome]


def health(engine: Engine, cfg: Config, metrics: Metrics, is_listening: Callable[[], bool]) -> tuple[int, dict[str, Any]]:
    """``/healthz``: listener, database, the disk watermark and refusals, nothing about patients or jobs."""
    checks = {"listener": is_listening()}
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception:  # any database failure makes the node unhealthy
        checks["database"] = False
    free_mb = free_bytes(cfg.node.storage_dir) // 1_000_000
    refusing = cfg.node.min_free_mb > 0 and free_mb < cfg.node.min_free_mb  # the ingest's own rule, in MB
    body: dict[str, Any] = {
        "status": "ok", **checks,
        "disk": {"free_mb": free_mb, "min_free_mb": cfg.node.min_free_mb, "refusing": refusing},
        "refused_since_start": metrics.refused_total(),
    }
    if not all(checks.values()):
        body["status"] = "unhealthy"
        body["reason"] = " and ".join(f"the {k} is down" for k, ok in checks.items() if not ok)
    elif refusing:
        body["status"] = "refusing"
        body["reason"] = (f"instances are refused: {free_mb} MB free on the storage disk, below node.min_free_mb "
                          f"({cfg.node.min_free_mb} MB)")
    return (200 if body["status"] == "ok" else 503), body


def _who(request: Request) -> Principal:
    who: Principal = request.state.principal  # set by the guard for every route that is not public
    return who


def create_app(
    engine: Engine, cfg: Config, metrics: Metrics, is_listening: Callable[[], bool] = lambda: True, dicom_port: int | None = None,
    stow: StowHooks | None = None, fetch: Callable[[str, str, str], str] | None = None,
) -> Guard:
    """The web face of one node, behind its :class:`~dicomnode.web.guard.Guard` (``dicom_port``: shown on the page).

    With ``stow``, it also receives instances by STOW-RS (``POST /dicom-web/studies``, admin role), into the node's ingest.
    With ``fetch(source, study, user)`` (which starts the fetch and says so, or raises ``ValueError``), admins can ask a
    configured source for a study (``/fetch``).

    Creates the user ``admin`` on first start (see :func:`~dicomnode.web.users.ensure_first_admin`).
    """
    store = UserStore(cfg.node.storage_dir / cfg.web.users_file)
    ensure_first_admin(store, cfg.node.storage_dir / ADMIN_PASSWORD_FILE)
    docs = cfg.web.api_docs
    app = FastAPI(title="dicomnode", version=__version__, docs_url=None, redoc_url=None, openapi_url="/api/openapi.json" if docs else None)
    guard = Guard(app, Authenticator(cfg.web, store), cfg.web)
    add_login_routes(app, guard, cfg.node.ae_title)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        status, body = health(engine, cfg, metrics, is_listening)
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/api/jobs")
    def api_jobs(limit: int = Limit, state: str | None = None) -> list[dict[str, Any]]:
        return [j.as_json() for j in list_jobs(engine, state=state, limit=limit)]

    @app.get("/api/jobs/{job_id}")
    def api_job(job_id: int) -> dict[str, Any]:
        found = list_jobs(engine, job_id=job_id)
        if not found:
            raise HTTPException(404, f"no job {job_id}")
        return {
            **found[0].as_json(),
            # What was made, not its UIDs or paths (identifiers): kind, variant and SOP class name.
            "outputs": [
                {"kind": str(o.kind), "variant": o.variant, "sop_class": UID(o.sop_class_uid).name} for o in outputs_for(engine, job_id)
            ],
            "deliveries": [d.as_json() for d in list_deliveries(engine, job_id)],
        }

    @app.post("/api/jobs/{job_id}/retry")
    def api_retry(job_id: int, request: Request, rerun: bool = False) -> Response:
        who = _who(request)
        form = request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")  # the page's button
        if not who.is_admin:
            audit("web_action", user=who.name, peer=peer_of(request.scope), action="retry", job=job_id, outcome="forbidden")
            raise HTTPException(403, "retrying a job needs the admin role")
        status, what = retry_job(engine, job_id, rerun)
        audit("web_action", user=who.name, peer=peer_of(request.scope), action="retry", job=job_id, rerun=rerun,
              outcome="ok" if status == 200 else "refused")
        if form:
            if status == 200:
                return RedirectResponse(f"/#job-{job_id}", status_code=303)
            return _html(message_page("Retry refused", what), status)
        if status != 200:
            raise HTTPException(status, what)
        return JSONResponse({"job": job_id, "result": what})

    @app.get("/api/series")
    def api_series(limit: int = Limit) -> list[dict[str, Any]]:
        return [s.as_json() for s in list_series(engine, limit)]

    @app.get("/api/deliveries")
    def api_deliveries(limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        return [d.as_json() for d in list_deliveries(engine, limit=limit)]

    @app.get("/jobs/{job_id}/preview.png")
    def job_preview(job_id: int) -> Response:
        path = preview_path(engine, cfg, job_id)
        if path is None or not path.is_file():
            raise HTTPException(404, f"job {job_id} has no preview image")
        return Response(preview_png(path), media_type="image/png")

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        try:
            page = status_page(engine, cfg, list_jobs(engine, limit=50), dicom_port or cfg.node.port, _who(request))
        except StorageError as exc:
            return _html(message_page("dicomnode: database unavailable", str(exc)), 503)
        return _html(page)

    if stow is not None:
        add_stow_routes(app, stow, _who)

    if fetch is not None and cfg.sources:
        @app.get("/fetch", response_class=HTMLResponse)
        def fetch_form(request: Request) -> HTMLResponse:
            who = _who(request)
            if not who.is_admin:
                return _html(message_page("Fetch refused", "fetching a study needs the admin role"), 403)
            return _html(fetch_page(cfg, who))

        @app.post("/api/fetch")
        async def api_fetch(request: Request) -> Response:
            who = _who(request)
            form = request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
            fields = dict(await request.form()) if form else await request.json()
            source, study = str(fields.get("source", "")), str(fields.get("study", "")).strip()
            if not who.is_admin:
                audit("web_action", user=who.name, peer=peer_of(request.scope), action="fetch", outcome="forbidden")
                raise HTTPException(403, "fetching a study needs the admin role")
            if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", study) or len(study) > 64:
                raise HTTPException(400, "the Study Instance UID must be digits and dots, at most 64 characters")
            try:
                what = fetch(source, study, who.name)
            except ValueError as exc:
                audit("web_action", user=who.name, peer=peer_of(request.scope), action="fetch", source=source, outcome="refused")
                if form:
                    return _html(message_page("Fetch refused", str(exc)), 409)
                raise HTTPException(409, str(exc)) from exc
            audit("web_action", user=who.name, peer=peer_of(request.scope), action="fetch", source=source, outcome="started")
            if form:
                return _html(message_page("Fetch started", what), 202)
            return JSONResponse({"result": what}, status_code=202)

    if docs:
        @app.get("/api/docs", include_in_schema=False)
        def api_docs() -> HTMLResponse:
            page = get_swagger_ui_html(openapi_url="/api/openapi.json", title="dicomnode API")
            inline = re.findall(rb"<script>(.*?)</script>", bytes(page.body), re.S)
            hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in inline)
            # Swagger UI: its script and style from its CDN, its one inline script by hash, and inline styles.
            page.headers["content-security-policy"] = (
                f"default-src 'none'; script-src https://cdn.jsdelivr.net {hashes}; style-src https://cdn.jsdelivr.net 'unsafe-inline'; "
                "img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                "form-action 'none'"
            )
            return page

    return guard


def _html(page: str, status: int = 200) -> HTMLResponse:
    response = HTMLResponse(page, status_code=status)
    response.headers["content-security-policy"] = PAGE_CSP
    return response
