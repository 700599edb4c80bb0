"""The node's web face: status page, JSON API, ``/metrics`` and ``/healthz``, with logins and roles.

:mod:`~dicomnode.web.app` has the routes, :mod:`~dicomnode.web.page` the HTML,
:mod:`~dicomnode.web.guard` the checks every request passes first (trusted
hosts, security headers, login, CSRF), :mod:`~dicomnode.web.auth`,
:mod:`~dicomnode.web.sessions` and :mod:`~dicomnode.web.users` who may log
in, :mod:`~dicomnode.web.login` the login form, and
:mod:`~dicomnode.web.server` uvicorn in a thread.
"""

from dicomnode.web.app import create_app
from dicomnode.web.server import WebServer

__all__ = ["WebServer", "create_app"]
