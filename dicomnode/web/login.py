"""``/login`` (the form and its session cookie) and ``/logout``.

The session cookie is HttpOnly and SameSite=Strict, has no lifetime of its
own (it ends with the browser; the server ends it sooner, see
:mod:`dicomnode.web.sessions`), and over HTTPS is ``Secure`` with the
``__Host-`` prefix.  Every login makes a new token (no session fixation).
The form itself carries a token that must match a short-lived cookie set with
it (or the POST must have this node's Origin), so another site cannot log a
browser in under an account of its choosing.
"""

from __future__ import annotations

import hmac
import re
import secrets
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from dicomnode.audit import audit
from dicomnode.web.auth import LoginRefused, Via
from dicomnode.web.guard import Guard, origin_of, peer_of, read_cookie
from dicomnode.web.page import PAGE_CSP, login_page

LOGIN_COOKIE = "dicomnode_login"
LOGIN_FORM_SECONDS = 900  # a login form older than this must be reloaded
_NEXT_RE = re.compile(r"/[A-Za-z0-9/_.-]{0,200}")


def safe_next(value: str | None) -> str:
    """Where to go after login: a local path only (``//host`` and other sites become ``/``)."""
    if value and _NEXT_RE.fullmatch(value) and not value.startswith("//"):
        return value
    return "/"


def add_login_routes(app: FastAPI, guard: Guard, ae_title: str) -> None:
    """Add ``GET /login``, ``POST /login`` and ``POST /logout`` to ``app``."""
    auth = guard.auth

    def form(request: Request, next_path: str, notice: str = "", status: int = 200, retry_after: float = 0.0) -> HTMLResponse:
        https = guard.https(request.scope, request.headers)
        allowed = auth.passwords_allowed(peer_of(request.scope), https)
        if not allowed and not notice:
            notice = "Logging in with a password is refused here: this connection is plain HTTP from another host. Use HTTPS."
        token = secrets.token_urlsafe(24)
        response = HTMLResponse(login_page(ae_title, token, next_path, notice, allowed), status_code=status)
        response.headers["content-security-policy"] = PAGE_CSP
        if retry_after:
            response.headers["retry-after"] = str(int(retry_after) + 1)
        response.set_cookie(LOGIN_COOKIE, token, max_age=LOGIN_FORM_SECONDS, path="/login", secure=https, httponly=True, samesite="strict")
        return response

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return form(request, safe_next(next))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            return form(request, "/", "The login form must be sent as a form.", 415)
        try:
            fields = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=20)
        except ValueError:
            return form(request, "/", "The login form was malformed.", 400)

        def field(name: str) -> str:
            return (fields.get(name) or [""])[0]

        next_path, peer = safe_next(field("next")), peer_of(request.scope)
        https = guard.https(request.scope, request.headers)
        origin = request.headers.get("origin")
        same_origin = origin not in (None, "null") and origin_of(str(origin)) == guard.own_origin(request.scope, request.headers)
        if origin not in (None, "null") and not same_origin:
            return form(request, next_path, "Logging in from another site is refused.", 403)
        cookie, token = read_cookie(request.headers, LOGIN_COOKIE) or "", field("login_token")
        if not same_origin and not (cookie and token and hmac.compare_digest(cookie.encode(), token.encode())):
            return form(request, next_path, "The login form had expired: please log in again.", 403)
        if not auth.passwords_allowed(peer, https):
            return form(request, next_path, str(auth.refuse_plain_http(field("username"), peer, Via.SESSION)), 403)
        try:
            user = await run_in_threadpool(auth.check_password, field("username"), field("password"), peer, Via.SESSION)
        except LoginRefused as exc:
            return form(request, next_path, str(exc), exc.status, exc.retry_after)
        session_token, _ = auth.sessions.create(user.name, user.stamp)
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(guard.cookie_name(request.scope, request.headers), session_token, path="/", secure=https,
                            httponly=True, samesite="strict")
        response.delete_cookie(LOGIN_COOKIE, path="/login", secure=https, httponly=True, samesite="strict")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        name = guard.cookie_name(request.scope, request.headers)
        token = read_cookie(request.headers, name)
        if token:
            auth.sessions.drop(token)
        who = request.state.principal
        audit("web_login", user=who.name, peer=peer_of(request.scope), via=who.via, outcome="logout")
        response = RedirectResponse("/login", status_code=303)
        https = guard.https(request.scope, request.headers)
        response.delete_cookie(name, path="/", secure=https, httponly=True, samesite="strict")
        return response
