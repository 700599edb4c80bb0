"""The node's web face: status page, JSON API, ``/metrics`` and ``/healthz``, with logins and roles.

:mod:`~dicomnode.web.app` has the routes, :mod:`~dicomnode.web.page` the HTML,
:mod:`~dicomnode.web.guard` the checks every request passes first (trusted
hosts, security headers, login, CSRF), :mod:`~dicomnode.web.auth`,
:mod:`~dicomnode.web.sessions` and :mod:`~dicomnode.web.users` who may log
in, :mod:`~dicomnode.web.login` the login form, and
:mod:`~dicomnode.web.server` uvicorn in a thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicomnode.web.app import create_app
    from dicomnode.web.server import WebServer

__all__ = ["WebServer", "create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the command line's 'users' needs dicomnode.web.users only, not the web
    # framework (0.7 s on every command's start).
    if name == "create_app":
        from dicomnode.web.app import create_app

        return create_app
    if name == "WebServer":
        from dicomnode.web.server import WebServer

        return WebServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
