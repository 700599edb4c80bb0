"""The edge of the web face: trusted Host names, security headers, login and CSRF, before any route runs.

An ASGI wrapper around the FastAPI application, outermost, so that its
headers are on every answer (errors, 404s and uvicorn-level 500s included)
and no route is reachable without a login unless it is listed in
:data:`PUBLIC` (``/healthz`` and the login form).  Rules:

- A Host header that is not in ``web.trusted_hosts`` (nor the address the
  connection arrived on) gets 400: DNS rebinding needs a name of the
  attacker's, which is never trusted.
- Credentials: the trusted proxy's header (from ``web.trusted_proxies``
  only), then HTTP Basic, then the session cookie.  A password sent over
  plain HTTP from another host is refused with 403 (unless that host is in
  ``web.plain_http_login_from``) and not checked.
- A request that changes something (POST...) must prove it came from the
  node's own pages: an ``Origin`` equal to the node's own, or the user's CSRF
  token (form field ``csrf_token`` or header ``X-CSRF-Token``).  HTTP Basic
  clients that send no ``Origin`` (scripts, not browsers) need neither.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from dicomnode.config import WebConfig
from dicomnode.web.auth import Authenticator, LoginRefused, Principal, Via

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC = frozenset({"/healthz", "/login"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_BODY = 16 * 1024  # no route takes more (but STOW-RS); larger bodies get 413 unread
STOW_PATH = "/dicom-web/studies"  # STOW-RS: bodies up to web.stow_max_mb, read as they arrive
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),  # job lists and previews must not stay in shared or browser caches
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
)
HSTS = "max-age=31536000"
SESSION_COOKIE, SECURE_SESSION_COOKIE = "dicomnode_session", "__Host-dicomnode_session"


def peer_of(scope: Scope) -> str:
    """The client address of a request (the TCP peer; proxies' X-Forwarded-For is not believed)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def host_name(value: str | None) -> str | None:
    """The name part of a Host header, lower case, without port or brackets; ``None`` if malformed."""
    if not value or any(c in value for c in "/\\@ \t") or len(value) > 255:
        return None
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        return v[1:end] if end > 0 and (end == len(v) - 1 or v[end + 1] == ":") else None
    name, _, port = v.partition(":")
    if ":" in port or (port and not port.isdigit()):
        return None
    return name.rstrip(".") or None


class Guard:
    """The ASGI application uvicorn serves: checks, then the FastAPI ``app``.

    Parameters
    ----------
    app : ASGI application
        The routes.
    auth : Authenticator
        Users, sessions and the login throttle.
    cfg : WebConfig
        Trusted hosts and proxies.
    """

    def __init__(self, app: ASGIApp, auth: Authenticator, cfg: WebConfig) -> None:
        self.app = app
        self.auth = auth
        self.cfg = cfg
        self._names = frozenset(h for h in cfg.host_names if not h.startswith("*."))
        self._suffixes = tuple(h[1:] for h in cfg.host_names if h.startswith("*."))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan is off and there are no websockets
            return
        started = False
        secured = self._secured(send, https=scope.get("scheme") == "https")

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await secured(message)

        try:
            await self._guarded(scope, receive, tracked)
        except Exception:
            if started:
                raise  # the routes' own 500 went out through the wrapper; uvicorn logs the error
            logger.exception("web: %s %s failed", scope["method"], scope["path"])
            await respond(tracked, 500, {"detail": "internal error (see the node's log)"})  # with the security headers

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        if not self.host_ok(headers.get("host"), scope):
            await respond(send, 400, {"detail": "this Host header is not served here (web.trusted_hosts)"})
            return
        length = headers.get("content-length")
        limit = self.cfg.stow_max_mb << 20 if is_stow(scope) else MAX_BODY
        if length is not None and (not length.isdigit() or int(length) > limit):
            await respond(send, 413, {"detail": f"request bodies are limited to {limit} bytes"
                                                + (" (web.stow_max_mb)" if limit != MAX_BODY else "")})
            return
        if scope["method"] in UNSAFE_METHODS and length is None and "chunked" in headers.get("transfer-encoding", "") and not is_stow(scope):
            await respond(send, 411, {"detail": "send a Content-Length"})
            return
        if scope["path"] in PUBLIC:
            await self.app(scope, receive, send)
            return
        found = await self.authenticate(scope, headers, send)
        if found is None:
            return
        if scope["method"] in UNSAFE_METHODS:
            receive, token = await _form_token(headers, receive)
            if not self.same_site(scope, headers, found, token):
                await respond(send, 403, {"detail": "cross-site request refused: it must come from this node's own pages "
                                                    "(same Origin) or carry the user's CSRF token (X-CSRF-Token)"})
                return
        scope.setdefault("state", {})["principal"] = found
        await self.app(scope, receive, send)

    # ----------------------------------------------------------------- checks

    def host_ok(self, value: str | None, scope: Scope) -> bool:
        """Whether the Host header names this node: a trusted name, or the address the connection came to."""
        name = host_name(value)
        if name is None:
            return False
        server = scope.get("server")
        if server and name == str(server[0]).lower():
            return True  # an IP literal cannot be rebound, and it is where the client already connected
        return name in self._names or any(name.endswith(s) for s in self._suffixes)

    def https(self, scope: Scope, headers: Headers) -> bool:
        """Whether the client reached us over TLS: ours, or a trusted proxy's that says so."""
        if scope.get("scheme") == "https":
            return True
        return headers.get("x-forwarded-proto", "").lower() == "https" and self.auth.is_trusted_proxy(peer_of(scope))

    def own_origin(self, scope: Scope, headers: Headers) -> tuple[str, str, int]:
        """``(scheme, host, port)`` of this node as the client addressed it."""
        scheme = "https" if self.https(scope, headers) else "http"
        return origin_of(f"{scheme}://{headers.get('host', '')}")

    def same_site(self, scope: Scope, headers: Headers, who: Principal, token: str | None) -> bool:
        """Whether a state-changing request may proceed (see the module's rules)."""
        origin = headers.get("origin")
        if origin is not None and origin != "null":
            return origin_of(origin) == self.own_origin(scope, headers)
        token = headers.get("x-csrf-token") or token
        if token and hmac.compare_digest(token.encode(), who.csrf.encode()):
            return True
        return who.via == Via.BASIC and origin is None and "sec-fetch-site" not in headers

    async def authenticate(self, scope: Scope, headers: Headers, send: Send) -> Principal | None:
        """The principal of the request; or ``None`` after answering 401/403/429 (or the login redirect)."""
        peer = peer_of(scope)
        try:
            header = self.cfg.trusted_proxy_header
            if header and headers.get(header) is not None:
                return self.auth.proxy(headers[header].strip(), peer)
            authorization = headers.get("authorization")
            if authorization is not None:
                return await self._basic(authorization, peer, self.https(scope, headers))
            token = read_cookie(headers, self.cookie_name(scope, headers))
            found = self.auth.session(token) if token else None
        except LoginRefused as exc:
            extra = [("retry-after", str(int(exc.retry_after) + 1))] if exc.retry_after else []
            if exc.status == 401:
                extra.append(("www-authenticate", 'Basic realm="dicomnode", charset="UTF-8"'))
            await respond(send, exc.status, {"detail": str(exc)}, extra)
            return None
        if found is None:
            await self._unauthenticated(scope, headers, send)
        return found

    async def _basic(self, authorization: str, peer: str, https: bool) -> Principal:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise LoginRefused("only HTTP Basic credentials (or a session from /login) are accepted", 401)
        try:
            name, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise LoginRefused("malformed HTTP Basic credentials", 401) from exc
        if not sep:
            raise LoginRefused("malformed HTTP Basic credentials", 401)
        if not self.auth.passwords_allowed(peer, https):
            raise self.auth.refuse_plain_http(name, peer, Via.BASIC)  # without checking it: it is no secret any more
        return await run_in_threadpool(self.auth.basic, name, password, peer)  # argon2 must not block the event loop

    async def _unauthenticated(self, scope: Scope, headers: Headers, send: Send) -> None:
        if "text/html" in headers.get("accept", ""):
            target = "/login" + (f"?next={quote(scope['path'])}" if scope["method"] == "GET" and scope["path"] != "/" else "")
            await respond(send, 303, None, [("location", target)])
            return
        await respond(send, 401, {"detail": "login required: HTTP Basic credentials, or a session from /login"},
                      [("www-authenticate", 'Basic realm="dicomnode", charset="UTF-8"')])

    def cookie_name(self, scope: Scope, headers: Headers) -> str:
        """The session cookie's name: ``__Host-`` prefixed (so Secure, host-only, path /) over HTTPS."""
        return SECURE_SESSION_COOKIE if self.https(scope, headers) else SESSION_COOKIE

    # ----------------------------------------------------------------- headers

    def _secured(self, send: Send, https: bool) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = [(k, v) for k, v in message.get("headers", []) if k.lower() not in (b"cache-control", b"server")]
                present = {k.lower() for k, _ in raw}
                extra = list(SECURITY_HEADERS) + ([("strict-transport-security", HSTS)] if https else [])
                if b"content-security-policy" not in present:
                    extra.append(("content-security-policy", DEFAULT_CSP))
                raw += [(k.encode(), v.encode()) for k, v in extra if k.encode() not in present or k == "cache-control"]
                message = {**message, "headers": raw}
            await send(message)

        return wrapped


def is_stow(scope: Scope) -> bool:
    """Whether the request is a STOW-RS store (``POST /dicom-web/studies[/{study}]``), whose body may be large."""
    path = str(scope.get("path", ""))
    return scope.get("method") == "POST" and (path == STOW_PATH or (path.startswith(STOW_PATH + "/") and path.count("/") == 3))


def origin_of(url: str) -> tuple[str, str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return ("", "", 0)
    return (parts.scheme.lower(), (parts.hostname or "").rstrip("."), port)


def read_cookie(headers: Headers, name: str) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name and value:
            return value
    return None


async def _form_token(headers: Headers, receive: Receive) -> tuple[Receive, str | None]:
    """The ``csrf_token`` field of a URL-encoded form body, and a ``receive`` that replays the body for the route."""
    if headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return receive, None
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_BODY or not message.get("more_body"):
            break
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()  # http.disconnect, when it comes
        replayed = True
        return {"type": "http.request", "body": body[:MAX_BODY], "more_body": False}

    try:
        values = parse_qs(body[:MAX_BODY].decode("latin-1"), max_num_fields=20).get("csrf_token")
    except ValueError:  # more fields than any form of ours has
        values = None
    return replay, values[0] if values else None


async def respond(send: Send, status: int, body: Any, headers: list[tuple[str, str]] | None = None) -> None:
    """Answer with a JSON ``body`` (or none) and ``headers``; the security headers are added by the wrapper."""
    data = b"" if body is None else json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers or []]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
